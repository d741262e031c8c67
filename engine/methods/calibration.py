"""Calibration plumbing the calibrated methods share (GPTQ, AWQ, QAT, LLM.int8(), SmoothQuant, bitsandbytes).

Two ways to feed calibration text through a model:
- Whole model: `calibration_batches` turns token ids into batches, `run_calibration` runs them through
  the model's body (no output head) reporting progress per decoder layer, and `OutputErrors` compares
  quantized layers with their float weights on the very inputs the quantized model feeds them
  (LLM.int8(), SmoothQuant, bitsandbytes).
- Layer by layer (the GPTQ reference's shape, used by GPTQ and AWQ): `capture_layer_inputs` keeps what
  decoder layer 0 receives (the reference's `Catcher`, a pre-hook that stops the forward), then per
  layer `input_sites` groups its linears by the tensor they read, `GramCollector` sums X^T X of their
  inputs, and `forward_layer` computes the next layer's inputs. Memory holds one layer's calibration
  inputs, not the whole model's activations.

Every hook goes through `engine.hooks`, so a failed or cut-short forward never leaves one behind.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine._types import Progress
from engine.analysis.stats import MAX_TOKENS_PER_FORWARD, StatsError, batched, decoder_layers
from engine.hooks import StopForward, forward_hooks, pre_hooks
from engine.quant.linear import linear_names
from engine.quant.schemes import QuantScheme, check_shape

LAYER_TOKENS_PER_FORWARD = 4096  # calibration rows are batched up to this many tokens per layer forward


# -- checks and small helpers --------------------------------------------------------------------------


def check_calibration(calib, method: str) -> Tensor:
    """(n, tokens) token ids, or a ValueError that says what to pass."""
    if calib is None:
        raise ValueError(
            f"{method} needs calibration data: pass calib=(n, tokens) token ids, e.g. "
            "engine.models.data.token_windows(tokenizer, text, WindowSpec(window=512, count=32))"
        )
    ids = torch.as_tensor(calib)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.numel() == 0 or ids.dtype.is_floating_point:
        raise ValueError(f"calibration must be (n, tokens) integer token ids (got {tuple(ids.shape)})")
    return ids.long()


def check_shapes(model: nn.Module, scheme: QuantScheme, prefix: str = "") -> None:
    """Fail fast, before any forward: every linear (under `prefix`) fits the scheme, or a ValueError naming it."""
    for name in linear_names(model):
        if name.startswith(prefix):
            try:
                check_shape(scheme, tuple(model.get_submodule(name).weight.shape))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from exc


def scaled(progress: Progress | None, start: float, end: float) -> Progress | None:
    """A progress callback that maps [0, 1] onto [start, end] of `progress`."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * fraction, message)


@contextmanager
def one_thread(device: torch.device):
    """Run on one CPU thread while the block runs (the setting is process-wide).

    GPTQ's column loop is thousands of small ops and its Cholesky factors are small, and QAT's steps are
    many mid-sized ops: on a busy CPU, OpenMP's barrier waits made them many times slower with two
    threads than with one."""
    threads = torch.get_num_threads()
    if device.type == "cpu" and threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def relative_output_error(weight: Tensor, quantized: Tensor, gram: Tensor) -> float:
    """||X (W - Q)^T|| / ||X W^T|| over the tokens whose Gram matrix is gram = X^T X."""
    W = weight.detach().float()
    D = W - quantized.float()
    noise = float(((D @ gram) * D).sum(dtype=torch.float64))
    signal = float(((W @ gram) * W).sum(dtype=torch.float64))
    if signal <= 0:
        return 0.0 if noise <= 0 else math.inf
    return math.sqrt(max(noise, 0.0) / signal)


