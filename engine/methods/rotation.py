"""Rotation (QuaRot, Ashkboos et al. 2024): fold the norms, rotate the residual stream, then quantize.

A Llama-style model computes the same function after these exact rewrites (on the registry's copy):

1. fold every RMSNorm's scale γ into the linears that read it (q/k/v ← input_layernorm, gate/up ←
   post_attention_layernorm, the head ← the final norm): W ← W diag(γ), then γ ← 1. A tied head is
   untied first (it no longer equals the embeddings once the final norm is folded into it);
2. rotate the residual stream by an orthogonal Q: the embeddings E ← E Q, every linear reading the
   stream (q, k, v, gate, up, head) W ← W Q, every linear writing it (o_proj, down_proj) W ← Qᵀ W (and its
   bias b ← b Q). RMSNorm without γ commutes with Q (‖xQ‖ = ‖x‖), so every norm now sees hQ;
3. optionally (`rotate_values`) rotate each attention head's values by a head_dim Hadamard: W_v ← Hᵀ W_v
   per head, W_o ← W_o H per head; the softmax mixes tokens, not channels, so this is exact too, and the
   KV cache stores rotated values;
4. optionally (`online_down`) an online Hadamard on down_proj's input: W_down ← W_down H, and the MLP
   multiplies its intermediate by H on every call (`OnlineHadamardMLP`, kept factored: 1536 = 384 × 4
   costs 1536 × 388 multiply-adds a token). The only rewrite that adds work to the forward.

The residual's massive channels (SmolLM2-135M: channel 507 near 26,000 on the first token) are spread
over all channels, so per-token activation scales stop being set by one channel: that is what makes 4-bit
activations work. `then` (e.g. RTNConfig W4A4, GPTQConfig) quantizes the rotated copy afterwards through
its own registry handler, with the same calibration and progress.

Where we depart from QuaRot: the queries and keys are not rotated online after RoPE (so a 4-bit KV cache
gains only on the values, through `rotate_values`); the rotation is not learned (SpinQuant's is). All
rewrites are done in float64 and cast back to the model's dtype, and checked on a short probe (logits must
match within `fold_tolerance`). Reports: one per linear the other methods quantize (the head is left out,
as everywhere, so bits per weight compare). Without `then`: bits as stored and SQNR +inf (rotating changes
no weight beyond rounding, which the logits check bounds); with it, the `then` method's numbers against
the rotated weight it was given, its own detail inside `RotationDetail.then_detail`.
Calibration: the registry keeps one kind per method, so rotation says OPTIONAL_REPORT (the lab passes the
windows): they are used only by the `then` method.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.analysis.stats import decoder_layers
from engine.methods.calibration import scaled
from engine.methods.registry import Calibration, LayerReport, method_info, register
from engine.methods.smoothquant import fold_tolerance
from engine.quant.hadamard import Rotation, RotationKind, rotation
from engine.quant.linear import linear_names
from engine.quant.metrics import relative_error

__all__ = ["OnlineHadamardMLP", "RotationConfig", "RotationDetail", "RotationKind", "rotate_model"]

READERS = {"input_layernorm": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
           "post_attention_layernorm": ("mlp.gate_proj", "mlp.up_proj")}  # fmt: skip
WRITERS = ("self_attn.o_proj", "mlp.down_proj")
ALLOWED_NORMS = ("input_layernorm", "post_attention_layernorm", "self_attn.q_norm", "self_attn.k_norm")
PROBE_TOKENS = 16  # ids 1..16: enough to catch a rewrite that changes the function


@dataclass(frozen=True)
class RotationConfig:
    # which orthogonal matrix: a randomized Hadamard (a random orthogonal one where no Hadamard fits)
    kind: RotationKind = RotationKind.HADAMARD
    seed: int = 0  # the random signs (Hadamard) or the Gaussian matrix (random): a different rotation each
    rotate_values: bool = False  # per-head Hadamard on values and o_proj's input: helps a 4-bit KV cache
    online_down: bool = False  # Hadamard on down_proj's input on every call: spreads the MLP's outliers
    then: object | None = None  # the method config applied to the rotated copy (RTNConfig, GPTQConfig, ...)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, RotationKind):
            raise ValueError(f"kind must be a RotationKind (got {self.kind!r})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be a whole number (got {self.seed!r})")
        for field in ("rotate_values", "online_down"):
            if not isinstance(getattr(self, field), bool):
                raise ValueError(f"{field} must be True or False (got {getattr(self, field)!r})")
        if self.then is not None:
            if isinstance(self.then, RotationConfig):
                raise ValueError("rotate once: the method applied after rotating cannot be another rotation")
            method_info(self.then)  # a registered method, or a ValueError naming the known ones
            hash(self.then)  # the config is a cache key

    @property
    def label(self) -> str:
        extras = [x for x, on in (("V/O", self.rotate_values), ("online down", self.online_down)) if on]
        name = "Rotation" + (f" ({', '.join(extras)})" if extras else "")
        if self.kind is RotationKind.RANDOM:
            name += " random"
        if self.then is None:
            return name
        then = getattr(self.then, "label", method_info(self.then).name)
        return f"{name} + {then}"


@dataclass(frozen=True)
class RotationDetail:
    """What rotation reports per linear (LayerReport.detail): rotation spreads weight outliers too."""

    max_over_rms_before: float  # max |w| / RMS(w) of the weight before folding and rotating
    max_over_rms_after: float  # ... after (what the `then` method quantizes)
    note: str | None = None  # why a matrix is not the kind asked for (no Hadamard of that order), or None
    then_detail: object | None = None  # the `then` method's own detail for this linear


class OnlineHadamardMLP(nn.Module):
    """A Llama MLP, down_proj(H(act(gate(x)) * up(x))), with H an online Hadamard rotation (kept factored).

    The same submodule names as the MLP it replaces (gate_proj, up_proj, down_proj, act_fn), so methods
    that replace down_proj keep the rotation, and hooks on down_proj see the rotated input. The factors
    are buffers (they follow .to(device)), left out of the state dict: a saved checkpoint loses H.
    """

    def __init__(self, mlp: nn.Module, rot: Rotation) -> None:
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj
        self.act_fn = mlp.act_fn
        if rot.signs is not None:
            raise ValueError("the online Hadamard is unsigned (its factors are the whole rotation)")
        device = mlp.down_proj.weight.device
        self.factor_count = len(rot.factors)
        for index, factor in enumerate(rot.factors):  # e.g. (384, 384) and (4, 4) for 1536
            self.register_buffer(f"hadamard_{index}", factor.to(device, torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        factors = tuple(getattr(self, f"hadamard_{i}") for i in range(self.factor_count))
        return self.down_proj(Rotation(factors, None).apply(self.act_fn(self.gate_proj(x)) * self.up_proj(x)))


# -- checks ----------------------------------------------------------------------------------------------


def check_rotatable(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder layers, or a ValueError saying why this model cannot be folded and rotated."""
    kind = type(model).__name__
    for name, module in model.named_modules():
        if isinstance(module, nn.LayerNorm) or (
            "norm" in type(module).__name__.lower() and getattr(module, "bias", None) is not None
        ):
            raise ValueError(
                f"{kind} uses LayerNorm with a bias; folding needs RMSNorm (a Llama-style model): a norm that "
                f"subtracts the mean does not commute with a rotation ({name})"
            )
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    if model_type.startswith("gemma"):
        raise ValueError(f"{model_type}'s norms multiply by 1 + weight and follow each block; rotation needs Llama-style norms")  # fmt: skip
    prefix, layers = decoder_layers(model)
    for index, layer in enumerate(layers):
        paths = [*READERS, *(p for group in READERS.values() for p in group), *WRITERS]
        missing = [p for p in paths if not _has(layer, p)]
        if missing:
            raise ValueError(f"rotation needs Llama-style decoder layers; layer {index} of this {kind} has no {missing[0]}")  # fmt: skip
        extra = [
            n
            for n, m in layer.named_modules()
            if "norm" in type(m).__name__.lower() and n not in ALLOWED_NORMS
        ]
        if extra:
            raise ValueError(f"layer {index} has a norm rotation cannot fold ({extra[0]})")
    if (
        getattr(getattr(model, "base_model", model), "norm", None) is None
        or model.get_output_embeddings() is None
    ):
        raise ValueError(f"rotation needs a final norm and an output head; this {kind} lacks one")
    return prefix, layers


