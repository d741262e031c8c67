"""Our AWQ against gptqmodel 7.6.0's AWQ (transformers 5's AWQ backend) on the default model.

Three checks that can fail:
- scale search, per group: the same inputs (layer 0's and layer 29's, from the unquantized model) and the
  same objective (MSE of the group's own linear outputs, ours) must give output errors within 1% of
  each other, ours at least 8% below RTN's;
- clip search, per linear (v_proj, o_proj of layer 0, the same 512 tokens): within 4% of each other, and
  within 1% once our scales are kept in float32 as gptqmodel's search keeps them (see below);
- end to end: gptqmodel's whole pipeline and ours on the same calibration windows (4 x 256 tokens) must
  land within 15% of each other's KL divergence to the float model and within 5% of each other's
  perplexity, both well below RTN's KL.

Asymmetric int4 g64 is compared: AWQ's usual zero-point grid (scale (max - min) / 15, integer zero), and
g128 does not divide the default model's 576 features. gptqmodel's settings are aligned with ours:
- duo scaling off (its default, from AutoAWQ, is s = x_mean^a / w_mean^(1-a); ours and llm-awq's
  paper version is s = x_mean^a); the same 20-point alpha grid (hard-coded there) and normalisation;
- clip search off end to end (our default; its default is on). Its clip search costs ~60 s a layer
  here (30 minutes for the model), so clipping is compared per linear only;
- the same scaled groups: norm -> q/k/v, norm -> gate/up, up -> down; v -> o is skipped by both because
  SmolLM2 uses grouped-query attention (v_proj's 192 outputs cannot scale o_proj's 576 inputs).
What still differs end to end, by design: its search loss is the output of the whole block the group
feeds (self_attn for q/k/v, the MLP for gate/up) where ours is the group's own linear outputs, and
each layer's calibration inputs come from the already quantized previous layers (it replays every
layer after quantizing it) where ours come from the unquantized model, as in llm-awq and AutoAWQ.
Measured end to end on 8 x 256 calibration tokens (KL to the float model; gptqmodel's was 0.1754 in all
three runs; on the 4 x 256 the test uses: ours 0.1766, gptqmodel 0.1736, RTN 0.367):
  ours 0.194 | ours fed the quantized layers' outputs 0.189 | that and float32 scales 0.186
  gptqmodel with our linear-output loss 0.176 | gptqmodel as it is 0.175 | RTN 0.367
(the variants were measured once with scripts, not run here). The block loss barely matters; most of
what remains between 0.186 and 0.176 is one alpha in the last layer, where activations are largest:
putting gptqmodel's layer 29 alone into that variant brings it to 0.179.
Per linear, the clip searches agree once the quantizers do. Our scales are stored in float16, rounded
up so the range always fits; gptqmodel searches with exact float32 scales. That costs our clipped
weights ~2% in output error (layer 0's v_proj 0.0923 against 0.0902, o_proj 0.0221 against 0.0216);
with scale_dtype float32 ours match within 0.5%. End to end with clip search on (ours only; its clip
search would take 30 minutes): KL 0.159 with float16 scales, 0.155 with float32.

gptqmodel runs in a subprocess (this file run as a script): importing it rewrites HF_HOME and other
environment variables of the process. On CPU it needs four workarounds:
- quantize(backend=BACKEND.TORCH): the default (AUTO) picks the CUDA GEMM kernel for packing and stops
  with "AWQ: CUDA is not available." (utils/importer.py, select_quant_linear);
- its scale search restores each candidate's weights from a "master copy" made with
  `fc.weight.detach().to(torch.float32).cpu().contiguous()` (looper/awq_processor.py, line 1843), which
  for a float32 model on the CPU is the live weight itself: every alpha then quantizes the previous
  alpha's result, the weights drift (layer 0's q_proj norm 164 -> 1608) and alpha 0 always wins. The
  whole model ended at KL 16 and perplexity 5e8. `patch_gptqmodel` makes that copy a `.clone()`;
- its packing kernel for the GEMM format on CPU (AwqTorchLinear) refuses float32 models ("only supports
  [torch.float16, torch.bfloat16]"), though it packs them correctly: float32 is added to its list
  by `patch_gptqmodel` (searching in float16 on a CPU would be slow and not compare like with like);
- the saved checkpoint is reloaded with that same kernel (BACKEND.TORCH, float16) and its weights are
  dequantized from the codes with float32 arithmetic; the folded norm weights are read from the saved
  file (float32). Both come back to be evaluated in a float32 copy of our model, like ours.
GPTQMODEL_CPU_WORKERS=2 as for GPTQ (its loader pool asks for two workers, a 2-CPU machine gives one).
The end-to-end subprocess (~4 CPU minutes, one thread) runs while our AWQ runs on the other core; the
file takes ~6 CPU minutes, 6 to 8.5 minutes of wall time on a 2-CPU machine shared with other work.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.engine.methods.gptqmodel_runner import crosscheck_windows, finish, run, start

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(importlib.util.find_spec("gptqmodel") is None, reason="gptqmodel is not installed"),
]

GROUPS = {  # our scale groups on SmolLM2 (engine.methods.awq.scale_groups): input site -> linears
    "self_attn.q_proj": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    "mlp.gate_proj": ["mlp.gate_proj", "mlp.up_proj"],
    "mlp.down_proj": ["mlp.down_proj"],
}
CLIPPED = {"self_attn.v_proj": "self_attn.q_proj", "self_attn.o_proj": "self_attn.o_proj"}  # linear: site
SEARCH_LAYERS = (0, 29)  # the first layer and the last (the largest activations and losses)


# -- the gptqmodel side (in the subprocess) --------------------------------------------------------------


def patch_gptqmodel() -> None:
    """The CPU workarounds of the module docstring, and our settings (no duo scaling, no clip search)."""
    import inspect
    import textwrap

    from gptqmodel.looper import awq_processor
    from gptqmodel.nn_modules.qlinear.torch_awq import AwqTorchLinear

    processor = awq_processor.AWQProcessor
    lines, first = inspect.getsourcelines(processor._compute_best_scale)
    source = textwrap.dedent("".join(lines))
    aliased = "fc.weight.detach().to(torch.float32).cpu().contiguous()"
    assert source.count(aliased) == 1, "gptqmodel's _compute_best_scale changed: re-check the workaround"
    source = "\n" * (first - 1) + source.replace(aliased, aliased.replace(".contiguous()", ".clone()"))
    namespace: dict = {}
    exec(compile(source, awq_processor.__file__, "exec"), vars(awq_processor), namespace)
    processor._compute_best_scale = namespace["_compute_best_scale"]

    AwqTorchLinear.SUPPORTS_DTYPES = [*AwqTorchLinear.SUPPORTS_DTYPES, torch.float32]

    init = processor.__init__

    def aligned_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.duo_scaling = False  # s = x_mean^alpha, as ours
        self.apply_clip = False  # our default; clipping is compared per linear

    processor.__init__ = aligned_init


def gptqmodel_config():
    from gptqmodel import QuantizeConfig

    return QuantizeConfig(
        method="awq", bits=4, group_size=64, sym=False, desc_act=False, offload_to_disk=False
    )


class Concat(nn.Module):
    """The group's linears side by side: gptqmodel's search loss becomes the MSE of their outputs (ours)."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__()
        self.linears = nn.ModuleList(linears)

    def forward(self, x):
        return torch.cat([linear(x) for linear in self.linears], dim=-1)


