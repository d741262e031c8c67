"""Collecting activation, residual-stream and KV-cache statistics from real forward passes.

`collect_stats(model, batches, targets)` runs the model over token windows inside `StatsCollector`, a
context manager over forward hooks (the GPTQ reference implementation's hook closure, made safe: every
hook is removed in `__exit__`, also when a forward raises). It records, per layer and per channel:

- activations: the input of every linear inside the decoder layers. Linears that read the very same
  tensor (q/k/v, gate/up) share one site, so their statistics are computed once;
- residual: the output of every decoder layer (the residual stream);
- kv: keys and values as they enter the cache, read from the returned `past_key_values` after each
  forward (`use_cache=True`), so keys are after RoPE; channel `h * head_dim + d` is dimension d of
  KV head h.

Memory is bounded: each site keeps running statistics (`engine.analysis.site_stats`: abs-max, mean and
central moments, a log-binned histogram of |x|, the abs-max of every token) plus the first
`sample_tokens` tokens of the first window as a (tokens, channels) sample for heatmaps and sensitivity.
For the LLM.int8() analysis the max |x| over layers is kept per (token, channel) for the linear inputs
that read the residual stream. A Stats for SmolLM2-135M over 8 x 256 tokens is about 40 MB.

KIVI's keys-per-channel / values-per-token contrast is measured during collection, on the first
`kivi_windows` windows (2 by default: 512 tokens, plenty for a per-head average), with asymmetric int
quantization at `KIVI_BITS`. Where we depart from KIVI: both layouts use blocks of the same size (a
head's `head_dim` channels of one token, or `kivi_block` tokens of one channel, 64 by default) so both
pay the same scale overhead, and we report SQNR of K and V themselves, not of the attention output;
KIVI uses groups of 32 tokens for keys, groups of channels for values, and keeps the most recent tokens
in full precision, which we do not model.

The hooks record only forwards that `StatsCollector.run` starts on its own thread, so a model shared
between browser sessions can serve other callers meanwhile without polluting the statistics.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from contextlib import ExitStack

import torch
from torch import Tensor

from engine._types import Progress
from engine.analysis.site_stats import (  # noqa: F401  (re-exported: callers read them from here)
    CHUNK_ELEMENTS,
    HIST_BINS,
    HIST_LOG2_RANGE,
    KIVI_BITS,
    KIVI_LAYOUTS,
    KV_KINDS,
    MAX_TOKENS_PER_FORWARD,
    TARGETS,
    SiteStats,
    Stats,
    StatsError,
    _Accumulator,
    histogram_edges,
)
from engine.hooks import forward_hooks, pre_hooks
from engine.quant.primitives import fake_quantize
from engine.quant.schemes import QuantScheme


def decoder_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """(qualified name, the ModuleList of decoder layers): the first list as long as num_hidden_layers."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    count = getattr(text_config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and len(module) == count:
            return name, module
    raise StatsError(
        f"Could not find the decoder layers of this {type(model).__name__}: no ModuleList has "
        f"config.num_hidden_layers = {count} entries."
    )


def is_output_projection(name: str) -> bool:
    """Linears whose input is not the residual stream (attention / MLP output projections)."""
    return name.rsplit(".", 1)[-1] in OUTPUT_PROJECTIONS


OUTPUT_PROJECTIONS = ("o_proj", "out_proj", "down_proj", "c_proj", "fc2", "dense_4h_to_h", "wo", "w2")


