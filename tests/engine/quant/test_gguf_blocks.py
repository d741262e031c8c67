"""GGUF block formats (engine.quant.gguf) against llama.cpp.

- Legacy types: our bytes equal `gguf.quants.quantize` (the pinned `gguf` package mirrors ggml-quants.c's
  reference quantizers) on the default model's weights and on synthetic edge cases.
- k-quants: the pinned `gguf` only dequantizes them (its `quantize` raises NotImplementedError, checked
  below), so (a) `gguf.quants.dequantize` must read our packed blocks as exactly our values, and (b) our bytes
  must hash to the bytes of llama.cpp's own reference C quantizers (`quantize_row_qX_K_ref` and the
  `make_qkx2_quants` / `make_q3_quants` / `make_qx_quants` searches from ggml/src/ggml-quants.c, commit
  01243c5), compiled with gcc -O2 -ffp-contract=off and run on the same float32 inputs.
- The default model was distributed as Q4_1 (embedding Q8_0): re-quantizing its weights must give back the
  very bytes of the shipped GGUF file.
"""

from __future__ import annotations

import hashlib

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType

from engine.quant.gguf import (
    GGUF_TYPES,
    K_QUANTS,
    LEGACY,
    Q4_0,
    Q4_1,
    Q4_K,
    Q6_K,
    Q8_0,
    GGUFType,
    dequantize,
    fake_quantize,
    gguf_type,
    quantize,
)

pytestmark = pytest.mark.usefixtures("single_thread")

BITS_PER_WEIGHT = {
    "Q8_0": 8.5,
    "Q4_0": 4.5,
    "Q4_1": 5.0,
    "Q5_0": 5.5,
    "Q5_1": 6.0,
    "Q2_K": 2.625,
    "Q3_K": 3.4375,
    "Q4_K": 4.5,
    "Q5_K": 5.5,
    "Q6_K": 6.5625,
}

# sha256 (first 16 hex digits) of llama.cpp's reference C bytes (see the module docstring).
C_REFERENCE_DOWN_PROJ_0 = {
    "Q2_K": "3040ed0fbe64d954",
    "Q3_K": "c8f583a9cfffbd15",
    "Q4_K": "7a46652ed272410d",
    "Q5_K": "4f8da803fb09ad5a",
    "Q6_K": "1d8054fa97a5b0a3",
}
C_REFERENCE_SYNTHETIC = {
    "Q2_K": "c25fb7e5294da18e",
    "Q3_K": "94fe63c3e59fdbf0",
    "Q4_K": "4e2b97f82398ddb8",
    "Q5_K": "feecd794a8306984",
    "Q6_K": "ea9056296063be67",
}


def ggml(t: GGUFType) -> GGMLQuantizationType:
    return GGMLQuantizationType[t.name]


def hash16(packed: torch.Tensor) -> str:
    return hashlib.sha256(packed.numpy().tobytes()).hexdigest()[:16]


def deterministic_synthetic() -> torch.Tensor:
    """64 x 512 values from an integer hash (no RNG, no libm): heavy-tailed, plus zero, outlier,
    all-negative, quarter-step (ties) and constant super-blocks. Must stay bit-identical: the C hashes use it."""
    i = torch.arange(64 * 512, dtype=torch.int64)
    u = ((i * 2654435761) % (1 << 32) - (1 << 31)).to(torch.float32) / (1 << 31)
    x = (u * u * u * 4).reshape(64, 512)
    x[0:4] = 0.0
    x[4:8, ::37] = 25.0
    x[8:12] = -x[8:12].abs()
    x[12:16] = torch.round(x[12:16] * 4) / 4
    x[16, :256] = 1.0
    return x


def edge_blocks() -> torch.Tensor:
    """Blocks of 32 built to hit every branch of the legacy quantizers."""
    g = torch.Generator().manual_seed(0)
    rows = [
        torch.zeros(32),  # all zero: d = 0, id = 0
        torch.full((32,), 0.75),  # constant: max == min
        torch.tensor([1.0, -1.0] * 16),  # ties in magnitude: the first one (positive) gives the sign
        torch.tensor([-1.0, 1.0] * 16),  # ties, negative first
        torch.randn(32, generator=g).abs() * -1,  # every value negative: negative max
        torch.randn(32, generator=g) * 0.01,
        torch.cat([torch.tensor([-50.0]), torch.randn(31, generator=g) * 0.1]),  # negative outlier
        torch.cat([torch.randn(31, generator=g) * 0.1, torch.tensor([50.0])]),  # positive outlier, last
        torch.arange(-16, 16, dtype=torch.float32),  # on the grid, halves land exactly
        torch.arange(-16, 16, dtype=torch.float32) + 0.5,
        torch.randn(32, generator=g) * 1e-6,
        torch.linspace(-6e4, 6e4, 32),  # near the top of fp16
    ]
    return torch.cat([torch.stack(rows), torch.randn(52, 32, generator=g)]).reshape(32, 64)