def bare_processor():
    """An AWQProcessor with only what its scale and clip searches read (its __init__ wants a model)."""
    import threading
    import types

    from gptqmodel.looper.awq_processor import AWQProcessor

    processor = AWQProcessor.__new__(AWQProcessor)
    processor.qcfg = gptqmodel_config()
    processor.duo_scaling = False
    processor._scale_context = threading.local()
    processor._quant_batch_size = None  # one forward for all tokens
    processor.max_chunk_memory = 1 << 30
    processor.gptq_model = types.SimpleNamespace(rotary_embedding=None)  # no rotary: plain linears
    processor.model = None
    return processor


@torch.no_grad()
def search_linears(job: Path, out: Path) -> None:
    """{"scale": {key: (weights, x)}, "clip": {key: (weight, x)}} -> the weights gptqmodel would quantize to.

    Scale: its _compute_best_scale on the same inputs with our objective; returns, per linear, its
    quantized weight as the unscaled inputs see it, Q(W diag(s)) diag(s)^-1, and the best loss.
    Clip: its _compute_best_clip (512 tokens, so no subsampling); returns the clipped, quantized weight.
    """
    processor = bare_processor()
    jobs, results = torch.load(job), {"scale": {}, "clip": {}}
    for key, (weights, x) in jobs["scale"].items():
        linears = []
        for weight in weights:
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            linear.weight.copy_(weight)
            linears.append(linear)
        group = Concat(linears)
        x_mean = x.abs().mean(dim=0)
        scales, loss = processor._compute_best_scale(
            x, torch.ones_like(x_mean), x_mean, group, linears, group(x), {}
        )
        quantized = [processor.pseudo_quantize_tensor(w * scales)[0] / scales for w in weights]
        results["scale"][key] = (quantized, loss)
    for key, (weight, x) in jobs["clip"].items():
        limit = processor._compute_best_clip(weight.clone(), x)  # (rows, groups, 1)
        clipped = torch.clamp(weight.view(*limit.shape[:2], -1), -limit, limit).view(weight.shape)
        results["clip"][key] = processor.pseudo_quantize_tensor(clipped)[0]
    torch.save(results, out)


