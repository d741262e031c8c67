"""Hadamard constructions (Sylvester, Paley I / II, Kronecker products) and the rotations built from them."""

from __future__ import annotations

import pytest
import torch

from engine.quant.hadamard import (
    RotationKind,
    hadamard,
    hadamard_factors,
    hadamard_orders,
    random_hadamard,
    random_orthogonal,
    rotation,
    rotation_matrix,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_every_constructed_order_is_exactly_hadamard():
    orders = [*hadamard_orders(256), 576, 1536]
    # Paley I (12, 20, 44), Paley II (28, 36), Sylvester (64), Kronecker products (24, 48, 576, 1536)
    assert {1, 2, 4, 12, 20, 24, 28, 36, 44, 48, 64, 128, 256} <= set(orders)
    for n in orders:
        h = hadamard(n, torch.float64)
        assert torch.equal(h.abs(), torch.ones(n, n, dtype=torch.float64)), n
        assert torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64)), n


def test_model_widths_come_from_kronecker_products():
    assert [f.shape[0] for f in hadamard_factors(576)] == [72, 8]
    assert [f.shape[0] for f in hadamard_factors(1536)] == [384, 4]
    assert [f.shape[0] for f in hadamard_factors(64)] == [64]


@pytest.mark.parametrize("n", [92, 6, 577])
def test_an_order_without_a_construction_is_refused(n):
    with pytest.raises(ValueError, match=f"no Hadamard construction of order {n}"):
        hadamard(n)


def test_normalized_rotations_are_orthogonal():
    for q in (random_hadamard(576, seed=1), random_orthogonal(577, seed=1), rotation(1536, seed=2).matrix()):
        n = q.shape[0]
        assert q.dtype == torch.float32
        q = q.double()  # the float32 entries, multiplied without float32's accumulation error
        assert (q @ q.T - torch.eye(n, dtype=torch.float64)).abs().max() < 1e-6


def test_rotation_applies_its_matrix_factored():
    rot = rotation(576, seed=3)
    q = rot.matrix(torch.float64)
    assert torch.equal(q, random_hadamard(576, seed=3, dtype=torch.float64))
    x = torch.randn(3, 5, 576, dtype=torch.float64)
    torch.testing.assert_close(rot.apply(x), x @ q)
    torch.testing.assert_close(rot.apply_transposed(x), x @ q.T)
    assert not torch.equal(q, random_hadamard(576, seed=4, dtype=torch.float64))  # seeds differ


def test_rotation_matrix_falls_back_to_random_orthogonal_and_says_so():
    q, note = rotation_matrix(577)
    assert note == "no Hadamard construction of order 577: a random orthogonal matrix instead"
    assert (q.double() @ q.double().T - torch.eye(577, dtype=torch.float64)).abs().max() < 1e-6
    assert rotation_matrix(576)[1] is None
    assert rotation_matrix(576, RotationKind.RANDOM)[1] is None  # asked for: nothing to explain
    assert rotation_matrix(64, dtype=torch.float64)[0].dtype == torch.float64
