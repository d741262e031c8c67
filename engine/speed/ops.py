"""Counting what a piece of code asks of the device: aten ops dispatched, kernels launched, host reads.

On a GPU every aten op that computes is one kernel launch (5-10 µs of host time at batch 1, more than a
small kernel runs), and every host read (`.item()`, `int(t)`, `bool(t)`, `.tolist()`, `.cpu()` of a
device tensor) waits for the queue to drain. Both can be counted on a CPU, where the same Python runs the
same ops: `count_ops` records every aten op dispatched below a TorchDispatchMode, so the counts here are
what a GPU would be asked to launch, measured without one.

- `ops`: every aten op dispatched;
- `launches`: those that compute (views, reshapes that alias, detach and other metadata-only ops are
  free on any device and are left out);
- `host_reads`: ops that copy a value to the host and so synchronize a GPU (`_local_scalar_dense` and
  the like, and copies whose destination is the CPU while the source is not).

Python-only work (a dict lookup, an `isinstance`) is not counted: time it (engine.speed.timing).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_HOST_READS = {
    "aten._local_scalar_dense.default",
    "aten.item.default",
    "aten.is_nonzero.default",
    "aten.equal.default",
}


def _is_view(func) -> bool:
    """An op whose result aliases an input without writing it: a view, no kernel on any device."""
    schema = func._schema
    if schema.is_mutable:
        return False
    return any(r.alias_info is not None for r in schema.returns)


def _is_host_copy(func, args, kwargs) -> bool:
    name = str(func)
    if name.startswith("aten._to_copy") or name.startswith("aten.to."):
        device = (kwargs or {}).get("device")
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        return (
            source is not None
            and source.device.type != "cpu"
            and device is not None
            and (torch.device(device).type == "cpu")
        )
    if name.startswith("aten.copy_"):
        dest, source = args[0], args[1]
        return dest.device.type == "cpu" and source.device.type != "cpu"
    return False


@dataclass
class OpCounts:
    by_name: collections.Counter = field(default_factory=collections.Counter)  # every op, by aten name
    launches: int = 0  # ops that compute (not views)
    host_reads: int = 0  # ops that copy a value to the host

    @property
    def ops(self) -> int:
        return sum(self.by_name.values())

    def launched(self) -> dict[str, int]:
        """The computing ops by name, most frequent first (views left out)."""
        return dict(self._launched.most_common())

    _launched: collections.Counter = field(default_factory=collections.Counter, repr=False)

    def __sub__(self, other: OpCounts) -> OpCounts:
        by_name, launched = self.by_name.copy(), self._launched.copy()
        by_name.subtract(other.by_name)
        launched.subtract(other._launched)
        return OpCounts(
            collections.Counter({k: v for k, v in by_name.items() if v}),
            self.launches - other.launches,
            self.host_reads - other.host_reads,
            collections.Counter({k: v for k, v in launched.items() if v}),
        )


class _Counter(TorchDispatchMode):
    def __init__(self, counts: OpCounts) -> None:
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        counts = self.counts
        counts.by_name[name] += 1
        out = func(*args, **(kwargs or {}))
        if not (_is_view(func) and _aliases_input(out, args)):  # `to`, `contiguous`, `reshape` may copy
            counts.launches += 1
            counts._launched[name] += 1
        if name in _HOST_READS or _is_host_copy(func, args, kwargs):
            counts.host_reads += 1
        return out


def _aliases_input(out, args) -> bool:
    """Whether an op that may alias returned a view of its first input (no kernel) or a new tensor."""
    first = args[0] if args else None
    results = out if isinstance(out, (tuple, list)) else (out,)
    if not isinstance(first, torch.Tensor) or not results or not isinstance(results[0], torch.Tensor):
        return True
    try:
        return results[0].untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return True


def count_ops(fn: Callable[[], object]) -> OpCounts:
    """Run `fn()` once and count the aten ops it dispatched (see the module docstring)."""
    counts = OpCounts()
    with _Counter(counts):
        fn()
    return counts
