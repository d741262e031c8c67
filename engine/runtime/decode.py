"""Fast greedy decoding: a static KV cache and a per-token step that can be compiled (issue 8).

The loop gpt-fast made the standard for batch-1 decode. The prompt is prefilled once, eagerly, into a
static cache preallocated to `prompt + max_new_tokens` (engine.runtime.static_cache.SharedPositionCache,
a transformers StaticCache), so every decode step has the same shapes; then engine.runtime.greedy's loop
(the one every decoder shares) calls `_greedy_step(model, token, cache, mask) -> next token` per token,
argmax included, with nothing copied back to the host between steps (one token id per step when an
end-of-sequence token must be watched for). In mode "compiled" that step goes through
`torch.compile(dynamic=False)`: with `mode="reduce-overhead"` on CUDA, which replays the step as a CUDA
graph so that Python and kernel launches drop out and decode is bound by reading the weights; on a CPU
the default inductor mode (C++/OpenMP code, no graphs), which mostly removes Python and fuses the small
elementwise ops.

Where it departs from transformers / gpt-fast:
- transformers 5.x forwards take no `cache_position`: a StaticCache layer keeps its own fill level (a
  tensor, so it never forces a recompile) and writes each step's keys there. Ours share one fill level,
  a 0-d tensor on the device that the cache advances once per forward (issue 16: transformers' layers
  spend an arange, an add and an add_ per layer per step on their own); the step's `position_ids` are a
  view of that same tensor, so the position and the cache cannot drift apart.
- The attention mask (issue 16): transformers rebuilds the static cache's causal mask every step (~20
  small ops: aranges, unsqueezes, a comparison). In eager mode we pass a preallocated 4-D mask instead
  (bool for sdpa, additive for "eager" attention; transformers uses a 4-D mask as it is) and open one
  slot of it per step (one `index_fill_`). Only for models whose every layer is full attention with the
  sdpa or eager kernel; others (sliding windows, flash / flex attention), and compiled steps, where
  inductor fuses the mask's ops into the graph, leave the mask to transformers.
- Compilation is tried with `fullgraph=True` first; a graph break (e.g. fake-quantized activations,
  whose primitive branches on tensor values) retries with `fullgraph=False` and reports how many breaks
  Dynamo counted. Any other failure (no C++ compiler for inductor, an op Dynamo cannot trace) falls back
  to the eager step and says why in `DecodeResult.fallback_reason`. The packed QuantLinear ops of
  engine.kernels (aten int4 / int8 packed matmuls, `_int_mm`) compile without a break on the CPU.
- A compiled step is kept per model (weakly: dropping the model drops it) and per shapes (batch, cache
  length, device, dtype, mode, backend), with its StaticCache, which is reset between runs; a second
  run with the same shapes reuses both and reports `compile_seconds == 0`. Each entry compiles its own
  copy of the step function (a distinct code object), so Dynamo's per-function recompile limit (8) is
  never shared between models and shapes, and no entry silently degrades to eager.
- Compilation happens in a warm-up (a one-token prefill and WARMUP_STEPS steps) before the timed run,
  so `compile_seconds` is reported apart from the steady-state tokens/s. Eager runs warm up too.
- A step's output is cloned only when CUDA graphs replay it (their output memory is reused).

Batch > 1 takes prompts of equal length (no padding mask). Greedy only: for sampling, streaming
callbacks and a quantized KV cache use engine.runtime.generation.generate, the plain (dynamic-cache) loop.
"""

from __future__ import annotations

import collections
import dataclasses
import inspect
import itertools
import threading
import time
import types
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from engine.runtime.generation import GenerationError, encode_prompt, max_context
from engine.runtime.greedy import argmax_token, greedy_loop
from engine.runtime.static_cache import SharedPositionCache

MODES = ("eager", "compiled")
WARMUP_STEPS = 3  # CUDA graph trees: a warm-up run, a recording, then replays
MAX_STEPS_PER_MODEL = 4  # compiled steps (and their caches) kept per model, least recently used dropped
DEFAULT_BACKEND = "inductor"  # torch.compile's; tests swap in "eager" to trace without generating code


