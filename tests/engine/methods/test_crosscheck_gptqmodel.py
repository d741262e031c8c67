"""Our GPTQ against gptqmodel 7.6.0 (transformers 5's GPTQ backend) on the default model.

Two checks that can fail:
- per linear: both quantize the same weight with the same Hessian (layer 0's inputs from the unquantized
  model), and their output errors on those inputs must agree within 3%, both far below RTN's;
- end to end: gptqmodel's whole pipeline (true-sequential, 8 x 256 calibration tokens) and ours on the
  same calibration windows, on the default model cut to its first and last six layers (40% of the
  work; `gptqmodel_runner.truncated_default`), must land within 10% of each other's KL divergence to the
  float model (and 5% of each other's perplexity), both well below RTN's KL. KL is the sharper measure
  here: the cut model's perplexity is in the thousands and moves by a few percent between equally good
  quantizations. On the full model the two KLs differ by 3% (comment in the test).

Asymmetric int4 is compared because it is the same grid in both (scale (max - min) / 15, integer zero);
GPTQ's "sym" 4-bit grid is [-8, 7] * 2 absmax / 15, ours is [-7, 7] * absmax / 7. gptqmodel's defaults
are changed to the paper's: damping 0.01 (not 0.05) and no group-aware reordering (act_group_aware).

gptqmodel runs in a subprocess (this file run as a script): importing it rewrites HF_HOME and other
environment variables of the process, which the rest of the suite must not inherit. Its model straight
out of `quantize()` cannot be evaluated on CPU (its TorchLinear reads the v1 zero points as v2: every
weight one step off), nor can a float32 reload (the fused CPU kernel it picks disagrees with its own
weights by ~60%): the model is saved, reloaded with the float16 reference kernel (BACKEND.TORCH), and
its dequantized weights come back to be evaluated in a float32 copy exactly like ours. On a 2-CPU
machine it needs GPTQMODEL_CPU_WORKERS >= 2 (its loader pool asks for two workers, the default gives one).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tests.engine.methods.gptqmodel_runner import crosscheck_windows, run, truncated_default

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is None, reason="gptqmodel is not installed"),
]

LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "mlp.gate_proj", "mlp.down_proj"]


def gptqmodel_config():
    from gptqmodel import QuantizeConfig

    return QuantizeConfig(
        bits=4,
        group_size=64,
        sym=False,
        desc_act=False,
        act_group_aware=False,
        damp_percent=0.01,
        true_sequential=True,
        offload_to_disk=False,
    )


# -- the gptqmodel side (in the subprocess) --------------------------------------------------------------


def quantize_linears(job: Path, out: Path) -> None:
    """{name: (weight, inputs)} -> {name: gptqmodel's dequantized weight}, one GPTQ per linear."""
    from gptqmodel.quantization.gptq import GPTQ

    results = {}
    for name, (weight, x) in torch.load(job).items():
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        linear.weight.data.copy_(weight)
        gptq = GPTQ(linear, gptqmodel_config())
        gptq.quantizer.configure(perchannel=True)  # as gptqmodel's GPTQProcessor does
        for chunk in x.split(256):
            gptq.add_batch(chunk.unsqueeze(0), None)
        results[name] = gptq.quantize(blocksize=128)[0].float()
    torch.save(results, out)


def quantize_model_folder(folder: str, calibration: Path, out: Path) -> None:
    """The whole pipeline on a model folder; saves {linear name: dequantized float32 weight}."""
    from gptqmodel import GPTQModel
    from gptqmodel.utils.backend import BACKEND

    ids = torch.load(calibration)
    model = GPTQModel.load(folder, gptqmodel_config(), device="cpu", dtype=torch.float32)
    model.quantize([{"input_ids": row.tolist(), "attention_mask": [1] * row.numel()} for row in ids])
    saved = out.parent / "gptq-checkpoint"
    model.save(str(saved))
    del model
    loaded = GPTQModel.load(str(saved), device="cpu", dtype=torch.float16, backend=BACKEND.TORCH)
    weights = {
        name: module.dequantize_weight().float().T.contiguous()  # stored (in, out)
        for name, module in loaded.model.named_modules()
        if hasattr(module, "dequantize_weight") and hasattr(module, "qweight")
    }
    torch.save(weights, out)


# -- the tests -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def windows(default_loaded):
    return crosscheck_windows(default_loaded.tokenizer)


@pytest.fixture(scope="module")
def truncated(default_loaded, tmp_path_factory):
    """(model, folder): the default model's first layers, for the whole-pipeline comparison."""
    return truncated_default(default_loaded, tmp_path_factory.mktemp("truncated"))


def scheme():
    from engine.quant.schemes import QuantScheme

    return QuantScheme(4, "int", False, "group", 64)  # int4 asym g64: 576 is not a multiple of 128


def test_same_hessian_same_output_error(default_loaded, windows, tmp_path):
    from engine.methods.gptq import gptq_quantize, relative_output_error
    from engine.quant.primitives import fake_quantize

    model, (calibration, _) = default_loaded.model, windows
    layer = model.model.layers[0]
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in LINEARS}
    handles = [
        layer.get_submodule(name).register_forward_pre_hook(
            lambda m, a, name=name: inputs[name].append(a[0].detach().reshape(-1, a[0].shape[-1]))
        )
        for name in LINEARS
    ]
    try:
        with torch.no_grad():
            model(calibration[:4])
    finally:
        for handle in handles:
            handle.remove()
    job = {name: (layer.get_submodule(name).weight.detach(), torch.cat(inputs[name])) for name in LINEARS}
    torch.save(job, tmp_path / "job.pt")
    run(__file__, tmp_path / "gptqmodel.log", "linears", str(tmp_path / "job.pt"), str(tmp_path / "out.pt"))
    theirs = torch.load(tmp_path / "out.pt")
    for name, (weight, x) in job.items():
        gram = x.T @ x  # (in, in)
        ours = gptq_quantize(weight, 2 * gram / 4, scheme()).weight
        errors = {
            "ours": relative_output_error(weight, ours, gram),
            "gptqmodel": relative_output_error(weight, theirs[name], gram),
            "rtn": relative_output_error(weight, fake_quantize(weight, scheme()), gram),
        }
        assert abs(errors["ours"] / errors["gptqmodel"] - 1) < 0.03, (name, errors)
        assert errors["ours"] < 0.8 * errors["rtn"], (name, errors)


