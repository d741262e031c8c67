"""Importance-weighted GGUF quantization (engine.quant.gguf `quantize(x, t, importance)`) against llama.cpp.

- Bytes: with an importance vector, our bytes must hash to the bytes of llama.cpp's own importance-weighted
  C quantizers (`quantize_q2_K` ... `quantize_q5_1` with quant_weights != NULL, i.e. `quantize_row_*_impl`
  and `make_qx_quants` / `make_qkx3_quants` / `make_qp_quants` from ggml/src/ggml-quants.c, commit 01243c5),
  compiled with gcc -O2 -ffp-contract=off and run on the same float32 rows and importance (`importance_for`,
  an integer hash with zero channels, so no RNG or libm enters the inputs).
- Purpose: on real default-model weights and a real importance matrix (collected on a Britannica window),
  weighting lowers the importance-weighted squared error for every type that takes it; Q8_0 ignores it.
- Bad importance vectors are refused with what is wrong.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from engine.methods.imatrix import collect_importance
from engine.models.data import WindowSpec, load_text, token_windows
from engine.quant.gguf import GGUF_TYPES, Q4_K, Q8_0, WEIGHTED, fake_quantize, quantize
from tests.engine.quant.test_gguf_blocks import deterministic_synthetic

pytestmark = pytest.mark.usefixtures("single_thread")

# sha256 (first 16 hex digits) of llama.cpp's importance-weighted C bytes (see the module docstring).
C_WEIGHTED_SYNTHETIC = {
    "Q2_K": "9b91952d812f0232",
    "Q3_K": "abeebee945fd4fa8",
    "Q4_K": "dbf3e8c5f5e89dd8",
    "Q5_K": "556111967805fda4",
    "Q6_K": "7b3a6efb0a906c92",
    "Q4_0": "c1e40b2a7e8a0028",
    "Q4_1": "a5693dec2fefde6f",
    "Q5_0": "95cc90557678c274",
    "Q5_1": "0daf45974981e8ea",
}
C_WEIGHTED_DOWN_PROJ_0 = {  # its first 64 rows
    "Q2_K": "8fea379e468cc758",
    "Q3_K": "9c8f55c60c504be0",
    "Q4_K": "2f9a7e32329ce00a",
    "Q5_K": "cfebc48bd398cf48",
    "Q6_K": "b42cec6c16945c20",
    "Q4_0": "c51b3ac741b40da4",
    "Q4_1": "dfa8a20f3d00710f",
    "Q5_0": "d76c80d1a5ef7993",
    "Q5_1": "681c8becc20cd543",
}
WEIGHTED_NAMES = list(C_WEIGHTED_SYNTHETIC)


def importance_for(cols: int) -> torch.Tensor:
    """A deterministic, heavy-tailed importance vector with every 97th channel 0. Must stay bit-identical."""
    j = torch.arange(cols, dtype=torch.int64)
    u = ((j * 40503) % 997).to(torch.float32) / 997
    imp = u * u * u * 5 + 0.01
    imp[::97] = 0.0
    return imp


def hash16(packed: torch.Tensor) -> str:
    return hashlib.sha256(packed.numpy().tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def layer0(default_loaded):
    """Layer 0's down projection (576 x 1536) and its importance on one Britannica calibration window."""
    ids = token_windows(default_loaded.tokenizer, load_text("britannica"), WindowSpec(128, 1))
    matrix = collect_importance(default_loaded.model, ids)
    name = "model.layers.0.mlp.down_proj"
    return default_loaded.model.get_submodule(name).weight.detach().float(), matrix[name]


def test_every_type_but_q8_0_has_a_weighted_path():
    assert {t.name for t in WEIGHTED} == set(WEIGHTED_NAMES)
    assert Q8_0 not in WEIGHTED


@pytest.mark.parametrize("name", WEIGHTED_NAMES)
def test_weighted_bytes_equal_llama_cpp_on_synthetic_rows(name):
    x = deterministic_synthetic()
    assert hash16(quantize(x, GGUF_TYPES[name], importance_for(x.shape[-1]))) == C_WEIGHTED_SYNTHETIC[name]


@pytest.mark.parametrize("name", WEIGHTED_NAMES)
def test_weighted_bytes_equal_llama_cpp_on_default_model(layer0, name):
    w = layer0[0][:64]
    assert hash16(quantize(w, GGUF_TYPES[name], importance_for(w.shape[-1]))) == C_WEIGHTED_DOWN_PROJ_0[name]


@pytest.mark.parametrize("name", WEIGHTED_NAMES)
def test_weighting_lowers_the_importance_weighted_error(layer0, name):
    """sum_j imp_j * (w_ij - w_hat_ij)^2 (the output error's diagonal part) on 64 real rows, real imatrix.
    The model was shipped as Q4_1: its weights sit on the Q4_1 grid, which the weighted search finds again."""
    w, imp = layer0
    w = w[:64]
    t = GGUF_TYPES[name]
    plain = (((fake_quantize(w, t) - w) ** 2) * imp).sum()
    weighted = (((fake_quantize(w, t, imp) - w) ** 2) * imp).sum()
    if name == "Q4_1":
        assert plain == 0 and weighted == 0
    else:
        assert weighted < 0.95 * plain


def test_q8_0_ignores_the_importance_as_llama_cpp_does():
    x = deterministic_synthetic()
    assert torch.equal(quantize(x, Q8_0, importance_for(512)), quantize(x, Q8_0))


def test_weighted_changes_bytes_and_keeps_shape():
    x = deterministic_synthetic()[16:48]
    imp = importance_for(512)
    packed = quantize(x, Q4_K, imp)
    assert packed.shape == quantize(x, Q4_K).shape
    assert not torch.equal(packed, quantize(x, Q4_K))
    assert fake_quantize(x.double(), Q4_K, imp).dtype == torch.float64


@pytest.mark.parametrize(
    ("importance", "message"),
    [
        (torch.ones(256), "one value per column"),
        (-torch.ones(512), "not negative"),
        (torch.full((512,), float("nan")), "finite"),
    ],
)
def test_bad_importance_says_what_is_wrong(importance, message):
    with pytest.raises(ValueError, match=message):
        quantize(deterministic_synthetic(), Q4_K, importance)
