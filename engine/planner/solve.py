"""The assignment of one option per tensor that minimizes the summed cost under a bit budget: a
multiple-choice knapsack, solved in three steps.

1. Lagrangian relaxation over each tensor's lower convex hull of (bits, cost): every tensor starts at its
   smallest option; the hull steps of all tensors are taken in order of cost saved per bit while they fit
   the budget (the sweep over lambda in one sort). The first step that does not fit sets lambda.
2. A greedy fill: while some single change of one tensor's option fits the remaining bits and lowers the
   cost, take the one that lowers it most.
3. Branch and bound from that answer, with the Lagrangian bound at that lambda (sum over the tensors left
   of min(cost + lambda * bits), minus lambda times the bits left): it proves the answer optimal, or
   finds a better one, within a node and time limit; `Solution.optimal` says whether the proof finished,
   and `lower_bound` how far from optimal the answer can be when not.

Options are keyed by anything hashable (the planner uses formats); costs and bits are plain floats.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass

Option = tuple[float, float]  # (cost, bits)
NODE_LIMIT = 200_000
TIME_LIMIT_S = 0.08


class UnreachableBudget(ValueError):
    """The budget is below the cheapest or above the richest assignment; the message says by how much."""


@dataclass(frozen=True)
class Solution:
    choice: dict[str, Hashable]  # tensor -> chosen option key
    cost: float  # summed cost of the choice
    bits: float  # summed bits of the choice
    bits_per_weight: float  # bits / weights
    lower_bound: float  # no assignment within the budget costs less than this
    optimal: bool  # the branch and bound finished: cost is the optimum


def bounds(
    options: Mapping[str, Mapping[Hashable, Option]], weights: Mapping[str, int]
) -> tuple[float, float]:
    """(cheapest, richest) average bits per weight any assignment reaches."""
    total = sum(weights[name] for name in options)
    low = sum(min(b for _, b in opts.values()) for opts in options.values())
    high = sum(max(b for _, b in opts.values()) for opts in options.values())
    return low / total, high / total


def _check(options, weights, budget: float) -> None:
    if not options or any(not opts for opts in options.values()):
        raise ValueError("Every tensor needs at least one option to choose from.")
    if any(weights[name] <= 0 for name in options):
        raise ValueError("Every tensor needs a positive weight count.")
    low, high = bounds(options, weights)
    if budget < low - 1e-9:
        raise UnreachableBudget(
            f"{budget:.2f} bits per weight is below the cheapest assignment ({low:.3f} bits per weight) "
            f"by {low - budget:.3f}; raise the budget or add a smaller format."
        )
    if budget > high + 1e-9:
        raise UnreachableBudget(
            f"{budget:.2f} bits per weight is above the richest assignment ({high:.3f} bits per weight) "
            f"by {budget - high:.3f}; lower the budget or add a larger format."
        )


def _hull(opts: list[tuple[float, float, Hashable]]) -> list[tuple[float, float, Hashable]]:
    """The lower convex hull of (bits, cost, key), from the smallest option, keeping only cost decreases."""
    points: list[tuple[float, float, Hashable]] = []
    for bits, cost, key in sorted(opts, key=lambda o: (o[0], o[1])):
        if points and (bits == points[-1][0] or cost >= points[-1][1]):
            continue  # same size or no cheaper: never worth its bits
        while len(points) >= 2:
            (b1, c1, _), (b2, c2, _) = points[-2], points[-1]
            if (c2 - c1) * (bits - b1) >= (cost - c1) * (b2 - b1):  # the middle point lies on or above
                points.pop()
            else:
                break
        points.append((bits, cost, key))
    return points


def _lagrangian(table, capacity: float) -> tuple[dict[str, tuple[float, float, Hashable]], float]:
    """Step 1: hull steps by cost saved per bit while they fit; returns (choice, lambda)."""
    hulls = {name: _hull(opts) for name, opts in table.items()}
    choice = {name: hull[0] for name, hull in hulls.items()}
    used = sum(point[0] for point in choice.values())
    steps = []
    for name, hull in hulls.items():
        for (b1, c1, _), (b2, c2, _), index in zip(hull, hull[1:], range(1, len(hull)), strict=False):
            steps.append(((c2 - c1) / (b2 - b1), name, index))
    steps.sort(key=lambda step: step[0])
    blocked: set[str] = set()
    lam = 0.0
    for slope, name, index in steps:
        if name in blocked:
            continue
        point, previous = hulls[name][index], choice[name]
        if used - previous[0] + point[0] <= capacity:
            used += point[0] - previous[0]
            choice[name] = point
        else:
            blocked.add(name)
            lam = lam or -slope
    return choice, lam


def _greedy_fill(table, choice, capacity: float) -> None:
    """Step 2, in place: the single change that lowers the cost most and fits, until none does."""
    used = sum(point[0] for point in choice.values())
    while True:
        best = None
        for name, opts in table.items():
            bits0, cost0, _ = choice[name]
            for option in opts:
                gain = cost0 - option[1]
                if gain > 0 and used - bits0 + option[0] <= capacity and (best is None or gain > best[0]):
                    best = (gain, name, option)
        if best is None:
            return
        _, name, option = best
        used += option[0] - choice[name][0]
        choice[name] = option


def _branch_and_bound(table, capacity: float, lam: float, incumbent: float, start: float):
    """Step 3: depth-first over tensors (widest cost spread first), pruned by the Lagrangian bound."""
    names = sorted(table, key=lambda n: -(max(o[1] for o in table[n]) - min(o[1] for o in table[n])))
    ordered = [sorted(table[n], key=lambda o: o[1] + lam * o[0]) for n in names]
    best_relaxed = [min(o[1] + lam * o[0] for o in opts) for opts in ordered]
    min_bits = [min(o[0] for o in opts) for opts in ordered]
    suffix_relaxed, suffix_bits = [0.0] * (len(names) + 1), [0.0] * (len(names) + 1)
    for i in range(len(names) - 1, -1, -1):
        suffix_relaxed[i] = suffix_relaxed[i + 1] + best_relaxed[i]
        suffix_bits[i] = suffix_bits[i + 1] + min_bits[i]
    root_bound = suffix_relaxed[0] - lam * capacity
    state = {"best": incumbent, "picks": None, "nodes": 0, "cut": False}
    picks: list = [None] * len(names)
    tolerance = 1e-12 * max(abs(incumbent), 1e-30)

    def visit(depth: int, cost: float, left: float) -> None:
        if depth == len(names):
            if cost < state["best"] - tolerance:
                state["best"], state["picks"] = cost, list(picks)
            return
        state["nodes"] += 1
        if state["nodes"] > NODE_LIMIT or (
            state["nodes"] % 1024 == 0 and time.perf_counter() - start > TIME_LIMIT_S
        ):
            state["cut"] = True
        if state["cut"]:
            return
        for option in ordered[depth]:
            rest = left - option[0]
            if rest < suffix_bits[depth + 1] - 1e-9:
                continue
            bound = cost + option[1] + suffix_relaxed[depth + 1] - lam * rest
            if bound >= state["best"] - tolerance:
                continue
            picks[depth] = option
            visit(depth + 1, cost + option[1], rest)

    visit(0, 0.0, capacity)
    found = None if state["picks"] is None else dict(zip(names, state["picks"], strict=True))
    return found, not state["cut"], root_bound


def solve(
    options: Mapping[str, Mapping[Hashable, Option]], weights: Mapping[str, int], budget: float
) -> Solution:
    """The least-cost choice of one option per tensor whose average bits per weight (weighted by
    `weights`, each tensor's value count) is at most `budget`. `options[name][key] = (cost, bits)`,
    bits being the tensor's total. UnreachableBudget when no assignment (or every one) fits."""
    start = time.perf_counter()
    _check(options, weights, budget)
    total = sum(weights[name] for name in options)
    capacity = budget * total + 1e-9 * total
    table = {
        name: [(bits, cost, key) for key, (cost, bits) in opts.items()] for name, opts in options.items()
    }
    choice, lam = _lagrangian(table, capacity)
    _greedy_fill(table, choice, capacity)
    incumbent = sum(point[1] for point in choice.values())
    better, optimal, bound = _branch_and_bound(table, capacity, lam, incumbent, start)
    if better is not None:
        choice = better
    cost = sum(point[1] for point in choice.values())
    bits = sum(point[0] for point in choice.values())
    return Solution(
        {name: point[2] for name, point in choice.items()},
        cost,
        bits,
        bits / total,
        cost if optimal else min(bound, cost),
        optimal,
    )


__all__ = ["Solution", "UnreachableBudget", "bounds", "solve"]
