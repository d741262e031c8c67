"""One packed block, byte by byte: GGUF blocks read back exactly as llama.cpp reads them, and microscaling
blocks laid out as GGUF holds them decode to exactly our dequantized values."""

from __future__ import annotations

import itertools

import numpy
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from engine.analysis.packed_blocks import gguf_block, mx_block, read_gguf_block, sub_block_size
from engine.quant.gguf import GGUF_TYPES, dequantize, quantize
from engine.quant.primitives import quantize as mx_quantize
from engine.quant.schemes import QuantScheme


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    values = torch.randn(3, 512, generator=torch.Generator().manual_seed(0))
    values[1, 7] = 9.0  # an outlier in one block
    return values


@pytest.mark.parametrize("name", list(GGUF_TYPES))
def test_gguf_block_bytes_read_back_exactly_as_dequantize(x, name):
    t = GGUF_TYPES[name]
    packed = quantize(x, t)
    reference = dequantize(packed, t, x.shape).reshape(-1, t.block_size)  # (blocks, block_size)
    raw_blocks = packed.reshape(-1, t.type_size)
    for index in range(raw_blocks.shape[0]):
        block = read_gguf_block(raw_blocks[index], t)
        values = block.values()
        assert torch.equal(values, reference[index])
        size = sub_block_size(t)
        assert block.sub_size == size and block.scale.numel() == t.block_size // size
        for sub in range(block.scale.numel()):  # every value sits on its sub-block's decoded levels
            assert torch.isin(values[sub * size : (sub + 1) * size], block.levels(sub)).all()
    starts = [(f.start, f.stop) for f in block.fields]
    assert starts[0][0] == 0 and starts[-1][1] == t.type_size
    assert all(stop == start for (_, stop), (start, _) in itertools.pairwise(starts))  # tiles the block


def test_q4_k_sub_block_levels_are_scale_times_code_minus_min(x):
    t = GGUF_TYPES["Q4_K"]
    block = gguf_block(x[0, :256], t)
    assert block.raw.numel() == 144 and block.scale.numel() == 8
    levels = block.levels(3)
    assert levels.numel() == 16
    assert torch.equal(levels, block.scale[3] * torch.arange(16.0) - block.minimum[3])
    assert {f.holds.split(" (")[0] for f in block.fields} >= {
        "super-block scale d",
        "super-block min scale dmin",
    }
    with pytest.raises(ValueError, match="holds 256 values"):
        gguf_block(x[0, :32], t)


@pytest.mark.parametrize(
    ("label", "nbytes"), [("mxfp4", 17), ("nvfp4", 9), ("mxfp6_e2m3", 25), ("mxfp8_e4m3", 33)]
)
def test_microscaling_block_bytes_decode_to_the_dequantized_values(x, label, nbytes):
    scheme = QuantScheme.from_label(label)
    qt = mx_quantize(x, scheme)
    reference = qt.dequantize().reshape(-1, scheme.group_size)
    for index in range(reference.shape[0]):
        block = mx_block(qt, index)
        assert block.raw.numel() == nbytes
        assert torch.equal(block.values(), reference[index])
    assert block.fields[0].holds.startswith("block scale")
    assert (block.fields[-1].start is None) == (label == "nvfp4")  # NVFP4's tensor scale lives outside


def test_mxfp4_bytes_are_a_ggml_block_mxfp4(x):
    """gguf's own reader (llama.cpp's layout) gets our values back from our 17 bytes."""
    qt = mx_quantize(x, QuantScheme.from_label("mxfp4"))
    raw = torch.stack([mx_block(qt, i).raw for i in range(qt.scale.numel())]).numpy()
    theirs = gguf_dequantize(raw, GGMLQuantizationType.MXFP4).reshape(-1)
    assert numpy.array_equal(theirs, qt.dequantize().reshape(-1).numpy())


def test_nvfp4_bytes_are_a_quarter_of_a_ggml_block_nvfp4(x):
    """Four of our blocks, scales first, make one GGUF NVFP4 block; gguf reads the E4M3-scaled values."""
    qt = mx_quantize(x, QuantScheme.from_label("nvfp4"))
    blocks = [mx_block(qt, i).raw for i in range(qt.scale.numel())]
    supers = [
        torch.cat([torch.stack([b[0] for b in group]), *[b[1:] for b in group]])
        for group in (blocks[i : i + 4] for i in range(0, len(blocks), 4))
    ]
    theirs = torch.from_numpy(
        gguf_dequantize(torch.stack(supers).numpy(), GGMLQuantizationType.NVFP4).reshape(-1)
    )
    ours = qt.dequantize().reshape(-1)
    assert torch.allclose(theirs * qt.tensor_scale, ours, rtol=1e-6, atol=0)
