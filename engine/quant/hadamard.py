"""Hadamard and random orthogonal matrices for rotating a model's residual stream (QuaRot, SpinQuant).

A Hadamard matrix H of order n has entries ±1 and H Hᵀ = n I, so H / √n is orthogonal and spreads every
coordinate evenly over all n: a vector with one huge channel becomes a vector of n equal-sized ones.
Orders come from three constructions, built here (no tables copied from elsewhere):

- Sylvester: H_2k = [[H_k, H_k], [H_k, -H_k]], every power of two;
- Paley I: order q + 1 for a prime q ≡ 3 (mod 4) (4, 8, 12, 20, 24, 32, 44, 48, 60, 72, ...);
- Paley II: order 2(q + 1) for a prime q ≡ 1 (mod 4) (12, 28, 36, 60, 76, ...);

and Kronecker products of these (kron(A, B) is Hadamard when A and B are): 576 = 72 × 8, 1536 = 384 × 4,
64 (one attention head) by Sylvester. Orders none of them reach (92, 116, 156, ..., any n not 1, 2 or a
multiple of 4) raise a ValueError; `rotation` then falls back to a random orthogonal matrix and says so.

A `Rotation` keeps a Hadamard rotation as its small Kronecker factors and multiplies by them one axis at
a time (x @ kron(A, B) is Aᵀ X B on x reshaped to (a, b)): the online Hadamard on SmolLM2's 1536-wide
MLP costs 1536 × (384 + 4) multiply-adds a token instead of 1536². (Rotating the weights once uses the
dense matrix: on a 2-core CPU that step is bound by passes over memory, not by multiply-adds.)
QuaRot's randomized Hadamard is H diag(s) / √n with random signs s: still orthogonal, and a different
rotation per seed. Matrices are built in float64 (entries are exact there) and returned in float32 unless
asked otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from functools import cache, reduce

import torch
from torch import Tensor

__all__ = [
    "Rotation",
    "RotationKind",
    "hadamard",
    "hadamard_factors",
    "hadamard_orders",
    "random_hadamard",
    "random_orthogonal",
    "rotation",
    "rotation_matrix",
]


class RotationKind(Enum):
    """Which orthogonal matrix rotates the residual stream."""

    HADAMARD = "randomized Hadamard"  # H diag(±1) / √n (QuaRot); a random orthogonal one where no H exists
    RANDOM = "random orthogonal"  # QR of a Gaussian matrix (SpinQuant's starting point)


# -- constructions ---------------------------------------------------------------------------------------


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def _jacobsthal(q: int) -> Tensor:
    """Q[i, j] = χ(j - i): the quadratic character mod the prime q (0, +1 for residues, -1 otherwise)."""
    residues = torch.zeros(q, dtype=torch.float64)
    residues[torch.tensor(sorted({x * x % q for x in range(1, q)}))] = 1.0
    character = 2 * residues - 1
    character[0] = 0.0
    index = torch.arange(q)
    return character[(index.unsqueeze(0) - index.unsqueeze(1)) % q]  # (q, q)


def _sylvester(n: int) -> Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _core(q: int, sign: float) -> Tensor:
    """[[0, 1ᵀ], [sign · 1, Q]]: the Jacobsthal matrix bordered by a row and column of ones."""
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:] = 1.0
    s[1:, 0] = sign
    s[1:, 1:] = _jacobsthal(q)
    return s


def _paley_1(q: int) -> Tensor:
    """Order q + 1, q ≡ 3 (mod 4): I + [[0, 1ᵀ], [-1, Q]] (Q is antisymmetric here)."""
    return torch.eye(q + 1, dtype=torch.float64) + _core(q, -1.0)


def _paley_2(q: int) -> Tensor:
    """Order 2(q + 1), q ≡ 1 (mod 4): each 0 of [[0, 1ᵀ], [1, Q]] becomes [[1, -1], [-1, -1]] and each ±1
    becomes ±[[1, 1], [1, -1]]."""
    s = _core(q, 1.0)
    plus = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    zero = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    return torch.kron(s, plus) + torch.kron(torch.eye(q + 1, dtype=torch.float64), zero)


def _construction(n: int) -> Callable[[], Tensor] | None:
    """How to build a Hadamard matrix of order n with one construction (no Kronecker product), or None."""
    if n >= 1 and n & (n - 1) == 0:
        return lambda: _sylvester(n)
    if _is_prime(n - 1) and (n - 1) % 4 == 3:
        return lambda: _paley_1(n - 1)
    if n % 2 == 0 and _is_prime(n // 2 - 1) and (n // 2 - 1) % 4 == 1:
        return lambda: _paley_2(n // 2 - 1)
    return None


@cache
def _base(n: int) -> Tensor:
    return _construction(n)()


@cache
def _factor_orders(n: int) -> tuple[int, ...] | None:
    """Orders of base constructions whose Kronecker product has order n (largest first), or None."""
    if n >= 1 and _construction(n) is not None:
        return (n,)
    if n < 4 or n % 4:
        return None
    for d in range(n // 2, 1, -1):  # the largest base factor first: fewest factors
        if n % d == 0 and _construction(d) is not None and (rest := _factor_orders(n // d)) is not None:
            return (d, *rest)
    return None


def hadamard_orders(limit: int) -> list[int]:
    """Every order up to `limit` these constructions reach."""
    return [n for n in range(1, limit + 1) if _factor_orders(n) is not None]


def hadamard_factors(n: int, dtype: torch.dtype = torch.float32) -> list[Tensor]:
    """±1 matrices whose Kronecker product is `hadamard(n)`; ValueError when no construction is known."""
    orders = _factor_orders(n) if isinstance(n, int) and n >= 1 else None
    if orders is None:
        raise ValueError(
            f"no Hadamard construction of order {n} is known here (Sylvester, Paley I / II and their "
            "Kronecker products)"
        )
    return [_base(order).to(dtype, copy=True) for order in orders]  # the cached ones stay unchanged


def hadamard(n: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """A Hadamard matrix of order n: entries ±1, H Hᵀ = n I (not normalized)."""
    return reduce(torch.kron, hadamard_factors(n, torch.float64)).to(dtype)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _random_signs(n: int, seed: int) -> Tensor:
    return torch.randint(0, 2, (n,), generator=_generator(seed), dtype=torch.int64).to(torch.float64) * 2 - 1


def random_hadamard(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """QuaRot's randomized Hadamard H diag(s) / √n, s random ±1 from `seed`: orthogonal."""
    return (hadamard(n, torch.float64) * _random_signs(n, seed) / math.sqrt(n)).to(dtype)


