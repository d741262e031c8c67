"""Prior-grid detection on synthetic weights: quantized ones are found, full-precision ones are not."""

import time

import pytest
import torch

from engine.analysis.priorgrid import PriorGrid, detect_prior_grid
from engine.quant.primitives import fake_quantize
from engine.quant.schemes import QuantScheme

pytestmark = pytest.mark.usefixtures("single_thread")


def _weight(rows=1536, cols=576, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.02


def _q(label, w=None):
    return fake_quantize(_weight() if w is None else w, QuantScheme.from_label(label))


def _llama_cpp_q4_1(w: torch.Tensor) -> torch.Tensor:
    """llama.cpp Q4_1 reference: per block of 32, d = (max - min) / 15, m = min, x = d * q + m."""
    blocks = w.reshape(-1, 32)
    lo, hi = blocks.amin(dim=1, keepdim=True), blocks.amax(dim=1, keepdim=True)
    d = ((hi - lo) / 15).half().float()
    m = lo.half().float()
    q = torch.round((blocks - m) / d).clamp(0, 15)
    return (d * q + m).reshape(w.shape)


def test_int4_asym_g32_is_detected():
    grid = detect_prior_grid(_q("int4 asym g32"))
    assert isinstance(grid, PriorGrid)
    assert grid.detected and grid.bits == 4 and grid.group_size == 32 and grid.affine
    assert grid.max_distinct_per_block[32] <= 16
    assert "at most" in grid.description and "block of 32" in grid.description and "4-bit" in grid.description


def test_gaussian_is_not_detected():
    for w in (_weight(), _weight().bfloat16().float(), _weight().half().float()):
        grid = detect_prior_grid(w)
        assert not grid.detected and grid.bits is None and grid.group_size is None
        assert grid.max_distinct_per_block[32] == 32
        assert "not on a low-bit grid" in grid.description


def test_llama_cpp_q4_1_is_named():
    grid = detect_prior_grid(_llama_cpp_q4_1(_weight()))
    assert grid.detected and grid.bits == 4 and grid.group_size == 32 and grid.affine
    assert "Q4_1" in grid.description


@pytest.mark.parametrize(
    ("label", "bits", "group_size", "affine", "codebook"),
    [
        ("int4 g64", 4, 64, True, None),
        ("int3 asym g32", 3, 32, True, None),
        ("int2 g32", 2, 32, True, None),
        ("int4 channel", 4, 576, True, None),
        ("nf4 g64 scale_fp32", 4, 64, False, "nf4"),
        ("fp4 g32", 4, 32, False, "fp4"),
        ("int8 channel", 8, 576, True, None),
        ("int8 g32", 8, 32, True, None),
        ("int8 asym g32", 8, 32, True, None),
        ("int6 g64", 6, 64, True, None),
    ],
)
def test_grids_are_identified(label, bits, group_size, affine, codebook):
    grid = detect_prior_grid(_q(label))
    assert (grid.detected, grid.bits, grid.group_size, grid.affine, grid.codebook) == (
        True,
        bits,
        group_size,
        affine,
        codebook,
    )


def test_largest_tried_block_and_odd_shapes():
    wide = _weight(256, 1024)
    grid = detect_prior_grid(_q("int4 asym g128", wide))
    assert grid.detected and grid.group_size == 128 and grid.max_distinct_per_block[128] <= 16
    assert detect_prior_grid(_q("int4 g256", wide)).group_size == 128  # 256 is not tried: a lower bound
    vector = _q("int4 g32", _weight(1, 96)).reshape(96)
    assert detect_prior_grid(vector).group_size == 32
    assert not detect_prior_grid(torch.randn(7, 10)).detected  # no tried size divides 10: rows only
    with pytest.raises(ValueError, match="non-empty tensor"):
        detect_prior_grid(torch.tensor(1.0))


def test_fast_enough_for_a_1536_by_576_tensor():
    # One thread: two OpenMP threads on a machine shared with other jobs can stall 10x on barriers,
    # which would make this guard flaky without saying anything about our code.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for w in (_weight(), _q("int4 asym g32")):
            detect_prior_grid(w)
            best = min(_timed(detect_prior_grid, w) for _ in range(5))
            assert best < 0.15  # ~10 ms (full precision) / ~45 ms (detected) on one core
    finally:
        torch.set_num_threads(threads)


def _timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


@pytest.mark.slow
def test_real_q4_1_and_q8_0_weights_of_the_default_gguf():
    """SmolLM2-135M ships as Q4_1 (linear layers) with a Q8_0 token embedding: both must be found."""
    import gguf  # a pinned requirement: transformers reads GGUF files with it
    from gguf.quants import dequantize

    from engine.models.sources import default_gguf_path  # setup always installs the default model

    reader = gguf.GGUFReader(default_gguf_path())
    by_name = {t.name: t for t in reader.tensors}
    for name, kind, bits in (("blk.0.ffn_gate.weight", "Q4_1", 4), ("blk.0.attn_k.weight", "Q4_1", 4)):
        tensor = by_name[name]
        assert tensor.tensor_type.name == kind
        weight = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy())
        grid = detect_prior_grid(weight)
        assert (grid.detected, grid.bits, grid.group_size, grid.affine) == (True, bits, 32, True)
        assert "Q4_1" in grid.description
    embedding = by_name["token_embd.weight"]
    assert embedding.tensor_type.name == "Q8_0"
    rows = torch.from_numpy(dequantize(embedding.data[:2048], embedding.tensor_type).copy())  # 2048 tokens
    grid = detect_prior_grid(rows)
    assert (grid.detected, grid.bits, grid.group_size) == (True, 8, 32) and "Q8_0" in grid.description