@dataclass(frozen=True)
class DecodeResult:
    token_ids: tuple[tuple[int, ...], ...]  # per sequence, end-of-sequence token excluded
    prompt_tokens: int  # per sequence
    prefill_seconds: float
    decode_seconds: float  # from the first new token to the last
    mode: str  # what was asked: eager or compiled
    mode_used: str  # what ran: eager, or compiled (inductor), or compiled (reduce-overhead) ...
    compile_seconds: float = 0.0  # warm-up that compiled the step here; 0 when eager or reused
    fallback_reason: str | None = None  # why compiled fell back to eager, or to fullgraph=False
    graph_breaks: int | None = None  # Dynamo's count while compiling the step; None when eager
    fullgraph: bool | None = None  # whether the compiled step is one graph
    cache_len: int = 0  # tokens the static cache holds
    reused: bool = False  # the step (and cache) came from an earlier run
    text: str = ""  # first sequence, decoded, when a tokenizer was given
    stopped_at_eos: bool = False

    @property
    def batch(self) -> int:
        return len(self.token_ids)

    @property
    def new_tokens(self) -> int:
        return max(len(ids) for ids in self.token_ids)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second per sequence after the first (which prefill produces), as generation.py."""
        steps = self.new_tokens - 1
        return steps / self.decode_seconds if self.decode_seconds > 0 and steps > 0 else float("nan")

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.batch * self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0


# -- the step ------------------------------------------------------------------------------------------------


def _greedy_step(model, token: torch.Tensor, cache, mask: torch.Tensor | None = None) -> torch.Tensor:
    """One decode step: (batch, 1) token at the cache's position -> (batch, 1) argmax next token.

    `mask` is the preallocated 4-D attention mask (eager steps) or None (transformers builds it)."""
    position = cache.position.view(1, 1).expand(token.shape[0], 1)  # a view: the cache's own position
    logits = model(
        input_ids=token, position_ids=position, attention_mask=mask, past_key_values=cache, use_cache=True
    ).logits
    return argmax_token(logits)  # (batch, 1)


def _own_copy_of_step(name: str):
    """`_greedy_step` under a new code object, so Dynamo keeps this entry's compiled code apart."""
    code = _greedy_step.__code__.replace(co_name=name)
    return types.FunctionType(code, _greedy_step.__globals__, name)


def _compile_mode(device: torch.device) -> str | None:
    return "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs need CUDA


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def _cudagraph_skips() -> int:
    """Times inductor declined to capture a CUDA graph (mutated inputs, CPU tensors, ...)."""
    from torch._dynamo.utils import counters

    return counters["inductor"]["cudagraph_skips"]


def _reason(exc: BaseException) -> str:
    exc = getattr(exc, "inner_exception", None) or exc  # BackendCompilerFailed wraps the backend's error
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else 'no message'}"


@dataclass
class _Mask:
    """A preallocated (batch, 1, 1, cache) attention mask that a decode step opens one slot of."""

    tensor: torch.Tensor
    attend: bool | float  # True (sdpa's bool mask) or 0.0 (an additive float mask)
    masked: bool | float  # False or the dtype's lowest value

    def start(self, prompt: int) -> None:
        """After a prefill of `prompt` tokens: those are attended, the rest not yet."""
        self.tensor.fill_(self.masked)
        self.tensor[..., :prompt].fill_(self.attend)

    def open(self, position: torch.Tensor) -> None:
        """Let the token written at `position` (0-d, on the device) be attended: one op per step."""
        self.tensor.index_fill_(-1, position, self.attend)


def _preallocated_mask(model, cache: SharedPositionCache, batch: int, cache_len: int, device, dtype):
    """A mask the model uses as is, or None where transformers must build its own (see the docstring)."""
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else None
    config = config or model.config
    implementation = getattr(config, "_attn_implementation", None)
    if not cache.all_full_attention or not getattr(config, "is_causal", True):
        return None
    if implementation == "sdpa":
        return _Mask(torch.zeros(batch, 1, 1, cache_len, dtype=torch.bool, device=device), True, False)
    if implementation == "eager":
        lowest = torch.finfo(dtype).min
        return _Mask(torch.full((batch, 1, 1, cache_len), lowest, dtype=dtype, device=device), 0.0, lowest)
    return None


@dataclass
class _Step:
    """A step function and the static cache it runs on, for one model and one set of shapes."""

    fn: object
    cache: SharedPositionCache
    mode_used: str
    mask: _Mask | None = None  # the preallocated attention mask, for eager steps; None: transformers' own
    cudagraphs: bool = False
    fullgraph: bool | None = None
    graph_breaks: int | None = None
    fallback_reason: str | None = None
    compile_seconds: float = 0.0
    warmed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> OrderedDict[key, _Step]
_STEPS_LOCK = threading.Lock()
_COUNTER = itertools.count()


def clear_compiled() -> None:
    """Forget every kept step and cache (the next compiled run compiles again)."""
    with _STEPS_LOCK:
        _STEPS.clear()


def compiled_entries(model: nn.Module) -> int:
    with _STEPS_LOCK:
        return len(_STEPS.get(model, ()))


