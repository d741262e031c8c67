"""Lesson 3: granularity and the cost of scales. One weight-like tensor with planted outliers, quantized with
ever finer scales (per tensor, per channel, groups of 256 down to 16), each row with its bits per weight."""

from __future__ import annotations

from dataclasses import dataclass

from engine.analysis.tensors import synthetic_tensor
from engine.quant.metrics import mse, sqnr_db
from engine.quant.primitives import fake_quantize
from engine.quant.schemes import QuantScheme, bits_per_weight

# -- 3. granularity and the cost of scales -----------------------------------------------------------

GRANULARITY_STEPS = (("tensor", None), ("channel", None), ("group", 256), ("group", 128), ("group", 64))
GRANULARITY_STEPS += (("group", 32), ("group", 16))


@dataclass(frozen=True)
class GranularityRow:
    scheme: QuantScheme
    scales: int  # how many scales the tensor stores
    bits_per_weight: float  # codes plus fp16 scales
    mse: float
    sqnr_db: float


@dataclass(frozen=True)
class GranularityLesson:
    bits: int
    outliers: int
    shape: tuple[int, int]
    rows: list[GranularityRow]  # coarse to fine

    @property
    def takeaway(self) -> str:
        coarse = self.rows[0]
        g64 = next(r for r in self.rows if r.scheme.group_size == 64)
        gain = g64.sqnr_db - coarse.sqnr_db
        return (
            f"Groups of 64 change SQNR by {gain:+.1f} dB over a single per-tensor scale and cost "
            f"{g64.bits_per_weight - coarse.bits_per_weight:.3f} extra bits per weight "
            f"({g64.bits_per_weight:.3f} vs {coarse.bits_per_weight:.3f})"
            + (
                f"; {self.outliers} outlier(s) no longer stretch every other value's scale."
                if self.outliers
                else "."
            )
        )


def granularity_lesson(
    bits: int = 4, outliers: int = 4, outlier_scale: float = 20.0, seed: int = 0
) -> GranularityLesson:
    """One weight-like tensor with planted outliers, quantized with ever finer scales."""
    shape = (256, 1024)  # (out_features, in_features)
    x = synthetic_tensor("gaussian", *shape, outliers=outliers, outlier_scale=outlier_scale, seed=seed)
    rows = []
    for granularity, group in GRANULARITY_STEPS:
        scheme = QuantScheme(bits, "int", True, granularity, group)
        xq = fake_quantize(x, scheme)
        scales = {"tensor": 1, "channel": shape[0]}.get(granularity) or x.numel() // (group or 1)
        rows.append(
            GranularityRow(
                scheme, scales, bits_per_weight(scheme, shape[1], shape[0]), mse(x, xq), sqnr_db(x, xq)
            )
        )
    return GranularityLesson(bits, outliers, shape, rows)
