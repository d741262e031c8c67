"""Forward and pre-forward hooks as context managers that always unhook, even when the forward raises.

Every statistics collector, calibration pass and capture in the engine registers hooks through these, so
a failed or cut-short forward (the `StopForward` trick of the GPTQ reference's `Catcher`) never leaves a
hook behind on the shared reference model.

    with pre_hooks((linear, record) for linear in linears):
        model(ids)

    with pre_hooks([(layers[0], catch)], with_kwargs=True), suppress(StopForward):
        model(ids)  # catch raises StopForward once it has the inputs
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import nn
from torch.utils.hooks import RemovableHandle


class StopForward(Exception):  # noqa: N818  (a signal, not an error)
    """Raised by a hook to cut a forward short once it has what it needs."""


@contextmanager
def _hooks(register: str, pairs: Iterable[tuple[nn.Module, Callable]], **kwargs) -> Iterator[list]:
    handles: list[RemovableHandle] = []
    try:
        for module, hook in pairs:
            handles.append(getattr(module, register)(hook, **kwargs))
        yield handles
    finally:
        for handle in handles:
            handle.remove()


def forward_hooks(pairs: Iterable[tuple[nn.Module, Callable]], **kwargs) -> Iterator[list]:
    """`hook(module, args, output)` on each (module, hook) while the block runs."""
    return _hooks("register_forward_hook", pairs, **kwargs)


def pre_hooks(pairs: Iterable[tuple[nn.Module, Callable]], **kwargs) -> Iterator[list]:
    """`hook(module, args)` (or `(module, args, kwargs)` with `with_kwargs=True`) before each forward."""
    return _hooks("register_forward_pre_hook", pairs, **kwargs)