def test_whole_model_matches_gptqmodel(truncated, windows, tmp_path):
    import engine.methods.gptq  # noqa: F401  (registers GPTQConfig)
    from engine.evaluation.perplexity import ReferenceCache, evaluate_against_reference
    from engine.methods.gptq import GPTQConfig
    from engine.methods.registry import quantize_model
    from engine.methods.rtn import RTNConfig

    calibration, evaluation = windows
    model, folder = truncated
    torch.save(calibration, tmp_path / "calibration.pt")
    run(
        __file__,
        tmp_path / "gptqmodel.log",
        "model",
        str(folder),
        str(tmp_path / "calibration.pt"),
        str(tmp_path / "w.pt"),
    )
    theirs = quantize_model(model, RTNConfig(None)).model  # a copy with plain weights
    weights = torch.load(tmp_path / "w.pt")
    assert len(weights) == 7 * model.config.num_hidden_layers
    with torch.no_grad():
        for name, weight in weights.items():
            theirs.get_submodule(name).weight.copy_(weight)
    candidates = {
        "gptqmodel": theirs,
        "ours": quantize_model(model, GPTQConfig(scheme(), true_sequential=True), calibration).model,
        "rtn": quantize_model(model, RTNConfig(scheme())).model,
    }
    cache = ReferenceCache()
    results = {
        name: evaluate_against_reference(model, candidate, evaluation, cache)
        for name, candidate in candidates.items()
    }
    kl = {name: r.agreement.mean_kl for name, r in results.items()}
    ppl = {name: r.candidate.perplexity for name, r in results.items()}
    print(f"KL to the float model: {kl}; perplexity: {ppl}")
    # measured on the full model: KL ours 0.279, gptqmodel 0.271 and 0.274 in two runs (it is not
    # bit-reproducible), RTN 0.367. On the 12 kept layers: KL ours 0.343, gptqmodel 0.324, RTN 0.615;
    # perplexity 9,339, 9,114, 8,810 (the cut model's float perplexity is in the thousands)
    assert abs(kl["ours"] / kl["gptqmodel"] - 1) < 0.10, kl
    assert kl["ours"] < 0.85 * kl["rtn"] and kl["gptqmodel"] < 0.85 * kl["rtn"], kl
    assert abs(ppl["ours"] / ppl["gptqmodel"] - 1) < 0.05, ppl


if __name__ == "__main__":  # the gptqmodel side, run by run_gptqmodel in a fresh process
    if sys.argv[1] == "linears":
        quantize_linears(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        quantize_model_folder(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
