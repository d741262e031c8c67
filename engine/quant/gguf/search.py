"""llama.cpp's scale searches for the k-quants, vectorised over sub-blocks (ggml-quants.c, reference path).

Every function takes sub-blocks x (B, n) float32 and returns, per sub-block, the scale the C function
returns and its codes L, with the same float32 operations in the same order, so the codes match the
reference's. The loops that remain run over the search steps or the n elements, never over blocks.

- `make_qkx2_quants` (Q2_K, Q4_K, Q5_K): asymmetric codes 0..nmax, tries nstep + 1 stretched grids
  (nmax + rmin + rdelta * step levels over max - min), each followed by a weighted least-squares fit of
  scale and min; keeps the one with the lowest weighted error (squared, or absolute when `use_mad`).
- `make_q3_quants` (Q3_K): symmetric codes -nmax..nmax-1 from the signed max, then up to 5 rounds of
  one-code-at-a-time moves that raise the x^2-weighted fit.
- `make_qx_quants` (Q6_K, rmse_type 1): symmetric codes from 19 scales around -nmax / signed max, keeping
  the best weighted least-squares fit (weights x^2, or the importance weights when given).

With an importance matrix (engine.quant.gguf `quantize(..., importance=)`), llama.cpp's `_impl` quantizers
use `make_qkx2_quants(guarded=True)` (its `make_qkx3_quants`), `make_qx_quants` with weights, and
`make_qp_quants` (the sub-block scales and mins of a super-block fitted to 4 or 6 bits, weighted).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from engine.quant.gguf._common import nearest_int, rdiv, seq_sum, signed_absmax

GROUP_MAX_EPS = 1e-15


def _f32(value: float) -> float:
    """A Python float holding exactly the float32 value C would compute (`np.float32` arithmetic)."""
    return float(np.float32(value))


def make_qkx2_quants(
    x: Tensor,
    w: Tensor,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
    guarded: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """(scale, the_min = -min >= 0, L in 0..nmax) per sub-block.

    `guarded`: `make_qkx3_quants` (the importance-weighted path), which is the same search except that the
    stretched grids' codes come from `v > 0 ? nearest_int(MIN(v, nmax)) : 0`, safe when v is inf or NaN.
    """
    low = x.amin(-1)
    low = torch.where(low > 0, torch.zeros_like(low), low)
    high = x.amax(-1)
    # C starts sum_w at weights[0] and sum_x at weights[0] * x[0]: the same as summing from 0 in order.
    sum_w = seq_sum(w)
    sum_x = seq_sum(w * x)
    flat = high == low

    def error(scale: Tensor, minimum: Tensor, codes: Tensor) -> Tensor:
        diff = scale.unsqueeze(-1) * codes + minimum.unsqueeze(-1) - x
        return seq_sum(w * (diff.abs() if use_mad else diff * diff))

    def codes_for(iscale: Tensor, minimum: Tensor) -> Tensor:
        return nearest_int(iscale.unsqueeze(-1) * (x - minimum.unsqueeze(-1))).clamp(0, nmax).to(x.dtype)

    def guarded_codes(iscale: Tensor, minimum: Tensor) -> Tensor:
        v = iscale.unsqueeze(-1) * (x - minimum.unsqueeze(-1))
        codes = nearest_int(torch.where(v > 0, v.clamp(max=float(nmax)), torch.zeros_like(v)))
        return codes.to(x.dtype)

    iscale = rdiv(float(nmax), high - low)
    scale = rdiv(1.0, iscale)
    L = codes_for(iscale, low)
    best = error(scale, low, L)
    minimum = low
    for step in range(nstep + 1):
        stretch = _f32(np.float32(rmin) + np.float32(rdelta) * np.float32(step) + np.float32(nmax))
        iscale = rdiv(stretch, high - minimum)
        Laux = (guarded_codes if guarded else codes_for)(iscale, minimum)
        wl = w * Laux
        sum_l, sum_l2, sum_xl = seq_sum(wl), seq_sum(wl * Laux), seq_sum(wl * x)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        positive = this_min > 0
        this_min = torch.where(positive, torch.zeros_like(this_min), this_min)
        this_scale = torch.where(positive, sum_xl / sum_l2, this_scale)
        cur = error(this_scale, this_min, Laux)
        take = (D > 0) & (cur < best) & ~flat
        L = torch.where(take.unsqueeze(-1), Laux, L)
        best = torch.where(take, cur, best)
        scale = torch.where(take, this_scale, scale)
        minimum = torch.where(take, this_min, minimum)
    zero = torch.zeros_like(scale)
    scale = torch.where(flat, zero, scale)
    L = torch.where(flat.unsqueeze(-1), torch.zeros_like(L), L)
    return scale, -minimum, L.to(torch.int32)


def make_q3_quants(x: Tensor, nmax: int) -> tuple[Tensor, Tensor]:
    """(scale, L in 0..2*nmax-1) per sub-block: `make_q3_quants(n, nmax, x, L, do_rmse=true)`."""
    top = signed_absmax(x)
    empty = x.abs().amax(-1) < GROUP_MAX_EPS
    iscale = rdiv(float(-nmax), top)
    L = nearest_int(iscale.unsqueeze(-1) * x).clamp(-nmax, nmax - 1).to(x.dtype)
    w = x * x
    wx = w * x
    sumlx = seq_sum(wx * L)
    suml2 = seq_sum(w * L * L)
    for _ in range(5):
        changed = torch.zeros_like(empty)
        for i in range(x.shape[-1]):
            li, xi, wi, wxi = L[:, i], x[:, i], w[:, i], wx[:, i]
            slx = sumlx - wxi * li
            sl2 = suml2 - wi * li * li
            new_l = nearest_int(xi * sl2 / slx).clamp(-nmax, nmax - 1).to(x.dtype)
            slx2 = slx + wxi * new_l
            sl22 = sl2 + wi * new_l * new_l
            take = (slx > 0) & (new_l != li) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            L[:, i] = torch.where(take, new_l, li)
            sumlx = torch.where(take, slx2, sumlx)
            suml2 = torch.where(take, sl22, suml2)
            changed |= take
        if not bool(changed.any()):
            break
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    scale = torch.where(empty, torch.zeros_like(scale), scale)
    L = torch.where(empty.unsqueeze(-1), torch.zeros_like(L), L + nmax)
    return scale, L.to(torch.int32)


def make_qx_quants(x: Tensor, nmax: int, qw: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(scale, L in 0..2*nmax-1) per sub-block: `make_qx_quants(n, nmax, x, L, rmse_type=1, qw)`; without
    importance weights qw (same shape as x) the fit is weighted by x^2."""
    top = signed_absmax(x)
    empty = x.abs().amax(-1) < GROUP_MAX_EPS
    w = x * x if qw is None else qw
    wx = w * x

    def fit(iscale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        codes = nearest_int(iscale.unsqueeze(-1) * x).clamp(-nmax, nmax - 1).to(x.dtype)
        return codes, seq_sum(wx * codes), seq_sum(w * codes * codes)

    L, sumlx, suml2 = fit(rdiv(float(-nmax), top))
    scale = torch.where(suml2 != 0, sumlx / suml2, torch.zeros_like(sumlx))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        stretch = _f32(np.float32(nmax) + np.float32(0.1) * np.float32(step))
        codes, sumlx, suml2 = fit(rdiv(-stretch, top))
        take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = torch.where(take.unsqueeze(-1), codes, L)
        scale = torch.where(take, sumlx / suml2, scale)
        best = torch.where(take, scale * sumlx, best)
    scale = torch.where(empty, torch.zeros_like(scale), scale)
    L = torch.where(empty.unsqueeze(-1), torch.zeros_like(L), L + nmax)
    return scale, L.to(torch.int32)


def make_qp_quants(x: Tensor, nmax: int, qw: Tensor) -> tuple[Tensor, Tensor]:
    """(scale, L in 0..nmax) per row of non-negative values (the sub-block scales or mins of a super-block):
    `make_qp_quants(n, nmax, x, L, quant_weights)`: the best of 9 grids by qw-weighted squared error, then
    up to 5 rounds of one-code-at-a-time moves that raise the qw-weighted fit. L is stored as C's uint8."""
    top = x.amax(-1).clamp(min=0.0)
    empty = top < GROUP_MAX_EPS

    def codes(iscale: Tensor, cap: bool) -> Tensor:
        found = nearest_int(iscale.unsqueeze(-1) * x)
        return found.clamp(max=nmax) if cap else found

    def mse(scale: Tensor, L: Tensor) -> Tensor:
        diff = x - scale.unsqueeze(-1) * L
        return seq_sum(qw * diff * diff)

    iscale = rdiv(float(nmax), top)
    best = mse(rdiv(1.0, iscale), (codes(iscale, False) & 0xFF).to(x.dtype))  # C stores into uint8 L[i]
    for step in (-4, -3, -2, -1, 1, 2, 3, 4):
        iscale_is = rdiv(_f32(np.float32(0.1) * np.float32(step) + np.float32(nmax)), top)
        cur = mse(rdiv(1.0, iscale_is), codes(iscale_is, True).to(x.dtype))
        take = cur < best
        best = torch.where(take, cur, best)
        iscale = torch.where(take, iscale_is, iscale)
    found = codes(iscale, True)
    wx = qw * x
    sumlx = seq_sum(wx * found.to(x.dtype))
    suml2 = seq_sum(qw * found.to(x.dtype) * found.to(x.dtype))
    L = (found & 0xFF).to(x.dtype)
    for _ in range(5):
        changed = torch.zeros_like(empty)
        for i in range(x.shape[-1]):
            li, xi, wi, wxi = L[:, i], x[:, i], qw[:, i], wx[:, i]
            slx = sumlx - wxi * li
            sl2 = suml2 - wi * li * li
            new_l = nearest_int(xi * sl2 / slx).clamp(max=nmax).to(x.dtype)
            slx2 = slx + wxi * new_l
            sl22 = sl2 + wi * new_l * new_l
            take = (slx > 0) & (sl2 > 0) & (new_l != li) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            L[:, i] = torch.where(take, new_l.to(torch.int32).bitwise_and(0xFF).to(x.dtype), li)
            sumlx = torch.where(take, slx2, sumlx)
            suml2 = torch.where(take, sl22, suml2)
            changed |= take
        if not bool(changed.any()):
            break
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    scale = torch.where(empty, torch.zeros_like(scale), scale)
    L = torch.where(empty.unsqueeze(-1), torch.zeros_like(L), L)
    return scale, L.to(torch.int32)
