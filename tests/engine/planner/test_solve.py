"""The knapsack solver: optimal on small instances (checked by brute force), on budget, and in words when
the budget cannot be reached."""

from __future__ import annotations

import itertools
import random

import pytest

from engine.planner.solve import UnreachableBudget, bounds, solve


def random_instance(seed: int, tensors: int = 6, formats: int = 3):
    rng = random.Random(seed)
    options, weights = {}, {}
    for i in range(tensors):
        weights[f"t{i}"] = rng.choice([64, 256, 1024, 4096])
        bpw = sorted(rng.sample([2.5, 3.5, 4.5, 5.5, 6.5, 8.5], formats))
        scale = rng.uniform(0.1, 10)
        options[f"t{i}"] = {
            f"f{k}": (scale * 2.0 ** (-b) * rng.uniform(0.5, 2.0), b * weights[f"t{i}"])
            for k, b in enumerate(bpw)
        }
    return options, weights


def brute_force(options, weights, budget):
    names = list(options)
    capacity = budget * sum(weights.values()) + 1e-6
    best = None
    for combo in itertools.product(*(list(options[n].items()) for n in names)):
        bits = sum(b for _, (_, b) in combo)
        cost = sum(c for _, (c, _) in combo)
        if bits <= capacity and (best is None or cost < best):
            best = cost
    return best


@pytest.mark.parametrize("seed", range(12))
def test_solver_is_optimal_on_small_instances(seed):
    options, weights = random_instance(seed)
    low, high = bounds(options, weights)
    for budget in (low, low + 0.3 * (high - low), (low + high) / 2, low + 0.8 * (high - low), high):
        solution = solve(options, weights, budget)
        assert solution.optimal
        assert solution.cost == pytest.approx(brute_force(options, weights, budget), rel=1e-9)
        assert solution.bits_per_weight <= budget + 1e-9


def default_model_like():
    """The default model's 210 linears (rows of 576 / 1536) with random costs falling with bits."""
    rng = random.Random(0)
    shapes = {"q": (576, 576), "k": (192, 576), "v": (192, 576), "o": (576, 576), "gate": (1536, 576), "up": (1536, 576), "down": (576, 1536)}  # fmt: skip
    options, weights = {}, {}
    for layer in range(30):
        for module, (rows, cols) in shapes.items():
            name, n = f"{layer}.{module}", rows * cols
            weights[name] = n
            scale = rng.lognormvariate(0, 1.5)
            options[name] = {b: (scale * 4.0 ** (-b), b * n) for b in (3.5, 4.5, 5.5, 8.5)}
    return options, weights


def test_budget_is_hit_within_a_hundredth():
    options, weights = default_model_like()
    for budget in (3.7, 4.0, 4.25, 4.5, 5.0, 6.13, 8.0):
        solution = solve(options, weights, budget)
        assert budget - 0.01 <= solution.bits_per_weight <= budget + 1e-9


def test_unreachable_budgets_say_which_and_by_how_much():
    options, weights = default_model_like()
    with pytest.raises(UnreachableBudget, match=r"below the cheapest assignment \(3\.500.*by 0\.500"):
        solve(options, weights, 3.0)
    with pytest.raises(UnreachableBudget, match=r"above the richest assignment \(8\.500.*by 0\.500"):
        solve(options, weights, 9.0)


def test_bad_input_is_refused_in_words():
    with pytest.raises(ValueError, match="at least one option"):
        solve({"a": {}}, {"a": 10}, 4.0)
    with pytest.raises(ValueError, match="positive weight count"):
        solve({"a": {"x": (1.0, 0.0)}}, {"a": 0}, 4.0)
