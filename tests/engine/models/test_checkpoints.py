"""Existing GPTQ / AWQ checkpoints: what a folder says it holds, clear refusals, and loading a checkpoint
that gptqmodel itself built (in a subprocess: importing gptqmodel changes process-wide settings).

The checkpoint gptqmodel writes is read three ways that must agree: transformers + gptqmodel (what the app
loads), gptqmodel's own dequantization, and our unpacking in `engine.models.checkpoints` (no gptqmodel).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from engine.models.checkpoints import (
    CheckpointError,
    check_loadable,
    checkpoint_quantization,
    preserved_environment,
    read_quantized_linears,
)
from tests.engine.methods.gptqmodel_runner import run

needs_gptqmodel = pytest.mark.skipif(
    importlib.util.find_spec("gptqmodel") is None or importlib.util.find_spec("optimum") is None,
    reason="gptqmodel / optimum are not installed",
)


def test_quantization_configs_are_described():
    gptq = {"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": True}
    assert checkpoint_quantization({"quantization_config": gptq}).label == (
        "GPTQ int4 g128 sym act-order (gptq layout)"
    )
    awq = {"quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "GEMM"}
    assert checkpoint_quantization({"quantization_config": awq}).label == "AWQ int4 g64 asym (GEMM layout)"
    per_channel = {"quant_method": "gptq", "bits": 8, "group_size": -1, "sym": False}
    assert "per channel" in checkpoint_quantization({"quantization_config": per_channel}).label
    assert checkpoint_quantization({"model_type": "llama"}) is None


def test_missing_backend_is_named_before_loading(monkeypatch):
    import engine.models.checkpoints as checkpoints

    monkeypatch.setattr(checkpoints, "missing_backends", lambda method: ["gptqmodel"])
    info = checkpoint_quantization({"quantization_config": {"quant_method": "gptq", "bits": 4}})
    with pytest.raises(CheckpointError, match="needs gptqmodel .*pip install"):
        check_loadable(info)
    check_loadable(None)  # a float checkpoint needs nothing


def test_missing_backend_message_reaches_load_model(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    import engine.models.checkpoints as checkpoints
    from engine.models.loading import load_model
    from engine.models.sources import ModelSource, ModelSourceError

    folder = tmp_path / "gptq"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 32}
    (folder / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(checkpoints, "missing_backends", lambda method: ["optimum", "gptqmodel"])
    with pytest.raises(ModelSourceError, match="GPTQ int4 g32 .*needs optimum, gptqmodel"):
        load_model(ModelSource("folder", str(folder)))


def test_environment_changes_are_undone(monkeypatch):
    monkeypatch.setenv("QE_PROBE", "kept")
    with preserved_environment():
        os.environ["QE_PROBE"] = "changed"
        os.environ["QE_NEW_VARIABLE"] = "1"
    assert os.environ["QE_PROBE"] == "kept" and "QE_NEW_VARIABLE" not in os.environ


def test_reader_refuses_float_folders(tiny_model_dir):
    with pytest.raises(CheckpointError, match="not a GPTQ or AWQ checkpoint"):
        read_quantized_linears(tiny_model_dir)


# -- a checkpoint gptqmodel built ---------------------------------------------------------------------


def build_with_gptqmodel(source: str, target: str, bits: str) -> None:
    """(In the subprocess.) GPTQ the tiny model with gptqmodel and save it in the AutoGPTQ layout; also
    save gptqmodel's own dequantized weights of the reloaded checkpoint."""
    from gptqmodel import GPTQModel, QuantizeConfig
    from gptqmodel.utils.backend import BACKEND

    config = QuantizeConfig(
        bits=int(bits), group_size=32, sym=False, desc_act=False, damp_percent=0.01, offload_to_disk=False
    )
    model = GPTQModel.load(source, config, device="cpu", dtype=torch.float16)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(3, 96, (16, 32), generator=generator)
    model.quantize([{"input_ids": row.tolist(), "attention_mask": [1] * 32} for row in rows])
    model.save(target)
    del model
    loaded = GPTQModel.load(target, device="cpu", dtype=torch.float16, backend=BACKEND.TORCH)
    weights = {
        name: module.dequantize_weight().float().T.contiguous()
        for name, module in loaded.model.named_modules()
        if hasattr(module, "dequantize_weight") and hasattr(module, "qweight")
    }
    torch.save(weights, Path(target) / "gptqmodel_weights.pt")


@pytest.fixture(scope="module")
def gptqmodel_checkpoint(tiny_model_dir, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("gptqmodel-built") / "tiny-gptq"
    run(__file__, target.parent / "gptqmodel.log", str(tiny_model_dir), str(target), "4", timeout=600)
    return target


@needs_gptqmodel
def test_a_gptqmodel_checkpoint_loads_and_reads_the_same_three_ways(gptqmodel_checkpoint):
    from engine.models.loading import describe, load_model
    from engine.models.sources import ModelSource

    info, ours = read_quantized_linears(gptqmodel_checkpoint)
    assert info.method == "gptq" and info.bits == 4 and info.group_size == 32
    theirs = torch.load(gptqmodel_checkpoint / "gptqmodel_weights.pt")
    assert set(ours) == set(theirs) and len(ours) == 14  # 2 layers x 7 linears
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], rtol=1e-3, atol=1e-4), name

    loaded = load_model(ModelSource("folder", str(gptqmodel_checkpoint)))
    assert loaded.quantization.label.startswith("GPTQ int4 g32 asym")
    assert describe(loaded).quantization == loaded.quantization.label
    ids = torch.randint(3, 96, (1, 16), generator=torch.Generator().manual_seed(5))
    reference = build_reference(loaded, ours)
    with torch.no_grad():
        logits = loaded.model(ids).logits.float()
        expected = reference(ids).logits
    assert (logits - expected).abs().max() < 0.02 * expected.abs().max()
    assert (logits.argmax(-1) == expected.argmax(-1)).float().mean() > 0.9
    generated = loaded.model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 20)


def build_reference(loaded, weights: dict[str, torch.Tensor]):
    """A float tiny Llama carrying the checkpoint's non-quantized tensors and our unpacked weights."""
    from safetensors.torch import load_file

    from tests.conftest import build_tiny_llama

    model = build_tiny_llama()
    plain = {}
    for path in loaded.folder.glob("*.safetensors"):
        plain.update({k: v.float() for k, v in load_file(path).items() if k.rpartition(".")[2] == "weight"})
    state = model.state_dict()
    for name in state:
        owner = name.removesuffix(".weight")
        if owner in weights:
            state[name] = weights[owner]
        elif name in plain:
            state[name] = plain[name]
    model.load_state_dict(state)
    return model.eval()


if __name__ == "__main__":  # the gptqmodel side, run by the fixture in a fresh process
    torch.set_num_threads(1)
    build_with_gptqmodel(*sys.argv[1:4])
