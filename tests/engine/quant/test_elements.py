"""The element-format registry: every format round-trips, the registry is the only name -> behaviour map."""

import ast
from pathlib import Path

import pytest
import torch

from engine.quant import elements, formats
from engine.quant.elements import ELEMENTS, Codebook, FloatElement, IntGrid, element, register
from engine.quant.metrics import sqnr_db
from engine.quant.primitives import fake_quantize, quantize
from engine.quant.schemes import QuantScheme

pytestmark = pytest.mark.usefixtures("single_thread")


def _every_scheme() -> list[QuantScheme]:
    """Each registered format at each width it allows, symmetric and (where it has one) with a zero point."""
    schemes = []
    for name, fmt in ELEMENTS.items():
        for bits in fmt.bits:
            schemes.append(QuantScheme(bits, name, True, "group", 64))
            if fmt.takes_zero_point:
                schemes.append(QuantScheme(bits, name, False, "group", 64))
                schemes.append(QuantScheme(bits, name, False, "group", 64, zero_kind="float"))
    return schemes


@pytest.mark.parametrize("scheme", _every_scheme(), ids=str)
def test_every_registered_format_round_trips(scheme):
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))  # (rows, in_features)
    qt = quantize(x, scheme)
    assert qt.codes.dtype == formats.code_dtype(scheme)
    restored = qt.dequantize()
    assert torch.equal(restored, fake_quantize(x, scheme))  # the fused path is bit-identical
    floor = 3.0 * scheme.bits - 4  # int2 g64 is ~2.9 dB, int8 ~44, nf4 ~21, fp4 ~18, fp8_e5m2 ~26
    assert sqnr_db(x, restored) > floor, scheme.label
    if not scheme.has_zero_point:  # every value is a grid value times its block's scale
        levels = formats.grid_values(scheme)
        on_grid = restored.view(-1, 64) / qt.scale.float().view(-1, 1)  # (blocks, 64)
        near = torch.isclose(on_grid.unsqueeze(-1), levels, rtol=1e-6, atol=1e-7)  # (blocks, 64, levels)
        assert near.any(dim=-1).all()  # the division back to scale 1 may miss a level by an ulp
        decoded = formats.decode(formats.all_codes(scheme), torch.tensor(1.0), None, scheme)
        assert torch.equal(torch.unique(decoded), torch.unique(levels))  # all_codes covers the grid


def test_families_and_derived_scheme_facts():
    assert isinstance(ELEMENTS["int"], IntGrid)
    assert {n for n, f in ELEMENTS.items() if isinstance(f, Codebook)} == {"nf4", "fp4"}
    assert {n for n, f in ELEMENTS.items() if isinstance(f, FloatElement)} == set(formats.FP8_DTYPES)
    assert QuantScheme(4).is_int and not QuantScheme(4).is_codebook
    assert QuantScheme(4, "nf4").is_codebook and not QuantScheme(4, "nf4").is_int
    assert QuantScheme(8, "fp8_e5m2").is_fp8 and QuantScheme(8, "fp8_e5m2").element is ELEMENTS["fp8_e5m2"]


def test_unknown_names_give_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown format 'int3'; choose one of int, nf4, fp4, fp8_e4m3"):
        element("int3")
    with pytest.raises(ValueError, match="unknown format 'bogus'; choose one of int, nf4"):
        QuantScheme(4, "bogus")
    with pytest.raises(ValueError, match="unknown format"):
        element(["nf4"])  # unhashable
    with pytest.raises(ValueError, match="'fp8_e4m3' has no codebook; codebooks exist for nf4 and fp4"):
        formats.codebook("fp8_e4m3")
    with pytest.raises(ValueError, match="already registered"):
        register(Codebook("nf4", elements.NF4_VALUES))
    with pytest.raises(ValueError, match="2, 4, ..., 256"):
        Codebook("five", (-1.0, -0.5, 0.0, 0.5, 1.0))
    with pytest.raises(ValueError, match="8-bit float dtype"):
        FloatElement("fp16", torch.float16)


TOY_VALUES = (-1.0, -0.6, -0.3, -0.1, 0.0, 0.2, 0.5, 1.0)  # an 8-entry (3-bit) codebook, sorted


@pytest.fixture
def toy(monkeypatch):
    """A toy 3-bit codebook registered only in ELEMENTS: no other file knows its name."""
    fmt = Codebook("toy3", TOY_VALUES)
    monkeypatch.setitem(ELEMENTS, "toy3", fmt)
    return fmt


def test_registering_a_codebook_is_all_it_takes(toy):
    scheme = QuantScheme(3, "toy3", granularity="group", group_size=32)
    assert scheme.is_codebook and not scheme.has_zero_point and scheme.label == "toy3 g32"
    assert QuantScheme.from_label("toy3-g32") == scheme
    with pytest.raises(
        ValueError, match=r"toy3 is an 8-value \(3-bit\) codebook, so it takes 3 bits \(got 4\)"
    ):
        QuantScheme(4, "toy3")
    with pytest.raises(ValueError, match="pick a symmetric range"):
        QuantScheme(3, "toy3", symmetric=False)

    x = torch.randn(16, 128, generator=torch.Generator().manual_seed(1))  # (rows, in_features)
    qt = quantize(x, scheme)
    assert qt.codes.dtype == torch.uint8 and int(qt.codes.max()) < 8
    scale = qt.scale.float().repeat_interleave(32, dim=-1)  # (16, 128), like x
    s = (x * (1.0 / scale)).clamp(-1, 1)
    table = torch.tensor(TOY_VALUES)
    nearest = (s.unsqueeze(-1) - table).abs().argmin(dim=-1)  # (16, 128) index into the table
    expected = table[nearest] * scale
    fake = fake_quantize(x, scheme)
    assert torch.equal(fake, expected)
    assert torch.equal(qt.dequantize(), fake)
    assert torch.equal(qt.codes.long(), nearest)  # sorted table: index order is value order
    assert torch.equal(formats.grid_values(scheme), table)


def test_elements_does_not_import_schemes():
    tree = ast.parse(Path(elements.__file__).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    assert not any(name and name.startswith("engine") for name in imported), imported
