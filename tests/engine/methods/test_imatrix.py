"""llama.cpp's importance matrix (engine.methods.imatrix) and GGUF with it (GGUFConfig(imatrix=True)).

- Tiny random Llama: the matrix is mean x_j^2 of each linear's inputs, checked against inputs captured by a
  plain hook; the head is left out; the model is untouched; save/load round-trips; statistics add up.
- GGUF method: imatrix=True collects on the calibration windows and weights every linear's rounding (the
  weights are exactly `fake_quantize(w, t, matrix[name])`), refuses to run without calibration, says
  "+ imatrix" in its label.
- Default model (slow): imatrix-weighted rounding lowers KL to the reference against unweighted rounding for
  Q3_K and Q4_0 (issue 18), on held-out Britannica windows, calibrated on the calibration half.
- The Outliers page's statistics give the same matrix without a new run.
"""

from __future__ import annotations

import pytest
import torch

from engine.methods import GGUFConfig, quantize_model
from engine.methods.imatrix import ImportanceMatrix, collect_importance, layer_index
from engine.quant.gguf import Q3_K, Q4_0, fake_quantize
from engine.quant.linear import linear_names
from tests.conftest import build_tiny_llama, checksum

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_llama(seed=3)


@pytest.fixture(scope="module")
def calib():
    return torch.randint(3, 96, (3, 20), generator=torch.Generator().manual_seed(0))


def test_matrix_is_mean_square_input_per_channel(tiny, calib):
    seen: dict[str, list[torch.Tensor]] = {}
    names = linear_names(tiny)
    hooks = [
        tiny.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: seen.setdefault(n, []).append(a[0]))
        for n in names
    ]
    with torch.no_grad():
        tiny(input_ids=calib)
    for h in hooks:
        h.remove()
    before = checksum(tiny)
    matrix = collect_importance(tiny, calib)
    assert checksum(tiny) == before
    assert list(matrix.values) == names and "lm_head" not in matrix
    assert matrix.tokens == 60 and set(matrix.counts.values()) == {60}
    for name in names:
        x = torch.cat([t.reshape(-1, t.shape[-1]) for t in seen[name]]).double()
        torch.testing.assert_close(matrix[name], x.square().mean(0).float(), rtol=1e-5, atol=1e-7)
        assert matrix[name].shape == (tiny.get_submodule(name).in_features,)


def test_save_load_round_trip_and_foreign_file_refused(tiny, calib, tmp_path):
    matrix = collect_importance(tiny, calib)
    path = tmp_path / "imatrix.safetensors"
    matrix.save(path)
    back = ImportanceMatrix.load(path)
    assert back.tokens == matrix.tokens and back.counts == matrix.counts
    assert all(torch.equal(back[n], matrix[n]) for n in matrix.values)
    from safetensors.torch import save_file

    save_file({"x": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an importance matrix"):
        ImportanceMatrix.load(tmp_path / "other.safetensors")


def test_statistics_shares_add_up(tiny, calib):
    matrix = collect_importance(tiny, calib)
    rows = matrix.statistics()
    assert [r.name for r in rows] == list(matrix.values)
    assert sum(r.share for r in rows) == pytest.approx(1.0)
    row = rows[0]
    assert row.mean == pytest.approx(float(matrix[row.name].double().mean()))
    assert row.total == pytest.approx(row.mean * row.channels)
    assert layer_index("model.layers.1.mlp.down_proj") == 1 and layer_index("lm_head") is None


def test_gguf_with_imatrix_weights_every_linear(tiny, calib):
    messages = []
    built = quantize_model(
        tiny, GGUFConfig(Q4_0, imatrix=True), calib=calib, progress=lambda f, m: messages.append(f)
    )
    plain = quantize_model(tiny, GGUFConfig(Q4_0))
    matrix = collect_importance(tiny, calib)
    assert built.config.label == "GGUF Q4_0 + imatrix"
    assert messages[-1] == pytest.approx(1.0) and messages == sorted(messages)
    for name in linear_names(tiny):
        w = tiny.get_submodule(name).weight
        got = built.model.get_submodule(name).weight
        assert torch.equal(got, fake_quantize(w, Q4_0, matrix[name]))
        assert not torch.equal(got, plain.model.get_submodule(name).weight)


def test_gguf_imatrix_needs_calibration(tiny):
    with pytest.raises(ValueError, match="needs calibration data"):
        quantize_model(tiny, GGUFConfig(Q4_0, imatrix=True))
    with pytest.raises(ValueError, match="imatrix must be True or False"):
        GGUFConfig(Q4_0, imatrix="yes")


@pytest.mark.slow
def test_imatrix_lowers_kl_for_low_bit_formats(default_loaded):
    """Issue 18, kept short: the linears of the first 2 decoder layers at Q3_K (Q4_0 where rows of 576 do not
    fit super-blocks, as the method does) and at Q4_0, with and without the matrix; KL to the reference on 2
    held-out Britannica windows, the matrix from 2 calibration windows. (The whole-model numbers, for every
    format: docs in the issue's closing note.)"""
    import copy

    from engine.evaluation.evalset import DEFAULT_EVAL_SET
    from engine.evaluation.perplexity import kl_to_reference
    from engine.methods.gguf import tensor_type
    from engine.models.data import WindowSpec, load_text, token_windows

    reference = default_loaded.model
    text = load_text("britannica")
    calib = token_windows(default_loaded.tokenizer, text, WindowSpec(256, 2, split="calibration"))
    held_out = token_windows(default_loaded.tokenizer, text, DEFAULT_EVAL_SET.spec)[:2]
    matrix = collect_importance(reference, calib)
    names = [
        n for n in linear_names(reference) if n.startswith(tuple(f"model.layers.{i}." for i in range(2)))
    ]
    for t in (Q3_K, Q4_0):
        kl = {}
        for weighted in (False, True):
            model = copy.deepcopy(reference)
            with torch.no_grad():
                for name in names:
                    w = model.get_submodule(name).weight
                    w.copy_(fake_quantize(w, tensor_type(t, w.shape[-1]), matrix[name] if weighted else None))
            kl[weighted] = kl_to_reference(reference, model, held_out).mean_kl
        assert kl[True] < 0.9 * kl[False], (t.name, kl)


def test_outliers_statistics_give_the_same_matrix(tiny, calib):
    from engine.analysis.stats import collect_stats
    from engine.methods.imatrix import importance_from_stats

    matrix = collect_importance(tiny, calib)
    derived = importance_from_stats(collect_stats(tiny, calib, sample_tokens=4, kivi_block=4))
    assert set(derived.values) == set(matrix.values)
    for name in matrix.values:
        torch.testing.assert_close(derived[name], matrix[name], rtol=1e-4, atol=1e-6)


def test_the_matrix_ignores_other_threads_forwards(tiny):
    """A model shared between sessions: another thread's forward through a hooked linear while the matrix
    is collected leaves it exactly as collected alone."""
    import threading

    model = tiny
    calib = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    alone = collect_importance(model, calib)
    name = linear_names(model)[0]
    linear = model.get_submodule(name)
    outsider = torch.full((3, linear.in_features), 100.0)
    ran = []

    def progress(fraction, message):  # at each calibration step another caller runs the same linear
        worker = threading.Thread(target=lambda: ran.append(linear(outsider)))
        worker.start()
        worker.join(timeout=30)

    shared = collect_importance(model, calib, progress=progress)
    assert ran
    assert torch.equal(shared.values[name], alone.values[name])
    assert shared.counts == alone.counts