def random_orthogonal(n: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """Q of the QR factorization of a seeded Gaussian matrix, signs fixed so diag(R) > 0 (Haar-distributed)."""
    gaussian = torch.randn(n, n, generator=_generator(seed), dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return (q * torch.sign(torch.diagonal(r))).to(dtype)


# -- a rotation, kept factored -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rotation:
    """An orthogonal n x n matrix Q = kron(*factors) diag(signs), kept as its factors (float64)."""

    factors: tuple[Tensor, ...]  # orthogonal factors (normalized Hadamards, or one dense random matrix)
    signs: Tensor | None  # (n,) ±1 applied after the factors; None: no signs
    note: str | None = None  # why this is not the kind asked for (no Hadamard of this order), or None

    @property
    def size(self) -> int:
        return math.prod(f.shape[0] for f in self.factors)

    def apply(self, x: Tensor) -> Tensor:
        """x @ Q along the last dim, in x's dtype (x: (..., n))."""
        shape, sizes = x.shape, [f.shape[0] for f in self.factors]
        if shape[-1] != self.size:
            raise ValueError(f"a rotation of order {self.size} cannot rotate {shape[-1]} features")
        y = x.reshape(*shape[:-1], *sizes)
        for axis, factor in enumerate(self.factors):  # (..., a, b): Aᵀ X B, one axis at a time
            dim = y.dim() - len(sizes) + axis
            y = torch.movedim(torch.movedim(y, dim, -1) @ factor.to(x.device, x.dtype), -1, dim)
        y = y.reshape(shape)
        return y if self.signs is None else y * self.signs.to(x.device, x.dtype)

    def apply_transposed(self, x: Tensor) -> Tensor:
        """x @ Qᵀ along the last dim (the inverse rotation)."""
        if self.signs is not None:
            x = x * self.signs.to(x.device, x.dtype)
        return Rotation(tuple(f.T for f in self.factors), None).apply(x)

    def matrix(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.apply(torch.eye(self.size, dtype=torch.float64)).to(dtype)


def rotation(
    n: int, kind: RotationKind = RotationKind.HADAMARD, seed: int = 0, signed: bool = True
) -> Rotation:
    """The rotation of order n: a (randomized, when `signed`) Hadamard, or a random orthogonal matrix when
    asked or when no Hadamard construction reaches n (then `note` says so)."""
    if not isinstance(kind, RotationKind):
        raise ValueError(f"kind must be a RotationKind (got {kind!r})")
    note = None
    if kind is RotationKind.HADAMARD:
        try:
            factors = hadamard_factors(n, torch.float64)
        except ValueError:
            note = f"no Hadamard construction of order {n}: a random orthogonal matrix instead"
        else:
            normalized = tuple(f / math.sqrt(f.shape[0]) for f in factors)
            return Rotation(normalized, _random_signs(n, seed) if signed else None)
    return Rotation((random_orthogonal(n, seed, torch.float64),), None, note)


def rotation_matrix(
    n: int, kind: RotationKind = RotationKind.HADAMARD, seed: int = 0, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, str | None]:
    """(Q, note): the rotation's dense matrix and why it is not a Hadamard one (None when it is as asked)."""
    rot = rotation(n, kind, seed)
    return rot.matrix(dtype), rot.note
