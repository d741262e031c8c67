"""Export: integer codes recovered exactly, GPTQ / AWQ packing, and round trips through transformers.

Without gptqmodel the checkpoints are read back with our own unpacking (`engine.models.checkpoints`); with it
(requirements-model.txt installs it) transformers loads them through optimum + gptqmodel, and both the
logits and gptqmodel's own dequantized weights must agree with the model we exported.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from engine.methods import GPTQConfig, LLMInt8Config, RTNConfig, quantize_model
from engine.models.checkpoints import checkpoint_quantization, read_quantized_linears
from engine.models.export import (
    AWQ_ORDER,
    ExportError,
    available_formats,
    export_model,
    int_codes,
    pack_cols,
    pack_rows,
    quantized_linears,
    unpack_cols,
    unpack_rows,
    zip_folder,
)
from engine.quant.schemes import QuantScheme
from tests.conftest import build_tiny_llama

needs_gptqmodel = pytest.mark.skipif(
    importlib.util.find_spec("gptqmodel") is None or importlib.util.find_spec("optimum") is None,
    reason="gptqmodel / optimum are not installed",
)
INT4_G32 = QuantScheme(4, "int", False, "group", 32)


def rtn(model, scheme=INT4_G32, activations=None):
    return quantize_model(model, RTNConfig(weights=scheme, activations=activations))


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, 96, (2, 12), generator=torch.Generator().manual_seed(0))


# -- packing ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_pack_rows_and_cols_round_trip(bits):
    codes = torch.randint(0, 2**bits, (64, 48), generator=torch.Generator().manual_seed(bits))
    words = pack_rows(codes, bits)
    assert words.dtype == torch.int32 and words.shape == (64 * bits // 32, 48)
    assert torch.equal(unpack_rows(words, bits), codes)
    cols = pack_cols(codes, bits)
    assert cols.shape == (64, 48 * bits // 32)
    assert torch.equal(unpack_cols(cols, bits), codes)


def test_gptq_packing_matches_the_reference_layout():
    """AutoGPTQ: word i of column j holds rows 8i..8i+7, row 8i+k in bits 4k..4k+3; AWQ interleaves."""
    codes = torch.arange(16).view(16, 1) % 16  # rows 0..15 of one column
    words = pack_rows(codes, 4)
    assert words[0, 0].item() == 0x76543210 and words[1, 0].item() == 0xFEDCBA98 - 2**32
    row = torch.arange(8).view(1, 8)  # one row, 8 columns: AWQ order 0,2,4,6,1,3,5,7
    assert pack_cols(row, 4, AWQ_ORDER)[0, 0].item() == 0x75316420
    with pytest.raises(ExportError, match="cannot be packed"):
        pack_rows(torch.zeros(12, 4, dtype=torch.int64), 4)


# -- codes from our quantized layers -------------------------------------------------------------------


@pytest.mark.parametrize(
    "scheme",
    [
        INT4_G32,
        QuantScheme(4, "int", True, "group", 32),
        QuantScheme(8, "int", True, "channel"),
        QuantScheme(2, "int", False, "group", 16),
    ],
    ids=lambda s: s.label,
)
def test_int_codes_reproduce_the_weight_exactly(tiny, scheme):
    quantized = rtn(tiny, scheme)
    for name, module in quantized_linears(quantized.model).items():
        c = int_codes(module)
        assert c.codes.min() >= 0 and c.codes.max() < 2**scheme.bits, name
        rebuilt = (c.codes - c.zeros[:, c.g_idx]) * c.scales[:, c.g_idx]
        assert torch.equal(rebuilt, module.weight.float()), name


@pytest.mark.parametrize("static_groups", [False, True])
@pytest.mark.parametrize("scheme", [INT4_G32, QuantScheme(8, "int", True, "channel")], ids=lambda s: s.label)
def test_gptq_keeps_the_scales_it_chose(tiny, tmp_path, scheme, static_groups):
    calib = torch.randint(3, 96, (4, 32), generator=torch.Generator().manual_seed(1))
    quantized = quantize_model(tiny, GPTQConfig(weights=scheme, static_groups=static_groups), calib)
    export_model(quantized.model, tmp_path, "gptq")  # int_codes checks (q - z) * s == w for every weight
    _, weights = read_quantized_linears(tmp_path)
    for name, module in quantized_linears(quantized.model).items():
        assert module.g_idx is None and torch.equal(weights[name], module.weight.float()), name


def test_a_bfloat16_model_exports_its_true_codes(tmp_path):
    """A 16-bit weight is the grid value rounded to bfloat16; the codes still come back exactly."""
    model = build_tiny_llama().to(torch.bfloat16)
    quantized = rtn(model, QuantScheme(8, "int", False, "group", 32))
    export_model(quantized.model, tmp_path, "gptq")
    _, weights = read_quantized_linears(tmp_path)
    for name, module in quantized_linears(quantized.model).items():
        assert module.weight.dtype == torch.bfloat16
        c = int_codes(module)
        assert torch.equal((c.codes - c.zeros[:, c.g_idx]) * c.scales[:, c.g_idx], weights[name]), name
        assert torch.equal(weights[name].to(torch.bfloat16), module.weight), name


def test_gptq_act_order_keeps_g_idx_and_exports_it(tiny, tmp_path):
    calib = torch.randint(3, 96, (4, 32), generator=torch.Generator().manual_seed(1))
    config = GPTQConfig(weights=INT4_G32, act_order=True)
    quantized = quantize_model(tiny, config, calib)
    linears = quantized_linears(quantized.model)
    assert all(m.g_idx is not None for m in linears.values())
    g_idx = next(iter(linears.values())).g_idx
    assert not torch.equal(g_idx, torch.arange(g_idx.numel(), dtype=g_idx.dtype) // 32)  # reordered
    assert torch.bincount(g_idx.long()).tolist() == [32, 32]  # still 32 inputs per group
    assert available_formats(quantized.model)["awq"].startswith("act-order")
    export_model(quantized.model, tmp_path, "gptq")
    info, weights = read_quantized_linears(tmp_path)
    assert info.act_order and info.label.startswith("GPTQ int4 g32 asym act-order")
    for name, module in linears.items():
        assert torch.equal(weights[name], module.weight.float()), name


def test_which_formats_each_model_allows(tiny):
    assert available_formats(rtn(tiny).model) == {
        "bnb": "not a bitsandbytes model",
        "dequantized": None,
        "gptq": None,
        "awq": None,
        "gguf": "this model's format has no GGUF type; quantize it with the GGUF method",
        "gguf_f16": None,
    }
    nf4 = available_formats(rtn(tiny, QuantScheme(4, "nf4", True, "group", 32)).model)
    assert "integer grid" in nf4["gptq"] and nf4["dequantized"] is None
    w8a8 = rtn(tiny, QuantScheme(8, "int", True, "channel"), QuantScheme(8, "int", True, "channel"))
    assert "activations" in available_formats(w8a8.model)["gptq"]
    assert (
        "pack evenly" in available_formats(rtn(tiny, QuantScheme(3, "int", False, "group", 32)).model)["awq"]
    )
    assert "4-bit groups" in available_formats(rtn(tiny, QuantScheme(8, "int", True, "channel")).model)["awq"]
    llm_int8 = available_formats(quantize_model(tiny, LLMInt8Config()).model)
    assert all("save the bitsandbytes int8" in llm_int8[f] for f in ("gptq", "awq", "dequantized"))
    with pytest.raises(ExportError, match="cannot write gptq"):
        export_model(w8a8.model, "/nonexistent-never-created", "gptq")
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(w8a8.model, "/nonexistent-never-created", "onnx")


# -- files on disk ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["gptq", "awq"])
def test_our_reader_gets_back_every_weight(tiny, tmp_path, fmt):
    quantized = rtn(tiny)
    result = export_model(quantized.model, tmp_path, fmt)
    assert set(result.files) >= {"model.safetensors", "config.json"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == fmt
    assert config["quantization_config"]["bits"] == 4 and config["quantization_config"]["group_size"] == 32
    info, weights = read_quantized_linears(tmp_path)
    assert info.method == fmt and info.bits == 4
    linears = quantized_linears(quantized.model)
    assert set(weights) == set(linears)
    for name, module in linears.items():
        assert torch.equal(weights[name], module.weight.float()), name


def test_zero_point_zero_falls_back_to_the_v2_layout(tiny, tmp_path):
    """v1 stores zero - 1: a group whose zero is 0 (all weights >= 0) needs gptq_v2."""
    model = build_tiny_llama()
    with torch.no_grad():
        q_proj = model.model.layers[0].self_attn.q_proj.weight
        q_proj[:, :32] = q_proj[:, :32].abs()
    quantized = rtn(model)
    assert int_codes(quantized.model.model.layers[0].self_attn.q_proj).zeros.min() == 0
    export_model(quantized.model, tmp_path, "gptq")
    assert checkpoint_quantization(json.loads((tmp_path / "config.json").read_text())).layout == "gptq_v2"
    _, weights = read_quantized_linears(tmp_path)
    expected = quantized.model.model.layers[0].self_attn.q_proj.weight.float()
    assert torch.equal(weights["model.layers.0.self_attn.q_proj"], expected)


def test_dequantized_export_loads_as_a_plain_model(tiny, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    quantized = rtn(tiny)
    export_model(quantized.model, tmp_path, "dequantized")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    with torch.no_grad():
        ours, theirs = quantized.model(ids).logits, loaded(ids).logits
    assert torch.allclose(ours, theirs, atol=2e-3), (ours - theirs).abs().max()
    names = zip_folder(tmp_path)
    assert b"model.safetensors" in names and b"config.json" in names


def test_bnb_export_is_transformers_save_pretrained(tiny, ids, tmp_path):
    from transformers import AutoModelForCausalLM

    from engine.methods import BnbConfig

    quantized = quantize_model(tiny, BnbConfig("nf4"))
    assert available_formats(quantized.model) == {
        "gptq": "bitsandbytes layers are saved in their own format",
        "awq": "bitsandbytes layers are saved in their own format",
        "bnb": None,
        "dequantized": "bitsandbytes layers are saved in their own format",
        "gguf": "bitsandbytes layers are saved in their own format",
        "gguf_f16": "bitsandbytes layers are saved in their own format",
    }
    export_model(quantized.model, tmp_path, "bnb")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="cpu").eval()
    for module in loaded.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False  # the same generic CPU path as ours
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, quantized.model(ids).logits, rtol=1e-5, atol=1e-6)


# -- through transformers + optimum + gptqmodel -------------------------------------------------------


def _gptqmodel_weights(model) -> dict[str, torch.Tensor]:
    """gptqmodel's own dequantization of every packed linear, (out, in); call before the first forward
    (its CPU AWQ kernel repacks itself into torch's int4pack layout then)."""
    weights = {}
    for name, module in model.named_modules():
        if hasattr(module, "awq_weight_dequantize"):
            weights[name] = module.awq_weight_dequantize("cpu", torch.float32).T.contiguous()
        elif hasattr(module, "qweight") and hasattr(module, "dequantize_weight"):
            weights[name] = module.dequantize_weight().float().T.contiguous()
    return weights


@needs_gptqmodel
@pytest.mark.parametrize(
    "fmt,scheme",
    [("gptq", INT4_G32), ("gptq", QuantScheme(4, "int", True, "group", 32)), ("awq", INT4_G32)],
    ids=["gptq-asym", "gptq-sym", "awq"],
)
def test_transformers_loads_our_checkpoint(tiny, ids, tmp_path, fmt, scheme):
    from engine.models.loading import load_model
    from engine.models.sources import ModelSource
    from tests.conftest import build_char_tokenizer

    quantized = rtn(tiny, scheme)
    export_model(quantized.model, tmp_path, fmt, tokenizer=build_char_tokenizer())
    loaded = load_model(ModelSource("folder", str(tmp_path)), dtype="float32")
    assert loaded.quantization is not None and loaded.quantization.method == fmt
    theirs = _gptqmodel_weights(loaded.model)
    ours = quantized_linears(quantized.model)
    assert set(theirs) == set(ours)
    for name, module in ours.items():  # identical codes: equal up to gptqmodel's float16 dequantization
        assert torch.allclose(theirs[name], module.weight.float(), rtol=1e-3, atol=1e-4), name
    with torch.no_grad():
        reference = quantized.model(ids).logits
        logits = loaded.model(ids).logits.float()
    assert (logits - reference).abs().max() < 0.02 * reference.abs().max()
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9


@needs_gptqmodel
def test_gptq_v2_checkpoint_loads(tmp_path, ids):
    from transformers import AutoModelForCausalLM

    model = build_tiny_llama()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.abs_()
    quantized = rtn(model)
    export_model(quantized.model, tmp_path, "gptq")
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"]["checkpoint_format"] == (
        "gptq_v2"
    )
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    expected = quantized.model.model.layers[0].mlp.up_proj.weight.float()
    got = _gptqmodel_weights(loaded)["model.layers.0.mlp.up_proj"]
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-4)