def set_linear(parent: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at path `name` (relative to `parent`) with `module`."""
    owner_name, _, child = name.rpartition(".")
    setattr(parent.get_submodule(owner_name) if owner_name else parent, child, module)


# -- whole-model calibration (LLM.int8(), SmoothQuant, bitsandbytes) -------------------------------------


def calibration_batches(
    calib: Tensor | Iterable[Tensor], max_tokens: int = MAX_TOKENS_PER_FORWARD
) -> list[Tensor]:
    """(batch, tokens) id batches from (count, window) ids, one (tokens,) window, or a list of either.

    Windows of a (count, window) tensor are batched up to `max_tokens` tokens per forward (at least one).
    """
    if isinstance(calib, Tensor):
        windows = calib.unsqueeze(0) if calib.dim() == 1 else calib
        batches = batched(windows, max_tokens)
    else:
        batches = [torch.as_tensor(b).reshape(1, -1) if torch.as_tensor(b).dim() < 2 else b for b in calib]
    batches = [b for b in batches if b.numel()]
    if not batches:
        raise ValueError("the calibration set is empty: pass (count, window) token ids")
    if any(b.dtype.is_floating_point or b.dtype == torch.bool for b in batches):
        raise ValueError("calibration windows must hold integer token ids")
    return batches


@torch.no_grad()
def run_calibration(model: nn.Module, batches: list[Tensor], progress: Progress | None = None) -> int:
    """Run the batches through the model's body (no output head, no cache); returns the tokens run.

    Progress is reported after every decoder layer of every batch (a batch of 2,048 tokens takes seconds
    on a CPU), through forward hooks that are always removed.
    """
    body = getattr(model, "base_model", model)
    device = next(model.parameters()).device
    try:
        _, layers = decoder_layers(model)
    except StatsError:
        layers = []
    total = len(batches) * max(len(layers), 1)
    step = [0]

    def tick(message: str) -> None:
        step[0] += 1
        if progress:
            progress(min(step[0] / total, 1.0), message)

    tokens = 0
    ticks = [
        (layer, lambda *_, i=i: tick(f"layer {i + 1} of {len(layers)}")) for i, layer in enumerate(layers)
    ]
    with forward_hooks(ticks):
        for index, batch in enumerate(batches):
            body(input_ids=batch.to(device), use_cache=False)
            tokens += batch.numel()
            if not layers:
                tick(f"calibration batch {index + 1} of {len(batches)}")
    return tokens


def first_windows(batches: list[Tensor], count: int) -> tuple[list[Tensor], list[Tensor]]:
    """(batches holding the first `count` windows, batches holding the rest)."""
    head, tail, left = [], [], count
    for batch in batches:
        if left > 0:
            head.append(batch[:left])
            if batch.shape[0] > left:
                tail.append(batch[left:])
            left -= head[-1].shape[0]
        else:
            tail.append(batch)
    return head, tail


class OutputErrors:
    """`with OutputErrors(model, references) as errors: run ...; errors.relative()` -> {name: error}.

    Forward hooks on the named modules compare each output with linear(input, weight, bias) of the
    reference (weight, bias) given for it, on the very inputs the quantized model feeds that layer:
    the error is ||y_q - y|| / ||y|| summed over every call. Hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, references: dict[str, tuple[Tensor, Tensor | None]]) -> None:
        self.model, self.references = model, references
        self.signal = dict.fromkeys(references, 0.0)
        self.noise = dict.fromkeys(references, 0.0)
        self._stack = ExitStack()

    def __enter__(self) -> OutputErrors:
        pairs = [(self.model.get_submodule(name), self._hook(name)) for name in self.references]
        self._stack.enter_context(forward_hooks(pairs))
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def _hook(self, name: str):
        weight, bias = self.references[name]

        def hook(module, args, output):
            x = args[0]
            reference = nn.functional.linear(x.to(weight.dtype), weight, bias).float()  # (..., out)
            self.signal[name] += float(torch.linalg.vector_norm(reference)) ** 2
            self.noise[name] += float(torch.linalg.vector_norm(output.float() - reference)) ** 2

        return hook

    def relative(self) -> dict[str, float]:
        return {
            name: math.sqrt(self.noise[name] / self.signal[name]) if self.signal[name] > 0 else 0.0
            for name in self.references
        }


# -- layer-by-layer calibration (GPTQ, AWQ) ------------------------------------------------------------


@dataclass
class LayerInputs:
    """Calibration hidden states entering one decoder layer, in batches, with the layer's keyword args."""

    hidden: list[Tensor]  # (batch, tokens, hidden) per batch
    kwargs: list[dict]  # attention mask, position embeddings ... per batch

    @property
    def tokens(self) -> int:
        return sum(h.shape[0] * h.shape[1] for h in self.hidden)

    @property
    def samples(self) -> int:
        return sum(h.shape[0] for h in self.hidden)