def quantize_model_folder(folder: str, calibration: Path, out: Path) -> None:
    """The whole pipeline on a model folder; saves {parameter name: float32 tensor} for linears and norms."""
    from gptqmodel import GPTQModel
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm
    from gptqmodel.utils.backend import BACKEND
    from safetensors.torch import load_file

    ids = torch.load(calibration)
    model = GPTQModel.load(folder, gptqmodel_config(), device="cpu", dtype=torch.float32)
    rows = [{"input_ids": row.tolist(), "attention_mask": [1] * row.numel()} for row in ids]
    model.quantize(rows, backend=BACKEND.TORCH)  # AUTO picks the CUDA GEMM kernel and fails on CPU
    saved = out.parent / "awq-checkpoint"
    model.save(str(saved))
    del model
    loaded = GPTQModel.load(str(saved), device="cpu", dtype=torch.float16, backend=BACKEND.TORCH)
    params = {}
    for name, module in loaded.model.named_modules():
        if hasattr(module, "qweight"):
            weight = dequantize_gemm(  # stored (in, out); float32 scales: exact products
                module.qweight, module.qzeros, module.scales.float(), module.bits, module.group_size
            )
            params[f"{name}.weight"] = weight.T.contiguous()
            x = torch.randn(16, module.in_features, dtype=torch.float16)
            runtime, expected = module(x).float(), x.float() @ params[f"{name}.weight"].T
            error = float((runtime - expected).norm() / expected.norm())  # float16 matmul: ~1e-3
            assert error < 1e-2, f"{name}: the dequantized weights disagree with its kernel by {error:.3g}"
    for file in saved.glob("*.safetensors"):
        params.update({k: v.float() for k, v in load_file(file).items() if k.endswith("norm.weight")})
    torch.save(params, out)


# -- the tests -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def windows(default_loaded):
    return crosscheck_windows(default_loaded.tokenizer)


def scheme(scale_dtype: str = "float16"):
    from engine.quant.schemes import QuantScheme

    # int4 asym g64: 576 is not a multiple of 128
    return QuantScheme(4, "int", False, "group", 64, scale_dtype=scale_dtype)


