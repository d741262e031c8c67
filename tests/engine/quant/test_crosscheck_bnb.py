"""Cross-check NF4 / FP4 against bitsandbytes' own CPU implementation (bitsandbytes is a pinned requirement)."""

import bitsandbytes.functional as bnb_functional
import pytest
import torch

from engine.quant.metrics import sqnr_db
from engine.quant.primitives import fake_quantize, pack_int4, quantize
from engine.quant.schemes import QuantScheme

pytestmark = pytest.mark.usefixtures("single_thread")


BLOCKSIZE = 64


def _bnb_scheme(quant_type: str, double_quant: bool = False) -> QuantScheme:
    return QuantScheme(
        4,
        quant_type,
        granularity="group",
        group_size=BLOCKSIZE,
        scale_dtype="float32",
        double_quant=double_quant,
    )


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    return torch.randn(192, 576, generator=torch.Generator().manual_seed(0)) * 0.02


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_codes_absmax_and_values_match_bitsandbytes(weight, quant_type, dtype):
    x = weight.to(dtype)
    packed, state = bnb_functional.quantize_4bit(x, blocksize=BLOCKSIZE, quant_type=quant_type)
    qt = quantize(x, _bnb_scheme(quant_type))
    assert torch.equal(qt.scale.reshape(-1), state.absmax)  # fp32 absmax per block of 64
    assert torch.equal(pack_int4(qt.codes), packed.reshape(-1))  # same codes, same nibble order
    theirs = bnb_functional.dequantize_4bit(packed, state)
    assert theirs.dtype == dtype
    assert torch.equal(qt.dequantize(), theirs)
    assert torch.equal(fake_quantize(x, _bnb_scheme(quant_type)), theirs)


def test_codebooks_match_bitsandbytes():
    from engine.quant.formats import codebook

    for quant_type in ("nf4", "fp4"):
        theirs = bnb_functional.get_4bit_type(quant_type, device="cpu")
        assert torch.equal(codebook(quant_type), theirs)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_double_quant_is_as_accurate_as_bitsandbytes(weight, quant_type):
    """Same layout as bnb's compress_statistics, different 8-bit scale grid: errors must be alike."""
    packed, state = bnb_functional.quantize_4bit(
        weight, blocksize=BLOCKSIZE, quant_type=quant_type, compress_statistics=True
    )
    assert state.nested and state.state2.blocksize == 256
    theirs = bnb_functional.dequantize_4bit(packed, state)
    ours = quantize(weight, _bnb_scheme(quant_type, double_quant=True))
    exact = bnb_functional.dequantize_4bit(
        *bnb_functional.quantize_4bit(weight, blocksize=BLOCKSIZE, quant_type=quant_type)
    )
    reference_db = sqnr_db(weight, exact)
    assert sqnr_db(weight, theirs) > reference_db - 0.1
    assert sqnr_db(weight, ours.dequantize()) > sqnr_db(weight, theirs) - 0.05
    n_blocks = weight.numel() // BLOCKSIZE
    assert ours.scale_quant.codes.numel() == state.absmax.numel() == n_blocks  # one 8-bit code per block
    assert ours.scale_quant.block_scale.numel() == state.state2.absmax.numel()  # one fp32 per 256 blocks
