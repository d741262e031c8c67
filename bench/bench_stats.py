"""Outlier statistics speed and memory on the default model, and the numbers the Outliers page reports.

Targets (2-core CPU): collecting every statistic (activations, residual stream, KV cache, KIVI errors)
over 8 windows of 256 tokens < 20 s with < 1.5 GB extra RAM; re-rendering the Outliers page from cached
statistics < 1 s.

Run: .venv/bin/python -m bench.bench_stats [--windows 8] [--window 256] [--repeats 2] [--no-page]
(prints markdown tables for docs/benchmarks.md). "cold" is the first pass in a fresh process (fresh
pages for every buffer), "warm" the best later pass. Extra RAM is the peak resident set size during the
collection (sampled every 5 ms) minus the resident size just before it, with the model loaded and one
plain forward already run. A plain forward over the same windows is timed as the floor; the machine's
load average is printed because other processes on two cores change every number here.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import psutil
import torch

from engine.analysis import outliers
from engine.analysis.stats import batched, collect_stats
from engine.models.data import WindowSpec, load_text, token_windows
from engine.models.loading import load_model
from engine.models.sources import ModelSource
from engine.quant.schemes import QuantScheme


class PeakRss:
    """Samples this process's resident set size in a thread; `.extra` is the peak above the start."""

    def __init__(self, interval: float = 0.005) -> None:
        self.process = psutil.Process()
        self.interval = interval
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def extra(self) -> int:
        return self.peak - self.start


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result


@torch.no_grad()
def plain_forward(model, ids) -> None:
    base = getattr(model, "base_model", model)
    for batch in batched(ids):
        base(input_ids=batch, use_cache=True)


