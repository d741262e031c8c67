"""The mixed-precision planner: per-tensor costs in candidate formats, a solver for a bit budget, and the
typed recipe it returns (with heuristics to compare against and llama.cpp / JSON export).

    table = measure_costs(model, ids, DEFAULT_CANDIDATES, progress=...)
    recipe = plan(table, budget=4.5)          # PlannedRecipe: a format per tensor, predicted KL, exact bits
    quantized = apply(model, recipe)          # a fake-quantized copy, to measure on held-out text
    kept = quantize_model(model, PlannedConfig.from_recipe(recipe))  # the same, as a method's model
"""

from engine.planner.candidates import DEFAULT_CANDIDATES, LLAMA_CPP_CANDIDATES, TensorInfo, planned_tensors
from engine.planner.costs import CostTable, PlannerError, measure_costs
from engine.planner.method import PlannedConfig, PlannedDetail
from engine.planner.recipe import PlannedRecipe, apply, plan, recipe_from_json, tensor_type_lines
from engine.planner.solve import Solution, UnreachableBudget, solve

__all__ = [
    "DEFAULT_CANDIDATES",
    "LLAMA_CPP_CANDIDATES",
    "CostTable",
    "PlannedConfig",
    "PlannedDetail",
    "PlannedRecipe",
    "PlannerError",
    "Solution",
    "TensorInfo",
    "UnreachableBudget",
    "apply",
    "measure_costs",
    "plan",
    "planned_tensors",
    "recipe_from_json",
    "solve",
    "tensor_type_lines",
]