def _has(layer: nn.Module, path: str) -> bool:
    try:
        module = layer.get_submodule(path)
    except AttributeError:
        return False
    return isinstance(module, nn.Linear) or "norm" in path


# -- the rewrites (in place, float64) ----------------------------------------------------------------------


def _set(param: Tensor, value: Tensor) -> None:
    param.data.copy_(value)  # float64 -> the model's dtype


def _untie(model: nn.Module) -> None:
    """Give a head tied to the embeddings its own weight (folding the final norm makes them differ)."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr():
        head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=False)
    config = getattr(model, "config", None)
    if config is not None:
        config.tie_word_embeddings = False
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        text.tie_word_embeddings = False


def _fold_and_rotate(norm: nn.Module, linears: list[nn.Linear], q: Tensor) -> None:
    """W ← W (diag(γ) Q) for every linear reading `norm`, then γ ← 1: one float64 matmul per weight (on a
    2-core CPU the passes over memory cost more than the multiply-adds a factored Hadamard would save)."""
    folded = norm.weight.detach().double().unsqueeze(1) * q  # (in, in): diag(γ) Q
    for linear in linears:
        _set(linear.weight, linear.weight.detach().double() @ folded)  # (out, in)
    norm.weight.data.fill_(1.0)


def _rotate_values(attn: nn.Module, rot: Rotation, head_dim: int) -> None:
    v, o = attn.v_proj, attn.o_proj
    w = v.weight.detach().double()  # (kv_heads * head_dim, hidden): rows per head ← Hᵀ W_h
    w = rot.apply(w.T.reshape(w.shape[1], -1, head_dim)).reshape(w.shape[1], -1).T
    _set(v.weight, w)
    if v.bias is not None:
        _set(v.bias, rot.apply(v.bias.detach().double().view(-1, head_dim)).view(-1))
    wo = o.weight.detach().double()  # (hidden, heads * head_dim): columns per head ← W_h H
    _set(o.weight, rot.apply(wo.view(wo.shape[0], -1, head_dim)).view(wo.shape))


def _max_over_rms(w: Tensor) -> float:
    w = w.detach().float()
    rms = torch.linalg.vector_norm(w) / w.numel() ** 0.5
    return float(torch.linalg.vector_norm(w, float("inf")) / rms.clamp(min=1e-30))


@torch.no_grad()
def rotate_model(model: nn.Module, config: RotationConfig) -> dict[str, RotationDetail]:
    """Fold and rotate `model` in place; {linear name: detail} for every linear `linear_names` lists."""
    prefix, layers = check_rotatable(model)
    names = linear_names(model)
    before = {n: _max_over_rms(model.get_submodule(n).weight) for n in names}
    _untie(model)
    body, head, embed = (
        getattr(model, "base_model", model),
        model.get_output_embeddings(),
        model.get_input_embeddings(),
    )
    hidden = embed.weight.shape[1]
    rot = rotation(hidden, config.kind, config.seed)
    q = rot.matrix(torch.float64).to(embed.weight.device)  # (hidden, hidden)
    _fold_and_rotate(body.norm, [head], q)
    _set(embed.weight, embed.weight.detach().double() @ q)  # (vocab, hidden) @ Q
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head_dim = getattr(text, "head_dim", None) or hidden // text.num_attention_heads
    value_rot = rotation(head_dim, config.kind, config.seed + 1) if config.rotate_values else None
    down_rot = None
    for layer in layers:
        for norm, readers in READERS.items():
            _fold_and_rotate(layer.get_submodule(norm), [layer.get_submodule(p) for p in readers], q)
        for path in WRITERS:  # W ← Qᵀ W; b ← b Q
            linear = layer.get_submodule(path)
            weight = linear.weight.detach().double()
            if path == "mlp.down_proj" and config.online_down:  # and W ← W H for the online Hadamard
                down_rot = down_rot or rotation(
                    linear.in_features, config.kind, config.seed + 2, signed=False
                )
                weight = down_rot.apply(weight)
            _set(linear.weight, q.T @ weight)
            if linear.bias is not None:
                _set(linear.bias, linear.bias.detach().double() @ q)
        if value_rot is not None:
            _rotate_values(layer.self_attn, value_rot, head_dim)
        if down_rot is not None:
            layer.mlp = OnlineHadamardMLP(layer.mlp, down_rot)
    notes = [r.note for r in (rot, value_rot, down_rot) if r is not None and r.note]
    note = "; ".join(dict.fromkeys(notes)) or None
    return {n: RotationDetail(before[n], _max_over_rms(model.get_submodule(n).weight), note) for n in names}


def _probe_logits(model: nn.Module) -> Tensor:
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = (torch.arange(1, PROBE_TOKENS + 1) % vocab).unsqueeze(0).to(next(model.parameters()).device)
    return model(input_ids=ids, use_cache=False).logits.float().cpu()


# -- the method ------------------------------------------------------------------------------------------


@register(
    RotationConfig, name="Rotation", calibration=Calibration.OPTIONAL_REPORT, detail_type=RotationDetail
)
def rotate(model: nn.Module, config: RotationConfig, calib, progress) -> list[LayerReport]:
    check_rotatable(model)  # refuse before any work
    if progress:
        progress(0.0, "Folding the norms and rotating the residual stream")
    start = time.perf_counter()
    with torch.no_grad():
        reference = _probe_logits(model)
        details = rotate_model(model, config)
        change = relative_error(reference, _probe_logits(model))
    tolerance = fold_tolerance(next(model.parameters()).dtype)
    if change > tolerance:
        raise ValueError(
            f"folding and rotating changed this model's output by {change:.2%} (more than rounding's "
            f"{tolerance:.2%}): its layers do not read and write the residual stream the Llama way"
        )
    seconds = (time.perf_counter() - start) / max(1, len(details))
    if config.then is None:
        if progress:
            progress(1.0, "Rotated")
        return [_rotation_report(model, name, detail, seconds) for name, detail in details.items()]
    then_reports = method_info(config.then).handler(model, config.then, calib, scaled(progress, 0.1, 1.0))
    return [
        LayerReport(r.name, r.bits_per_weight, r.weight_sqnr_db, r.output_error, r.seconds + seconds,
                    _with_then(details.get(r.name), r.detail))
        for r in then_reports
    ]  # fmt: skip


def _with_then(detail: RotationDetail | None, then_detail: object) -> RotationDetail:
    if detail is None:
        return RotationDetail(float("nan"), float("nan"), None, then_detail)
    return dataclasses.replace(detail, then_detail=then_detail)


def _rotation_report(model: nn.Module, name: str, detail: RotationDetail, seconds: float) -> LayerReport:
    """Bits as stored (16 or 32); SQNR +inf: rotating changes no weight beyond rounding to the model's
    dtype, which the probe's logits check bounds (a per-weight SQNR of the basis change would mislead)."""
    bits = float(model.get_submodule(name).weight.element_size() * 8)
    return LayerReport(name, bits, float("inf"), None, seconds, detail)