def page_rerender(windows: int, window: int, reruns: int = 3) -> list[tuple[str, float]]:
    """AppTest: collect once on the page, then time reruns driven by each tab's controls."""
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=600)
    app.run()
    app.switch_page("pages/outliers.py")
    app.run()
    app.number_input(key="outliers_windows").set_value(windows)
    app.select_slider(key="outliers_window").set_value(window)
    first, _ = timed(  # the collection runs as a background job: the click, the wait and the rerun
        lambda: (
            app.button(key="outliers_collect").click().run(),
            app.session_state["outliers_collect_job"].wait(600),
            app.run(),
        )
    )
    assert not app.exception, [e.message for e in app.exception]
    results = [("page: first render (collection + weight stats + sensitivity)", first)]
    steps = [
        ("page: rerun, weights layer", lambda i: app.selectbox(key="outliers_w_layer").set_value(10 + i)),
        ("page: rerun, activations layer", lambda i: app.selectbox(key="outliers_a_layer").set_value(5 + i)),
        (
            "page: rerun, 3-D surface",
            lambda i: app.segmented_control(key="outliers_a_view").set_value(
                "3-D surface" if i % 2 == 0 else "Heatmap"
            ),
        ),
        ("page: rerun, KV layer", lambda i: app.selectbox(key="outliers_kv_layer").set_value(20 + i)),
    ]
    for name, change in steps:
        times = []
        for i in range(reruns):
            change(i)
            seconds, _ = timed(app.run)
            assert not app.exception, [e.message for e in app.exception]
            times.append(seconds)
        results.append((name, statistics.median(times)))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-page", action="store_true", help="skip the AppTest re-render timing")
    args = parser.parse_args()

    loaded = load_model(ModelSource())
    model = loaded.model
    ids = token_windows(
        loaded.tokenizer, load_text("britannica"), WindowSpec(window=args.window, count=args.windows)
    )
    print(
        f"# Outlier statistics: {loaded.source.label}, {args.windows} × {args.window} tokens\n\n"
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average before: "
        + ", ".join(f"{x:.1f}" for x in os.getloadavg())
        + "\n"
    )
    rows: list[tuple[str, str, str]] = []
    forward, _ = timed(plain_forward, model, ids)
    rows.append(("plain forward (use_cache=True), cold", f"{forward:.2f} s", ""))
    forward_warm = min(timed(plain_forward, model, ids)[0] for _ in range(args.repeats))
    rows.append(("plain forward, warm", f"{forward_warm:.2f} s", "the floor"))

    with PeakRss() as memory:
        seconds, stats = timed(collect_stats, model, ids)
    rows.append(("collect_stats, cold", f"{seconds:.2f} s", f"extra RAM {memory.extra / 2**20:,.0f} MiB"))
    warm, extra = [], []
    for _ in range(args.repeats):
        with PeakRss() as memory:
            warm.append(timed(collect_stats, model, ids)[0])
        extra.append(memory.extra)
    rows.append(("collect_stats, warm", f"{min(warm):.2f} s", f"extra RAM {max(extra) / 2**20:,.0f} MiB"))
    rows.append(("Stats object", f"{stats.nbytes() / 2**20:.1f} MiB", f"{len(stats.sites)} sites"))

    seconds, weights = timed(outliers.weight_stats, model)
    rows.append(("weight_stats (every linear + head), cold", f"{seconds:.2f} s", f"{len(weights)} weights"))
    rows.append(
        (
            "weight_stats, warm",
            f"{min(timed(outliers.weight_stats, model)[0] for _ in range(args.repeats)):.2f} s",
            "",
        )
    )
    scheme = QuantScheme(4, "int", True, "group", 64)
    seconds, ranking = timed(outliers.sensitivity, stats, model, scheme)
    rows.append((f"sensitivity ({scheme.label}), cold", f"{seconds:.2f} s", f"{len(ranking)} tensors"))
    rows.append(
        (
            "sensitivity, warm",
            f"{min(timed(outliers.sensitivity, stats, model, scheme)[0] for _ in range(args.repeats)):.2f} s",
            "",
        )
    )
    analyses = lambda: (  # noqa: E731 - everything the page derives from a Stats on each rerun
        outliers.residual_outliers(stats),
        outliers.kv_contrast(stats),
        outliers.llm_int8_outliers(stats),
        outliers.kivi_summary(stats),
        outliers.kivi_summary(stats, 0),
        [outliers.site_matrix(stats, ("activation", "residual"), s) for s in outliers.ACTIVATION_STATISTICS],
        [outliers.weight_matrix(weights, s) for s in outliers.WEIGHT_STATISTICS],
    )
    rows.append(
        ("analyses of cached stats (all tables)", f"{min(timed(analyses)[0] for _ in range(3)):.3f} s", "")
    )
    if not args.no_page:
        for name, seconds in page_rerender(args.windows, args.window):
            rows.append((name, f"{seconds:.2f} s", "AppTest, all four tabs"))

    print("| step | time | note |\n| --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")

    top = outliers.residual_outliers(stats)
    contrast = outliers.kv_contrast(stats)
    kivi = {(r["tensor"], r["layout"], r["bits"]): r["SQNR (dB)"] for r in outliers.kivi_summary(stats)}
    print("\n| residual channel | max abs | at layer | x median | layers >= 10x median | token in window |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in top:
        print(
            f"| {r['channel']} | {r['max |x|']:,.0f} | {r['at layer']} | {r['× median']:.0f} | "
            f"{r['layers ≥ 10× median']} | {r['peak token position in window']} |"
        )
    key_ratio = statistics.median(r["key max/median"] for r in contrast)
    value_ratio = statistics.median(r["value max/median"] for r in contrast)
    print(
        f"\nKeys: largest/median channel abs-max {key_ratio:.2f}x; values {value_ratio:.2f}x "
        "(median over layers)."
    )
    systematic = [r for r in outliers.llm_int8_outliers(stats) if r["systematic"]]
    print(
        "LLM.int8() systematic features at 6.0: "
        + ", ".join(
            f"{r['feature dim']} ({r['% layers']:.0f}% layers, {r['% tokens']:.0f}% tokens)"
            for r in systematic
        )
    )
    print("\n| KV SQNR (dB), mean over layers and heads | int8 | int4 | int2 |\n| --- | --- | --- | --- |")
    for tensor in ("key", "value"):
        for layout in ("per-channel", "per-token"):
            print(
                f"| {tensor} {layout} | "
                + " | ".join(f"{kivi[(tensor, layout, b)]:.1f}" for b in (8, 4, 2))
                + " |"
            )
    print("\nload average after: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