@pytest.fixture(scope="module")
def weights(default_loaded) -> dict[str, torch.Tensor]:
    layers = default_loaded.model.model.layers
    return {
        "q_proj": layers[0].self_attn.q_proj.weight.detach(),  # 576 x 576
        "down_proj": layers[0].mlp.down_proj.weight.detach(),  # 576 x 1536
        "gate_proj": layers[5].mlp.gate_proj.weight.detach(),  # 1536 x 576
        "down_proj_17": layers[17].mlp.down_proj.weight.detach(),
    }


@pytest.mark.parametrize("t", GGUF_TYPES.values(), ids=GGUF_TYPES)
def test_block_sizes_and_bits_per_weight_match_ggml(t):
    assert (t.block_size, t.type_size) == gguf.constants.GGML_QUANT_SIZES[ggml(t)]
    assert t.ggml_id == ggml(t).value
    assert t.bits_per_weight == BITS_PER_WEIGHT[t.name]
    x = torch.randn(3, 512)
    packed = quantize(x, t)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 512 // t.block_size * t.type_size)
    assert packed.numel() * 8 / x.numel() == BITS_PER_WEIGHT[t.name]


@pytest.mark.parametrize("t", LEGACY, ids=lambda t: t.name)
@pytest.mark.parametrize("name", ["q_proj", "down_proj", "gate_proj"])
def test_legacy_bytes_equal_gguf_on_default_model(weights, t, name):
    w = weights[name]
    assert np.array_equal(quantize(w, t).numpy(), gguf.quants.quantize(w.numpy(), ggml(t)))


@pytest.mark.parametrize("t", LEGACY, ids=lambda t: t.name)
def test_legacy_bytes_equal_gguf_on_edge_cases(t):
    for x in (edge_blocks(), deterministic_synthetic()):
        assert np.array_equal(quantize(x, t).numpy(), gguf.quants.quantize(x.numpy(), ggml(t)))


@pytest.mark.parametrize("t", GGUF_TYPES.values(), ids=GGUF_TYPES)
def test_gguf_reads_our_blocks_as_our_values(weights, t):
    tensors = [weights["down_proj"], deterministic_synthetic()]
    if not t.is_k_quant:
        tensors += [weights["q_proj"], edge_blocks()]
    for x in tensors:
        packed = quantize(x, t)
        ours = dequantize(packed, t, x.shape)
        assert np.array_equal(gguf.quants.dequantize(packed.numpy(), ggml(t)), ours.numpy())
        assert torch.equal(fake_quantize(x, t), ours)


def test_pinned_gguf_cannot_quantize_k_quants():
    """Why the k-quants are checked against the C reference's hashes: gguf only dequantizes them.
    If a new pin can quantize them, this fails: then compare bytes with gguf directly instead."""
    for t in K_QUANTS:
        with pytest.raises(NotImplementedError):
            gguf.quants.quantize(np.zeros((1, 256), np.float32), ggml(t))


@pytest.mark.parametrize("t", K_QUANTS, ids=lambda t: t.name)
def test_k_quant_bytes_equal_llama_cpp_reference(weights, t):
    assert hash16(quantize(weights["down_proj"], t)) == C_REFERENCE_DOWN_PROJ_0[t.name]
    assert hash16(quantize(deterministic_synthetic(), t)) == C_REFERENCE_SYNTHETIC[t.name]


def relative_errors(w: torch.Tensor) -> list[float]:
    return [((fake_quantize(w, t) - w).pow(2).sum() / w.pow(2).sum()).item() for t in K_QUANTS]


def test_k_quant_error_follows_llama_cpp_order(weights):
    """Q2_K > Q3_K > Q4_K > Q5_K > Q6_K in relative MSE on the default model's down_proj weights seen in a
    random orthogonal basis (W @ R, as rotation methods do), which takes them off their shipped Q4_1 grid."""
    R, _ = torch.linalg.qr(torch.randn(1536, 1536, generator=torch.Generator().manual_seed(0)))
    for name in ("down_proj", "down_proj_17"):
        errors = relative_errors(weights[name] @ R)
        assert errors == sorted(errors, reverse=True) and len(set(errors)) == 5, (name, errors)