def layer_inputs(model, ids, layers, sites) -> dict[tuple[int, str], torch.Tensor]:
    """{(layer, linear): its (tokens, in) inputs} from one forward of the unquantized model."""
    inputs = {}

    def keep(key):
        def hook(module, args):  # returns None: the input goes on unchanged
            inputs[key] = args[0].detach().reshape(-1, args[0].shape[-1])

        return hook

    layer_list = model.model.layers
    handles = [
        layer_list[index].get_submodule(site).register_forward_pre_hook(keep((index, site)))
        for index in layers
        for site in sites
    ]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for handle in handles:
            handle.remove()
    return inputs


def test_same_inputs_same_search(default_loaded, windows, tmp_path):
    from engine.methods.awq import search_clip, search_scales
    from engine.methods.calibration import relative_output_error
    from engine.quant.primitives import fake_quantize

    model, (calibration, _) = default_loaded.model, windows
    scale_inputs = layer_inputs(model, calibration[:4], SEARCH_LAYERS, GROUPS)  # 1,024 tokens
    clip_inputs = layer_inputs(model, calibration[:2], (0,), set(CLIPPED.values()))  # 512 tokens
    weight = {
        (index, name): model.model.layers[index].get_submodule(name).weight.detach()
        for index in SEARCH_LAYERS
        for name in [
            *GROUPS["self_attn.q_proj"],
            "self_attn.o_proj",
            *GROUPS["mlp.gate_proj"],
            "mlp.down_proj",
        ]
    }
    job = {
        "scale": {
            (index, site): ([weight[index, name] for name in names], scale_inputs[index, site])
            for index in SEARCH_LAYERS
            for site, names in GROUPS.items()
        },
        "clip": {name: (weight[0, name], clip_inputs[0, site]) for name, site in CLIPPED.items()},
    }
    torch.save(job, tmp_path / "job.pt")
    run(__file__, tmp_path / "gptqmodel.log", "linears", str(tmp_path / "job.pt"), str(tmp_path / "out.pt"))
    theirs = torch.load(tmp_path / "out.pt")

    for (index, site), (weights, x) in job["scale"].items():
        gram = x.T @ x  # (in, in)
        scales, alpha, curve = search_scales(weights, gram, x.abs().mean(0), x.shape[0], scheme(), 20)
        their_weights, their_loss = theirs["scale"][index, site]
        ours_loss = min(loss for _, loss in curve)
        # measured: best losses within 0.4% (theirs keeps scales in float32) and the same alpha in all six
        assert abs(ours_loss / their_loss - 1) < 0.01, (index, site, ours_loss, their_loss)
        for name, w, their_w in zip(GROUPS[site], weights, their_weights, strict=True):
            errors = {
                "ours": relative_output_error(w, fake_quantize(w * scales, scheme()) / scales, gram),
                "gptqmodel": relative_output_error(w, their_w, gram),
                "rtn": relative_output_error(w, fake_quantize(w, scheme()), gram),
            }
            print(f"layer {index} {name} (alpha {alpha}): {errors}")
            # measured, ours / gptqmodel / RTN: layer 0 q 0.0292 / 0.0291 / 0.0339, k 0.0313 / 0.0311 /
            # 0.0406, v 0.0804 / 0.0804 / 0.1350, gate 0.0729 / 0.0728 / 0.0840, up 0.1113 / 0.1113 /
            # 0.1315, down 0.0552 / 0.0552 / 0.0630 (12-40% below RTN); layer 29 within 0.3%, 20-45%
            # below RTN (q 0.0510 / 0.0509 / 0.0664, down 0.0425 / 0.0424 / 0.0799)
            assert abs(errors["ours"] / errors["gptqmodel"] - 1) < 0.01, (index, name, errors)
            assert errors["ours"] < 0.92 * errors["rtn"], (index, name, errors)

    for name, (w, x) in job["clip"].items():
        gram = x.T @ x
        errors = {
            "ours": relative_output_error(w, fake_quantize(search_clip(w, gram, scheme()), scheme()), gram),
            "ours_f32": relative_output_error(
                w, fake_quantize(search_clip(w, gram, scheme("float32")), scheme("float32")), gram
            ),
            "gptqmodel": relative_output_error(w, theirs["clip"][name], gram),
            "rtn": relative_output_error(w, fake_quantize(w, scheme()), gram),
        }
        print(f"clip layer 0 {name}: {errors}")
        # measured: v_proj 0.0923, float32 scales 0.0902, gptqmodel 0.0902, RTN 0.135; o_proj 0.0221,
        # 0.0217, 0.0216, 0.0312
        assert errors["ours"] / errors["gptqmodel"] - 1 < 0.04, (name, errors)
        assert abs(errors["ours_f32"] / errors["gptqmodel"] - 1) < 0.01, (name, errors)
        assert errors["ours"] < 0.8 * errors["rtn"], (name, errors)


