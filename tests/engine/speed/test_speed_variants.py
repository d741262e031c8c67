"""The Speed engine's variants. bitsandbytes' NF4 and LLM.int8() layers as formats: they compute what
they store, their bytes include the statistics bitsandbytes keeps outside parameters, and a whole bnb
model decodes through every decode loop but the compiled one (compiling is slow on a CPU).
A recast copy that would not fit in memory is refused before it is made."""

from __future__ import annotations

import pytest
import torch

from engine import _types, recipes, speed
from engine.methods.bnb import dequantized_weight, stored_bytes
from engine.sizing.estimate import measured_bytes
from tests.conftest import build_char_tokenizer, build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")
BNB = list(speed.BNB_FORMATS)


def weight(out_features: int, in_features: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(out_features, in_features) * 0.02 * torch.linspace(0.5, 2.0, in_features)


def test_bitsandbytes_formats_are_offered_on_cpu_and_cuda():
    for device in ("cpu", "cuda"):
        assert set(BNB) <= set(speed.available_formats(device))
    assert set(BNB) <= set(speed.available_variants("cpu"))
    assert "fp16" not in speed.available_variants("cpu") and "fp32" not in speed.available_variants("cuda")


@pytest.mark.parametrize("fmt", BNB)
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_bnb_layer_computes_its_dequantized_weights(fmt, batch):
    """Against x @ W_deq^T with W_deq from bitsandbytes' own dequantization of the stored codes. NF4 on an
    AVX512-BF16 CPU repacks with a bf16 absmax, LLM.int8 rounds activations to int8 per token (this
    weight has no column over the 6.0 threshold, so none stays in fp16): both within a few percent."""
    w = weight(384, 256)
    layer = speed.layer_for(fmt, w, act_dtype=torch.float32)
    reference_weight = dequantized_weight(layer)  # before the first forward: the stored codes
    x = torch.randn(batch, 256)
    with torch.inference_mode():
        y = layer(x)
    ref = x @ reference_weight.T
    assert y.shape == (batch, 384) and y.dtype == torch.float32 and torch.isfinite(y).all()
    error = float((y - ref).norm() / ref.norm())
    assert error < (2e-2 if fmt == "LLM.int8 (bnb)" else 1e-2), error
    # and quantization really happened: the stored weights are not the float ones
    assert float((reference_weight - w).norm() / w.norm()) > 1e-3


def test_bnb_layer_bytes_count_codes_and_statistics():
    w = weight(384, 256)
    nf4 = speed.layer_for("NF4 (bnb)", w)
    int8 = speed.layer_for("LLM.int8 (bnb)", w)
    weights = w.numel()
    # NF4: 4-bit codes + one fp32 absmax per block of 64 (0.5 bit) + a 16-entry codebook
    assert speed._nbytes(nf4) == sum(stored_bytes(nf4).values())
    assert weights / 2 + weights / 64 * 4 <= speed._nbytes(nf4) < weights / 2 + weights / 64 * 4 + 512
    # LLM.int8: int8 codes + one fp32 scale per row (+ a one-byte format tag in its state dict)
    assert weights + 384 * 4 <= speed._nbytes(int8) <= weights + 384 * 4 + 16


def test_microbenchmark_times_bitsandbytes_beside_the_baseline():
    results = speed.microbenchmark(
        [speed.LinearShape(192, 576)], batches=[1, 16], formats=["fp32", *BNB], repeats=3, warmup=1
    )
    assert {r.format for r in results} == {"fp32", *BNB}
    for r in results:
        assert r.seconds > 0 and r.speedup > 0
    kernels = {r.format: r.kernel for r in results}
    assert kernels["LLM.int8 (bnb)"] == "bnb int8 (LLM.int8)" and kernels["NF4 (bnb)"].startswith("bnb nf4")
    fp32 = next(r for r in results if r.format == "fp32" and r.batch == 1)
    nf4 = next(r for r in results if r.format == "NF4 (bnb)" and r.batch == 1)
    assert nf4.bytes < fp32.bytes / 6


@pytest.mark.parametrize("fmt", BNB)
def test_bnb_variant_decodes_and_counts_its_statistics(fmt):
    tiny = build_tiny_llama()
    built = speed.build_variant(tiny, fmt)
    assert built is not tiny and all(isinstance(p, torch.nn.Parameter) for p in tiny.parameters())
    assert type(tiny.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # the original is untouched
    assert speed._is_bnb(built.model.layers[0].mlp.down_proj) and not speed._is_bnb(built.lm_head)
    side = speed._bnb_side_bytes(built)
    assert side > 0 and speed.model_weight_bytes(built) == sum(measured_bytes(built).values()) + side
    tokenizer = build_char_tokenizer()
    timings = [
        speed.decode_benchmark(built, tokenizer, fmt, "hello there", new_tokens=6, bandwidth=1e10, loop=loop)
        for loop in (speed.DYNAMIC_LOOP, speed.HF_LOOP, speed.STATIC_LOOP)
    ]
    for timing in timings:
        assert timing.new_tokens == 6 and timing.decode_tokens_per_s > 0
        assert timing.weight_bytes == speed.model_weight_bytes(built)
    assert timings[0].token_ids == timings[1].token_ids == timings[2].token_ids  # greedy: one answer


def test_a_recast_copy_that_would_not_fit_is_refused(monkeypatch):
    from engine.methods.registry import NotEnoughMemoryError

    tiny = build_tiny_llama()
    monkeypatch.setattr(_types, "free_memory_bytes", lambda device: 1000)  # what require_free asks
    with pytest.raises(NotEnoughMemoryError, match=r"The bf16 variant copies the model: .* free on cpu"):
        speed.build_variant(tiny, "bf16")
    assert speed.build_variant(tiny, "fp32") is tiny  # its own dtype: no copy, nothing to check


def test_int8_head_variant_packs_a_tied_head_and_reads_fewer_bytes():
    from engine.kernels import QuantLinear

    tied = build_tiny_llama(tie_word_embeddings=True)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    plain = speed.build_variant(tied, "W4A16")
    headed = speed.build_variant(tied, "W4A16 + int8 head")
    assert isinstance(headed.lm_head, QuantLinear) and headed.lm_head.fmt == "W8A16"
    assert isinstance(tied.lm_head, torch.nn.Linear) and tied.lm_head.weight is tied.model.embed_tokens.weight
    assert type(plain.lm_head) is torch.nn.Linear  # the plain variant keeps its float head
    embedding = tied.model.embed_tokens.weight.numel() * 4
    # tied float head: the whole table is read per token; packed head: a quarter of it, and no table
    assert speed.weight_read_bytes(plain) - speed.weight_read_bytes(headed) == pytest.approx(
        embedding - headed.lm_head.nbytes
    )
    ids = torch.randint(3, 96, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        error = (headed(ids).logits - plain(ids).logits).norm() / plain(ids).logits.norm()
    assert 0 < error < 2e-2
    timing = speed.decode_benchmark(headed, build_char_tokenizer(), "W4A16 + int8 head", "hello", 4, 1e10)
    assert timing.new_tokens == 4 and timing.weight_bytes > 0
    with pytest.raises(ValueError, match="unknown variant"):
        speed.build_variant(tied, "fp32 + int8 head")  # a float variant is the model itself: never packed


def test_output_head_shape_is_offered_apart():
    tiny = build_tiny_llama()
    assert speed.output_head_shape(tiny) == speed.LinearShape(96, 64, 1, ("lm_head",))
    assert all("lm_head" not in shape.names for shape in speed.model_linear_shapes(tiny))


def test_speed_names_stand_for_catalog_recipes():
    """The page's short names are looked up once; the engine builds from the recipe's typed fields."""
    assert speed.VARIANTS["W4A16"] is recipes.get("W4A16 packed") and speed.VARIANTS["W4A16"].label == "W4A16"
    assert speed.VARIANTS["W4A16 + int8 head"].packed_head
    assert speed.FORMATS["W4A16 tinygemm"].kernel == "tinygemm" and "W4A16 tinygemm" not in speed.VARIANTS
    assert {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16} == speed.DTYPES
    w = weight(96, 64)
    by_name, by_recipe = speed.layer_for("W8A8", w), speed.layer_for(recipes.get("W8A8 packed"), w)
    assert by_name.fmt == by_recipe.fmt == "W8A8"
    tiny = build_tiny_llama()
    built = speed.build_variant(tiny, recipes.get("W4A16 packed"))
    assert built.model.layers[0].mlp.down_proj.fmt == "W4A16"
    with pytest.raises(ValueError, match="not a variant the decode benchmark builds"):
        speed.build_variant(tiny, recipes.get("W4"))  # fake quantization: not something the Speed page times
    with pytest.raises(ValueError, match="unknown format 'W5'"):
        speed.layer_for("W5", w)
    timings = speed.decode_comparison(tiny, build_char_tokenizer(), [recipes.get("W8A16 packed")], 4, 3)
    assert [t.variant for t in timings] == ["W8A16"]