def test_k_quant_error_on_the_shipped_q4_1_grid(weights):
    """On the weights as shipped (Q4_1 values: 16 levels per 32), Q4_K and Q5_K snap close to that grid: both
    land near Q6_K's error and Q5_K comes out slightly worse than Q4_K. Q2_K > Q3_K > Q4_K still holds."""
    for name in ("down_proj", "down_proj_17"):
        q2, q3, q4, q5, q6 = relative_errors(weights[name])
        assert q2 > q3 > 10 * q4, (name, q2, q3, q4)
        assert q6 < q4 < q5 < 1.5 * q6, (name, q4, q5, q6)


def test_q4_1_gives_back_the_default_model_weights_and_file_bytes(default_loaded):
    """Every linear weight is a dequantized Q4_1 tensor: re-quantizing it is the identity, bit for bit, and its
    bytes are the shipped file's (q / k rows were permuted by the GGUF conversion, so their bytes are not
    compared; their values are)."""
    from engine.models.sources import default_gguf_path

    model = default_loaded.model
    linears = {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert len(linears) == 30 * 7 + 1
    for name, w in linears.items():
        if name != "lm_head":
            assert torch.equal(fake_quantize(w, Q4_1), w), name
    embedding = model.model.embed_tokens.weight.detach()
    assert torch.equal(fake_quantize(embedding, Q8_0), embedding)  # shipped as Q8_0
    assert not torch.equal(fake_quantize(embedding, Q4_1), embedding)

    stored = {t.name: t for t in gguf.GGUFReader(default_gguf_path()).tensors}
    layer = model.model.layers[3]
    shipped = {
        "blk.3.ffn_down.weight": layer.mlp.down_proj.weight,
        "blk.3.ffn_gate.weight": layer.mlp.gate_proj.weight,
        "blk.3.attn_v.weight": layer.self_attn.v_proj.weight,
        "blk.3.attn_output.weight": layer.self_attn.o_proj.weight,
        "token_embd.weight": embedding,
    }
    for name, w in shipped.items():
        t = gguf_type(stored[name].tensor_type.name)
        assert np.array_equal(quantize(w.detach(), t).numpy(), np.asarray(stored[name].data)), name


def test_q4_0_worked_block():
    """One block by hand: the largest magnitude is -4 (negative), so d = -4 / -8 = 0.5 and -4 gets code 0."""
    x = torch.zeros(1, 32)
    x[0, 0], x[0, 1], x[0, 16], x[0, 31] = -4.0, 1.0, 3.5, -0.25
    packed = quantize(x, Q4_0)[0]
    assert packed[:2].view(torch.float16).item() == 0.5
    codes = torch.cat([packed[2:] & 0x0F, packed[2:] >> 4])  # element j low nibble, j + 16 high nibble
    assert codes[[0, 1, 16, 31, 5]].tolist() == [0, 10, 15, 8, 8]  # trunc(x / 0.5 + 8.5), capped at 15
    assert dequantize(packed.reshape(1, -1), Q4_0, (1, 32))[0, [0, 1, 16, 31]].tolist() == [
        -4.0,
        1.0,
        3.5,
        0.0,
    ]


def test_q6_k_zero_super_block_is_all_zero_bytes():
    packed = quantize(torch.zeros(2, 256), Q6_K)
    assert packed.shape == (2, 210) and int(packed.count_nonzero()) == 0


def test_fake_quantize_keeps_shape_dtype_and_reads_labels():
    x = torch.randn(2, 3, 256, dtype=torch.bfloat16)
    y = fake_quantize(x, gguf_type("q4_k"))
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    assert gguf_type(" Q4_K ") is Q4_K


def test_bad_input_says_what_is_wrong():
    with pytest.raises(
        ValueError, match=r"^Q4_K packs rows in super-blocks of 256 values; this row has 576\.$"
    ):
        quantize(torch.zeros(4, 576), Q4_K)
    with pytest.raises(ValueError, match=r"^Q4_0 packs rows in blocks of 32 values; this row has 50\.$"):
        fake_quantize(torch.zeros(50), Q4_0)
    with pytest.raises(ValueError, match="bytes per row"):
        dequantize(torch.zeros(1, 10, dtype=torch.uint8), Q4_K, (1, 256))
    with pytest.raises(ValueError, match="not a GGUF block type"):
        gguf_type("Q7_K")