def test_whole_model_matches_gptqmodel(default_loaded, windows, tmp_path):
    import engine.methods.awq  # noqa: F401  (registers AWQConfig)
    from engine.evaluation.perplexity import ReferenceCache, evaluate_against_reference
    from engine.methods.awq import AWQConfig
    from engine.methods.registry import quantize_model
    from engine.methods.rtn import RTNConfig

    calibration, evaluation = windows
    calibration = calibration[:4]  # 4 x 256 tokens: half of each side's search, the same comparison
    torch.save(calibration, tmp_path / "calibration.pt")
    log = tmp_path / "gptqmodel.log"
    args = ("model", str(default_loaded.folder), str(tmp_path / "calibration.pt"), str(tmp_path / "p.pt"))
    process = start(__file__, log, *args)
    try:  # ours on this core while gptqmodel runs on the other
        candidates = {
            "ours": quantize_model(default_loaded.model, AWQConfig(scheme()), calibration).model,
            "rtn": quantize_model(default_loaded.model, RTNConfig(scheme())).model,
        }
    except BaseException:
        process.kill()
        process.wait()
        raise
    finish(process, log)
    theirs = quantize_model(default_loaded.model, RTNConfig(None)).model  # a copy with plain weights
    params = torch.load(tmp_path / "p.pt")
    layers = default_loaded.model.config.num_hidden_layers
    assert sum(name.endswith("proj.weight") for name in params) == 7 * layers
    assert sum(name.endswith("layernorm.weight") for name in params) == 2 * layers  # scales folded in
    with torch.no_grad():
        for name, value in params.items():
            theirs.get_parameter(name).copy_(value)
    candidates["gptqmodel"] = theirs
    cache = ReferenceCache()
    results = {
        name: evaluate_against_reference(default_loaded.model, candidate, evaluation, cache)
        for name, candidate in candidates.items()
    }
    kl = {name: r.agreement.mean_kl for name, r in results.items()}
    ppl = {name: r.candidate.perplexity for name, r in results.items()}
    print(f"KL to the float model: {kl}; perplexity: {ppl}")
    # measured on 4 x 256 calibration tokens: KL ours 0.1766, gptqmodel 0.1736, RTN 0.367; perplexity 83.4,
    # 82.1, 88.8 (float model 72.9). On 8 x 256: KL 0.194 and 0.175 (ratio 1.105; the module docstring says
    # where the gap comes from)
    assert abs(kl["ours"] / kl["gptqmodel"] - 1) < 0.15, kl
    assert kl["ours"] < 0.65 * kl["rtn"] and kl["gptqmodel"] < 0.65 * kl["rtn"], kl
    assert abs(ppl["ours"] / ppl["gptqmodel"] - 1) < 0.05, ppl


if __name__ == "__main__":  # the gptqmodel side, run by start_gptqmodel in a fresh process
    torch.set_num_threads(1)  # the test process computes ours on the other core meanwhile
    patch_gptqmodel()
    if sys.argv[1] == "linears":
        search_linears(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        quantize_model_folder(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