def _get_step(model: nn.Module, key: tuple, make) -> tuple[_Step, bool]:
    with _STEPS_LOCK:
        entries = _STEPS.setdefault(model, collections.OrderedDict())
        if key in entries:
            entries.move_to_end(key)
            return entries[key], True
        entries[key] = step = make()
        while len(entries) > MAX_STEPS_PER_MODEL:
            entries.popitem(last=False)
        return step, False


# -- running ------------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _prefill(model, ids: torch.Tensor, cache: SharedPositionCache, keep_last: bool) -> torch.Tensor:
    """Fill the cache with the prompt (batch, tokens); the (batch, 1) greedy next token."""
    positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)  # (batch, tokens)
    extra = {"logits_to_keep": 1} if keep_last else {}
    logits = model(
        input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True, **extra
    ).logits
    return argmax_token(logits)  # (batch, 1)


def _run(
    model, step: _Step, ids: torch.Tensor, max_new_tokens: int, stop_ids: list[int] | None, keep_last: bool
) -> tuple[torch.Tensor, float, float, bool]:
    """Prefill, then the shared greedy loop on the static cache; (tokens (batch, filled), prefill s,
    decode s, stopped at EOS)."""
    device = ids.device
    cache = step.cache
    mask = step.mask if step.fn is _greedy_step else None  # compiled steps build theirs in the graph
    step.cache.reset()
    start = time.perf_counter()
    first = _prefill(model, ids, cache, keep_last)  # (batch, 1); the cache's position is now the prompt's
    if mask is not None:
        mask.start(ids.shape[1])
    _sync(device)
    prefill_seconds = time.perf_counter() - start
    decode_start = time.perf_counter()

    if step.cudagraphs:

        def static_step(token: torch.Tensor) -> torch.Tensor:
            torch.compiler.cudagraph_mark_step_begin()
            return step.fn(model, token, cache, None).clone()  # the graph's output memory gets reused

    elif mask is not None:

        def static_step(token: torch.Tensor) -> torch.Tensor:
            mask.open(cache.position)  # the slot this step writes; the forward advances the position
            return step.fn(model, token, cache, mask.tensor)

    else:

        def static_step(token: torch.Tensor) -> torch.Tensor:
            return step.fn(model, token, cache, None)

    end = greedy_loop(static_step, first, max_new_tokens, stop_ids)
    _sync(device)
    return end.tokens, prefill_seconds, time.perf_counter() - decode_start, end.stopped_at_eos


def _warm_up(model, step: _Step, first_token: torch.Tensor, keep_last: bool) -> None:
    """Run WARMUP_STEPS steps on a one-token prompt: compiles (on the first call), records CUDA graphs."""
    steps = min(WARMUP_STEPS, step.cache.get_max_length() - 1)
    _run(model, step, first_token, steps + 1, None, keep_last)


def _build_and_warm(
    model, step: _Step, first_token: torch.Tensor, mode: str, backend: str, keep_last: bool
) -> None:
    """Compile (fullgraph, then with breaks, then eager as a last resort) and warm up; fills `step`."""
    if mode == "eager":
        _warm_up(model, step, first_token, keep_last)
        return
    device = first_token.device
    compile_mode = _compile_mode(device)
    start = time.perf_counter()
    reasons = []
    for fullgraph in (True, False):
        name = f"decode_step_{next(_COUNTER)}"
        step.fn = torch.compile(
            _own_copy_of_step(name), dynamic=False, fullgraph=fullgraph, mode=compile_mode, backend=backend
        )
        step.cudagraphs = compile_mode == "reduce-overhead"
        breaks_before, skips_before = _graph_breaks(), _cudagraph_skips()
        try:
            _warm_up(model, step, first_token, keep_last)
        except torch._dynamo.exc.Unsupported as exc:  # a graph break, refused under fullgraph=True
            if not fullgraph:
                reasons.append(_reason(exc))
                break
            reasons.append(f"not one graph ({_reason(exc)}); compiled with fullgraph=False")
            continue
        except Exception as exc:  # no C++ compiler, a backend error, an op Dynamo cannot run
            reasons.append(_reason(exc))
            break
        step.mode_used = f"compiled ({compile_mode or backend})"
        if step.cudagraphs and _cudagraph_skips() > skips_before:
            step.mode_used = "compiled (reduce-overhead, CUDA graphs skipped)"
            reasons.append("inductor skipped CUDA graphs for the step; TORCH_LOGS=perf_hints says why")
        step.fullgraph = fullgraph
        step.graph_breaks = _graph_breaks() - breaks_before
        step.fallback_reason = "; ".join(reasons) or None
        step.compile_seconds = time.perf_counter() - start
        return
    step.fn, step.cudagraphs, step.mode_used = _greedy_step, False, "eager"
    step.fallback_reason = "compilation failed, ran eager: " + "; ".join(reasons)
    step.compile_seconds = time.perf_counter() - start
    _warm_up(model, step, first_token, keep_last)


