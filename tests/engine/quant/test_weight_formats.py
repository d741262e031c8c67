"""One name for any format (engine.quant.weight_formats): our schemes and llama.cpp's GGUF block types
parse from their labels and quantize, fit-check and price through the same calls."""

from __future__ import annotations

import math

import pytest
import torch

from engine.analysis.outliers import _sqnr_under
from engine.quant import gguf
from engine.quant.metrics import sqnr_db
from engine.quant.primitives import fake_quantize
from engine.quant.schemes import QuantScheme, parse_label
from engine.quant.weight_formats import (
    bits_per_weight_of,
    check_fits,
    chunks_by_row,
    fake_quantize_any,
    parse_format,
)


@pytest.mark.parametrize("label", ["Q4_K", "q4_k", "GGUF Q4_K", " gguf q4_k "])
def test_gguf_names_parse_to_the_type(label):
    assert parse_format(label) is gguf.Q4_K


def test_scheme_labels_parse_as_before():
    assert parse_format("mxfp4") == parse_label("mxfp4")
    assert parse_format("int4 g64") == QuantScheme(4, "int", True, "group", 64)
    with pytest.raises(ValueError, match="cannot read"):
        parse_format("Q4_Z")


def test_one_call_for_either_kind():
    w = torch.randn(8, 512, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fake_quantize_any(w, gguf.Q4_K), gguf.fake_quantize(w, gguf.Q4_K))
    nvfp4 = parse_label("nvfp4")
    assert torch.equal(fake_quantize_any(w, nvfp4), fake_quantize(w, nvfp4))
    assert bits_per_weight_of(gguf.Q4_K, w.shape) == 4.5
    assert bits_per_weight_of(nvfp4, w.shape) == pytest.approx(4.5 + 32 / w.numel())
    check_fits(gguf.Q4_0, (3, 576))
    with pytest.raises(ValueError, match="super-blocks of 256"):
        check_fits(gguf.Q4_K, (3, 576))
    with pytest.raises(ValueError, match="has none"):
        check_fits(gguf.Q8_0, (0, 32))
    with pytest.raises(TypeError):
        fake_quantize_any(w, "Q4_K")  # text becomes a type at the edge, with parse_format


def test_row_chunks_only_where_every_block_stays_in_its_row():
    assert chunks_by_row(gguf.Q4_K) and chunks_by_row(parse_label("mxfp4"))
    assert not chunks_by_row(parse_label("nvfp4"))  # one FP32 scale for the whole tensor
    assert not chunks_by_row(QuantScheme(8, "int", True, "tensor"))
    assert not chunks_by_row(parse_label("fp8_e4m3 block128"))  # a tile spans 128 rows


def test_sensitivity_measures_a_gguf_type_and_nvfp4_as_a_whole_tensor():
    """The Outliers ranking chunks big tensors by rows; NVFP4's tensor scale must see the whole tensor."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 1536, generator=g)
    x[500:] *= 50  # a chunk far louder than the rest: a per-chunk tensor scale would differ
    nvfp4 = parse_label("nvfp4")
    value, note = _sqnr_under(x, nvfp4)
    assert note == "" and value == pytest.approx(sqnr_db(x, fake_quantize(x, nvfp4)), abs=1e-3)
    value, note = _sqnr_under(x, gguf.Q4_K)
    assert value == pytest.approx(sqnr_db(x, gguf.fake_quantize(x, gguf.Q4_K)), abs=1e-3)
    value, note = _sqnr_under(x[:, :576], gguf.Q4_K)
    assert math.isnan(value) and "256" in note