@needs_gptqmodel
@pytest.mark.slow
def test_default_model_round_trip(default_loaded, tmp_path):
    """The real model: int4 g64 RTN -> GPTQ checkpoint -> transformers + gptqmodel -> same predictions."""
    from engine.models.data import WindowSpec, load_text, token_windows
    from engine.models.loading import load_model
    from engine.models.sources import ModelSource

    quantized = quantize_model(
        default_loaded.model, RTNConfig(weights=QuantScheme(4, "int", False, "group", 64))
    )
    result = export_model(quantized.model, tmp_path, "gptq", tokenizer=default_loaded.tokenizer)
    float_bytes = sum(p.numel() * 2 for p in default_loaded.model.parameters())  # float16, tied once
    assert result.files["model.safetensors"] < 0.6 * float_bytes
    loaded = load_model(ModelSource("folder", str(tmp_path)))
    ids = token_windows(default_loaded.tokenizer, load_text("pydoc"), WindowSpec(window=128, count=2))
    with torch.no_grad():
        ours = quantized.model(ids).logits
        theirs = loaded.model(ids).logits.float()
    agreement = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    assert agreement > 0.97, agreement
    kl = (
        torch.nn.functional.kl_div(
            theirs.log_softmax(-1), ours.log_softmax(-1), log_target=True, reduction="batchmean"
        ).item()
        / ids.shape[1]
    )
    assert kl < 0.01, kl