@torch.no_grad()
def capture_layer_inputs(model: nn.Module, layers: nn.ModuleList, ids: Tensor) -> LayerInputs:
    """Run the model on `ids` up to decoder layer 0 and keep what it receives (the reference's Catcher)."""
    device = next(model.parameters()).device
    rows = max(1, LAYER_TOKENS_PER_FORWARD // ids.shape[1])
    captured = LayerInputs([], [])

    def catch(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kwargs = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "past_key_values")}
        kwargs["use_cache"] = False
        captured.hidden.append(hidden.detach())
        captured.kwargs.append(kwargs)
        raise StopForward

    with pre_hooks([(layers[0], catch)], with_kwargs=True):
        for start in range(0, ids.shape[0], rows):
            with suppress(StopForward):
                model(input_ids=ids[start : start + rows].to(device), use_cache=False)
    return captured


@torch.no_grad()
def forward_layer(layer: nn.Module, inputs: LayerInputs) -> LayerInputs:
    """The layer's outputs on every batch: the next layer's inputs."""
    outputs = []
    for hidden, kwargs in zip(inputs.hidden, inputs.kwargs, strict=True):
        out = layer(hidden, **kwargs)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return LayerInputs(outputs, inputs.kwargs)


def layer_linears(model: nn.Module, prefix: str, index: int) -> dict[str, nn.Linear]:
    """{name relative to the layer: linear} for the quantizable linears of decoder layer `index`."""
    start = f"{prefix}.{index}."
    return {
        name[len(start) :]: model.get_submodule(name)
        for name in linear_names(model)
        if name.startswith(start)
    }


@torch.no_grad()
def input_sites(layer: nn.Module, linears: dict[str, nn.Linear], inputs: LayerInputs) -> list[list[str]]:
    """Linears grouped by the tensor they read, in call order (q/k/v, o, gate/up, down on Llama).

    Found by running the first batch; linears the forward never calls come last, one per group.
    """
    order: list[tuple[str, Tensor]] = []

    def record(name):
        return lambda module, args: order.append((name, args[0]))

    with pre_hooks((linear, record(name)) for name, linear in linears.items()):
        forward_layer(layer, LayerInputs(inputs.hidden[:1], inputs.kwargs[:1]))
    sites: list[list[str]] = []
    last = None
    for name, tensor in order:
        if any(name in site for site in sites):
            continue
        if last is not None and tensor is last:
            sites[-1].append(name)
        else:
            sites.append([name])
        last = tensor
    seen = {name for site in sites for name in site}
    return sites + [[name] for name in linears if name not in seen]


class GramCollector:
    """Sum of X^T X (and of |X|, per channel) of the inputs of chosen linears, one per input site.

    `collect(layer, inputs, sites, stop_after)` runs the layer on every batch with pre-hooks on the
    sites' first linears and, when `stop_after` names a linear, stops each forward once it has run.
    """

    def __init__(self, linears: dict[str, nn.Linear], keep_abs_sum: bool = False) -> None:
        self.linears = linears
        self.keep_abs_sum = keep_abs_sum
        self.gram: dict[str, Tensor] = {}  # site leader -> (in, in) float32
        self.abs_sum: dict[str, Tensor] = {}  # site leader -> (in,) float32
        self.tokens: dict[str, int] = {}

    def _hook(self, leader: str):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()  # (tokens, in)
            if leader not in self.gram:
                self.gram[leader] = torch.zeros(x.shape[1], x.shape[1], device=x.device)
                self.abs_sum[leader] = torch.zeros(x.shape[1], device=x.device)
                self.tokens[leader] = 0
            self.gram[leader].addmm_(x.T, x)
            if self.keep_abs_sum:
                self.abs_sum[leader] += x.abs().sum(0)
            self.tokens[leader] += x.shape[0]

        return hook

    @torch.no_grad()
    def collect(
        self, layer: nn.Module, inputs: LayerInputs, sites: list[list[str]], stop_after: str | None = None
    ) -> LayerInputs | None:
        """Accumulate over every batch; returns the layer's outputs when no `stop_after` cut the forwards."""
        pairs = [(self.linears[site[0]], self._hook(site[0])) for site in sites]

        def stop(module, args):
            raise StopForward

        if stop_after is not None:  # registered after the Gram hooks, so they run first
            pairs.append((self.linears[stop_after], stop))
        outputs = []
        with pre_hooks(pairs):
            for hidden, kwargs in zip(inputs.hidden, inputs.kwargs, strict=True):
                with suppress(StopForward):
                    out = layer(hidden, **kwargs)
                    outputs.append(out[0] if isinstance(out, tuple) else out)
        return LayerInputs(outputs, inputs.kwargs) if stop_after is None else None