def _check(model, ids, max_new_tokens: int, mode: str, cache_len: int | None) -> int:
    if mode not in MODES:
        raise GenerationError(f"mode {mode!r} is not one of {', '.join(MODES)}.")
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype != torch.long:
        raise GenerationError("input_ids must be a (batch, tokens) tensor of token ids (torch.long).")
    if ids.shape[0] < 1 or ids.shape[1] < 1:
        raise GenerationError(f"input_ids of shape {tuple(ids.shape)} is empty: give at least one token.")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens must be a whole number >= 1, not {max_new_tokens!r}.")
    needed = ids.shape[1] + max_new_tokens
    limit = max_context(model)
    if limit is not None and needed > limit:
        raise GenerationError(
            f"The prompt ({ids.shape[1]} tokens) and {max_new_tokens} new tokens need {needed} positions, "
            f"but the model's context is {limit}; shorten the prompt or ask for fewer tokens."
        )
    cache_len = needed if cache_len is None else cache_len
    if cache_len < needed:
        raise GenerationError(
            f"The prompt ({ids.shape[1]} tokens) and {max_new_tokens} new tokens need a cache of {needed}, "
            f"but the static cache holds {cache_len}."
        )
    return cache_len


@torch.inference_mode()
def decode(
    model: nn.Module,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    mode: str = "eager",
    eos_token_id: int | list[int] | None = None,
    cache_len: int | None = None,
    backend=None,
) -> DecodeResult:
    """Greedy decode of `input_ids` (batch, tokens) with a static cache; see the module docstring.

    `eos_token_id` stops a sequence at that token (excluded from the result; the run ends when every
    sequence has stopped); None decodes exactly `max_new_tokens`, without a host sync per token (what
    benchmarks want). `cache_len` (default prompt + max_new_tokens) sizes the static cache: a shared size
    lets runs with different prompts reuse one compiled step. `backend` is torch.compile's (default
    DEFAULT_BACKEND; "eager" and "aot_eager" trace without generating code: quick checks of graph breaks).
    """
    cache_len = _check(model, input_ids, max_new_tokens, mode, cache_len)
    backend = backend or DEFAULT_BACKEND
    parameter = next(model.parameters())
    device = parameter.device
    ids = input_ids.to(device)
    float_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), parameter.dtype)
    key = (mode, backend, ids.shape[0], cache_len, str(device), float_dtype)

    def make() -> _Step:
        cache = SharedPositionCache(model.config, cache_len, device)
        mask = _preallocated_mask(model, cache, ids.shape[0], cache_len, device, float_dtype)
        return _Step(_greedy_step, cache, "eager", mask=mask)

    step, reused = _get_step(model, key, make)
    keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
    eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    with step.lock:  # one run at a time on a step's cache (Streamlit sessions are threads)
        compiled_here = not step.warmed
        if not step.warmed:
            _build_and_warm(model, step, ids[:, :1], mode, backend, keep_last)
            step.warmed = True
        tokens, prefill_seconds, decode_seconds, stopped = _run(
            model, step, ids, max_new_tokens, eos, keep_last
        )
    rows = []
    for row in tokens.cpu().tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        rows.append(tuple(row[:cut]))
    return DecodeResult(
        token_ids=tuple(rows),
        prompt_tokens=int(ids.shape[1]),
        prefill_seconds=prefill_seconds,
        decode_seconds=decode_seconds,
        mode=mode,
        mode_used=step.mode_used,
        compile_seconds=step.compile_seconds if compiled_here and mode == "compiled" else 0.0,
        fallback_reason=step.fallback_reason,
        graph_breaks=step.graph_breaks,
        fullgraph=step.fullgraph,
        cache_len=cache_len,
        reused=reused,
        stopped_at_eos=stopped,
    )


def decode_text(
    model: nn.Module,
    tokenizer,
    prompt: str,
    max_new_tokens: int = 48,
    mode: str = "eager",
    chat: bool = False,
    stop_at_eos: bool = True,
    cache_len: int | None = None,
) -> DecodeResult:
    """`decode` of a text prompt (chat template when `chat` and the tokenizer has one), with its text."""
    ids = encode_prompt(tokenizer, prompt, chat, max_context(model))  # (1, tokens)
    eos = tokenizer.eos_token_id if stop_at_eos else None
    result = decode(model, ids, max_new_tokens, mode, eos, cache_len)
    text = tokenizer.decode(list(result.token_ids[0]), skip_special_tokens=True)
    return dataclasses.replace(result, text=text)