class StatsCollector:
    """`with StatsCollector(model) as collector: collector.run(ids) ...; stats = collector.result()`.

    Hooks are registered in `__enter__` and always removed in `__exit__`. They record only forwards
    started by `run` on the collecting thread, so a shared model can keep serving other callers (a
    generation in another browser session) without polluting the statistics.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        targets: Iterable[str] = TARGETS,
        sample_tokens: int = 64,
        kivi_block: int = 64,
        kivi_windows: int = 2,
    ) -> None:
        self.targets = tuple(targets)
        unknown = set(self.targets) - set(TARGETS)
        if unknown or not self.targets:
            raise StatsError(f"targets must be a non-empty subset of {TARGETS}; got {self.targets}")
        if sample_tokens < 1 or kivi_block < 1:
            raise StatsError("sample_tokens and kivi_block must be at least 1")
        self.model = model
        self.sample_tokens, self.kivi_block, self.kivi_windows = sample_tokens, kivi_block, kivi_windows
        self.prefix, self.layers = decoder_layers(model)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.hidden_size = int(config.hidden_size)
        self._hooks = ExitStack()
        self._sites: dict[str, _Accumulator] = {}
        self._info: dict[str, dict] = {}
        self._last_input: tuple[Tensor, str] | None = None  # (tensor, site) of the last linear input seen
        self._batch = 0
        self._tokens = 0
        self._input_max: list[Tensor] = []  # per batch: (tokens, hidden)
        self._kivi_signal: Tensor | None = None  # (layers, 2, 2, bits, heads) float64 sum x^2
        self._kivi_noise: Tensor | None = None  # same, sum (x - q(x))^2
        self._sample_ids: Tensor | None = None
        self._windows = self._window = 0
        self.progress: Progress | None = None
        self._batches_total = 1
        self._owner: int | None = None  # thread id while run() is inside a forward
        self._kivi_used = self._kivi_tokens = 0

    # -- hooks ------------------------------------------------------------------------------------
    def __enter__(self) -> StatsCollector:
        layer_hooks = [(layer, self._layer_hook(index)) for index, layer in enumerate(self.layers)]
        linear_hooks = []
        if "activations" in self.targets:
            linear_hooks = [
                (module, self._linear_hook(f"{self.prefix}.{index}.{name}", index))
                for index, layer in enumerate(self.layers)
                for name, module in layer.named_modules()
                if isinstance(module, torch.nn.Linear)
            ]
        with ExitStack() as stack:  # a failed registration unhooks what was registered before it
            stack.enter_context(forward_hooks(layer_hooks))
            stack.enter_context(pre_hooks(linear_hooks))
            self._hooks = stack.pop_all()
        return self

    def __exit__(self, *exc_info) -> None:
        self._hooks.close()  # engine.hooks removes every hook, also after a failed forward
        self._last_input = None

    def _linear_hook(self, name: str, layer: int):
        def hook(module, args):
            if self._owner != threading.get_ident():
                return
            x = args[0]  # (batch, tokens, in_features)
            if self._last_input is not None and self._last_input[0] is x:
                site = self._last_input[1]  # q/k/v (or gate/up) read the same tensor: one site
                if name not in self._info[site]["consumers"]:
                    self._info[site]["consumers"].append(name)
                return
            self._last_input = (x, name)
            self._info.setdefault(name, {"kind": "activation", "layer": layer, "consumers": [name]})
            self._update(name, x)

        return hook

    def _layer_hook(self, index: int):
        def hook(module, args, output):
            if self._owner != threading.get_ident():
                return
            hidden = output[0] if isinstance(output, tuple) else output  # (batch, tokens, hidden)
            self._last_input = None
            if "residual" in self.targets:
                name = f"{self.prefix}.{index}"
                self._info.setdefault(name, {"kind": "residual", "layer": index, "consumers": []})
                self._update(name, hidden)
            if self.progress is not None:
                done = (self._batch + (index + 1) / len(self.layers)) / self._batches_total
                self.progress(0.95 * done, f"Window batch {self._batch + 1}: layer {index + 1}")

        return hook

    def _update(self, name: str, x: Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1])  # (batch * tokens, channels)
        accumulator = self._sites.setdefault(name, _Accumulator(self.sample_tokens))
        accumulator.update(flat, x[0] if self._batch == 0 else None)
        info = self._info[name]
        if info["kind"] != "activation" or x.shape[-1] != self.hidden_size:
            return
        if is_output_projection(info["consumers"][0]):
            return
        if len(self._input_max) <= self._batch:
            self._input_max.append(torch.zeros(flat.shape, dtype=torch.float32, device=flat.device))
        target = self._input_max[self._batch]  # (batch * tokens, hidden)
        rows = max(1, CHUNK_ELEMENTS // flat.shape[1])
        for start in range(0, flat.shape[0], rows):
            part = target[start : start + rows]
            torch.maximum(part, flat[start : start + rows].detach().float().abs(), out=part)

    # -- running ----------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, input_ids: Tensor) -> None:
        """One forward over (batch, tokens) ids; keys and values are read from the returned cache."""
        if input_ids.dim() != 2 or input_ids.numel() == 0:
            raise StatsError(
                f"input_ids must be a non-empty (batch, tokens) tensor, got {tuple(input_ids.shape)}"
            )
        if self._batch == 0:
            self._sample_ids = input_ids[0, : self.sample_tokens].cpu().clone()
            self._window = input_ids.shape[1]
        base = getattr(self.model, "base_model", self.model)
        device = next(self.model.parameters()).device
        self._owner = threading.get_ident()
        try:
            output = base(input_ids=input_ids.to(device), use_cache="kv" in self.targets)
        finally:
            self._owner = None
            self._last_input = None
        if "kv" in self.targets:
            self._record_kv(getattr(output, "past_key_values", None))
        self._tokens += input_ids.numel()
        self._windows += input_ids.shape[0]
        self._batch += 1

    def _record_kv(self, cache) -> None:
        layers = getattr(cache, "layers", None)
        if not layers or getattr(layers[0], "keys", None) is None:
            raise StatsError(
                "The model returned no per-layer key/value cache (transformers 5 DynamicCache expected); "
                "collect without the 'kv' target."
            )
        for index, layer in enumerate(layers):
            for slot, (kind, tensor) in enumerate((("key", layer.keys), ("value", layer.values))):
                batch, heads, tokens, head_dim = tensor.shape
                name = f"{self.prefix}.{index}.{kind}"
                self._info.setdefault(name, {"kind": kind, "layer": index, "consumers": [], "heads": heads})
                accumulator = self._sites.setdefault(name, _Accumulator(self.sample_tokens))
                for row in range(batch):  # one window at a time: small copies
                    flat = tensor[row].transpose(0, 1).reshape(tokens, heads * head_dim)  # (tokens, ch)
                    accumulator.update(flat, flat if self._batch == 0 and row == 0 else None)
                self._record_kivi(index, slot, tensor.detach().float().cpu())

    def _record_kivi(self, layer: int, slot: int, x: Tensor) -> None:
        """Per-channel vs per-token asymmetric int error of one (batch, heads, tokens, head_dim) tensor."""
        x = x[: max(0, self.kivi_windows - self._windows)]  # only the first kivi_windows windows
        if x.numel() == 0:
            return
        batch, heads, tokens, head_dim = x.shape
        block = min(self.kivi_block, tokens)
        x = x[:, :, : tokens // block * block]  # whole blocks of tokens only
        self._kivi_used = block
        if slot == 0 and layer == 0:
            self._kivi_tokens += batch * x.shape[2]
        if self._kivi_signal is None:
            shape = (len(self.layers), 2, 2, len(KIVI_BITS), heads)
            self._kivi_signal = torch.zeros(shape, dtype=torch.float64)
            self._kivi_noise = torch.zeros(shape, dtype=torch.float64)
        signal = (x * x).sum((0, 2, 3)).double()  # (heads,)
        by_channel = x.reshape(batch, heads, -1, block, head_dim).transpose(-1, -2)  # (b, h, n, d, block)
        for b, bits in enumerate(KIVI_BITS):
            scheme = QuantScheme(bits, "int", symmetric=False, granularity="channel")
            per_channel = fake_quantize(by_channel, scheme).transpose(-1, -2).reshape(x.shape)
            per_token = fake_quantize(x, scheme)  # one scale per (token, head) over head_dim
            for layout, quantized in enumerate((per_channel, per_token)):
                error = quantized.sub_(x)
                self._kivi_noise[layer, slot, layout, b] += (error * error).sum((0, 2, 3)).double()
                self._kivi_signal[layer, slot, layout, b] += signal

    def result(self) -> Stats:
        if self._batch == 0:
            raise StatsError("No batches were run: there is nothing to summarise.")
        sites = []
        for name, accumulator in self._sites.items():
            info = self._info[name]
            consumers = tuple(info["consumers"])
            short = [c.rsplit(".", 1)[-1] for c in consumers]
            label = "·".join(short) + " in" if info["kind"] == "activation" else info["kind"]
            sites.append(
                accumulator.finish(
                    name=name,
                    kind=info["kind"],
                    layer=info["layer"],
                    label=label,
                    consumers=consumers,
                    heads=info.get("heads", 1),
                )
            )
        kivi = None
        if self._kivi_signal is not None:
            kivi = (10 * torch.log10(self._kivi_signal / self._kivi_noise.clamp_min(1e-30))).float()

        def joined(chunks: list[Tensor]) -> Tensor | None:
            return torch.cat(chunks).to(torch.float16).cpu() if chunks else None

        return Stats(
            sites=sites,
            layers=len(self.layers),
            hidden_size=self.hidden_size,
            tokens=self._tokens,
            windows=self._windows,
            window=self._window,
            sample_ids=self._sample_ids,
            input_token_max=joined(self._input_max),
            kivi_sqnr=kivi,
            kivi_block=self._kivi_used,
            kivi_tokens=self._kivi_tokens,
            targets=self.targets,
        )


def batched(windows: Tensor, max_tokens: int = MAX_TOKENS_PER_FORWARD) -> list[Tensor]:
    """Split (count, window) ids into batches of at most `max_tokens` tokens (at least one window)."""
    if windows.dim() != 2:
        raise StatsError(f"windows must be (count, window) token ids, got shape {tuple(windows.shape)}")
    per_batch = max(1, max_tokens // windows.shape[1])
    return list(windows.split(per_batch))


def collect_stats(
    model: torch.nn.Module,
    batches: Tensor | Iterable[Tensor],
    targets: Iterable[str] = TARGETS,
    progress: Progress | None = None,
    sample_tokens: int = 64,
    kivi_block: int = 64,
) -> Stats:
    """Run `batches` ((count, window) ids, or a list of (batch, tokens) ids) and summarise them."""
    start = time.perf_counter()
    batches = batched(batches) if isinstance(batches, Tensor) else list(batches)
    if not batches:
        raise StatsError("No token windows to run: the text produced no batches.")
    with StatsCollector(model, targets, sample_tokens, kivi_block) as collector:
        collector.progress, collector._batches_total = progress, len(batches)
        for batch in batches:
            collector.run(batch)
        if progress:
            progress(0.97, "Summarising")
        stats = collector.result()
    stats.seconds = time.perf_counter() - start
    if progress:
        progress(1.0, f"Collected statistics over {stats.tokens:,} tokens in {stats.seconds:.1f} s")
    return stats
