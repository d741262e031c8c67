"""How many bytes a model or a decode step moves, and how fast this device copies them.

`measure_bandwidth` is the roofline's denominator: a large tensor copy, each byte read once and written
once, over its kernel time (engine.speed.timing: a CUDA-graph replay on a GPU, so no host round trip is
counted as memory time). `model_weight_bytes` counts what a model really stores (parameters, buffers and what bitsandbytes
keeps beside them); `weight_read_bytes` is what one decode step reads of it.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.sizing.estimate import measured_bytes
from engine.speed.timing import two_figures


def measure_bandwidth(device: str = "cpu", nbytes: int | None = None, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy (each byte read once and written once), over its median kernel time
    of `repeats`."""
    nbytes = nbytes or (1 << 30 if device.startswith("cuda") else 256 << 20)
    source = torch.ones(nbytes, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    figures = two_figures(lambda: target.copy_(source), None, device, repeats=repeats, warmup=1, per_sample=1)
    return 2 * nbytes / figures.kernel_seconds


def float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (what its activations and cache use)."""
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _bnb_side_bytes(model: nn.Module) -> int:
    """Bytes bitsandbytes keeps beside its layers' weight parameters, which parameters and buffers miss:
    4-bit quantization states (absmax, codebook, nested statistics) and int8 row scales (SCB)."""
    total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        state = getattr(weight, "quant_state", None)
        tensors = [getattr(weight, "SCB", None)]
        while state is not None:
            tensors += [v for v in vars(state).values() if isinstance(v, torch.Tensor)]
            state = getattr(state, "state2", None)
        total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    return total


def model_weight_bytes(model: nn.Module) -> int:
    """Measured bytes of parameters and buffers, plus what bitsandbytes keeps beside them."""
    return sum(measured_bytes(model).values()) + _bnb_side_bytes(model)


def weight_read_bytes(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: all of them, except the input embedding table (one row is
    read) unless it is tied to the output head, which reads all of it."""
    total = model_weight_bytes(model)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = (
        head is not None
        and getattr(head, "weight", None) is not None
        and head.weight.data_ptr() == embedding.data_ptr()
    )
    return total if tied else total - embedding.numel() * embedding.element_size()
