"""The numbers behind the Learn page: one small, seeded experiment per concept.

Each lesson returns a frozen dataclass of tensors and floats plus a `takeaway` sentence built from those
numbers, so the page never states a claim its own data does not show. One module per lesson or pair:

- grids.py: linear vs quantile grids (int4 / NF4 / FP4), symmetric vs asymmetric int grids;
- granularity.py: per-tensor, per-channel and group scales, and what the scales cost in bits;
- formats.py: today's block formats (MXFP4, NVFP4, llama.cpp's k-quants) on one real weight;
- calibration.py: PTQ with dynamic vs static scales and the observers that calibrate them;
- qat_spiral.py: the straight-through estimator's staircase and a QAT demo on a spiral classifier
  (the STE itself is `engine.quant.ste`);
- the speed lesson is an idealised roofline (`engine.speed.roofline`), not a measurement; the Speed page
  measures.

The names the UI and tests use are re-exported here, so `from engine import lessons; lessons.X` works.
"""

from engine.lessons.calibration import (
    CALIBRATION_TEXTS,
    DOWN_PROJECTION_NAMES,
    HELD_OUT_TEXTS,
    CalibrationLesson,
    CalibrationRow,
    calibration_lesson,
    capture_inputs,
    mlp_output_projections,
    synthetic_activations,
)
from engine.lessons.formats import (
    FormatRow,
    FormatsLesson,
    KQuantLesson,
    ScaleLesson,
    formats_lesson,
    formats_table,
    super_block_layouts,
)
from engine.lessons.granularity import (
    GRANULARITY_STEPS,
    GranularityLesson,
    GranularityRow,
    granularity_lesson,
)
from engine.lessons.grids import (
    DISTRIBUTIONS,
    MAPPING_FORMATS,
    SYMMETRY_DATA,
    MappingLesson,
    SymmetryLesson,
    activation_like,
    distribution_tensor,
    mapping_lesson,
    symmetry_lesson,
)
from engine.lessons.qat_spiral import QatReport, SpiralTask, Staircase, qat_step_staircase, run_qat_demo
from engine.speed.roofline import (
    ACCELERATORS,
    WEIGHT_FORMATS,
    SpeedLesson,
    layer_cost,
    layer_time,
    speed_lesson,
)

__all__ = [
    "ACCELERATORS",
    "CALIBRATION_TEXTS",
    "DISTRIBUTIONS",
    "DOWN_PROJECTION_NAMES",
    "GRANULARITY_STEPS",
    "HELD_OUT_TEXTS",
    "MAPPING_FORMATS",
    "SYMMETRY_DATA",
    "WEIGHT_FORMATS",
    "CalibrationLesson",
    "CalibrationRow",
    "FormatRow",
    "FormatsLesson",
    "GranularityLesson",
    "GranularityRow",
    "KQuantLesson",
    "MappingLesson",
    "QatReport",
    "ScaleLesson",
    "SpeedLesson",
    "SpiralTask",
    "Staircase",
    "SymmetryLesson",
    "activation_like",
    "calibration_lesson",
    "capture_inputs",
    "distribution_tensor",
    "formats_lesson",
    "formats_table",
    "granularity_lesson",
    "layer_cost",
    "layer_time",
    "mapping_lesson",
    "mlp_output_projections",
    "qat_step_staircase",
    "run_qat_demo",
    "speed_lesson",
    "super_block_layouts",
    "symmetry_lesson",
    "synthetic_activations",
]
