"""Which kernel (and which layout) a packed layer uses: measured on this device, once, never preferred by hand.

Several kernels can multiply one layout (on a GPU the int4 nibbles go through a Triton GEMV, a Triton GEMM
or dequantize-then-cuBLAS; on a CPU int8 weights go through aten's packed int8 op or dequantize-then-
matmul), and which is fastest depends on the device and on the number of rows. So the dispatch table
(engine.kernels.dispatch) lists what *can* run, and this module decides what *does*: per (device, format,
layout, group size, compute dtype, batch bucket) it times every candidate once on a probe layer of the
same format (PROBE_SHAPES: a Llama-2-7B projection on a GPU, a smaller one on a CPU), checks each result
against the reference (dequantize + matmul) and keeps the fastest correct one. A candidate that raises or
is wrong is refused, with the reason. A single candidate is chosen without timing.

Layouts are chosen the same way at pack time, where more than one stores a format on a device (W4A16 on a
GPU: tinygemm's own layout or our nibbles): the layout whose best kernel is fastest at one row (decode).

Measurements are kept for the process and in a small JSON file in the cache folder ($QE_CACHE_DIR, else
~/.cache/quantization-explorer), keyed by the device's name and the torch / Triton versions, so a new
process on the same machine does not measure again; QE_KERNEL_CHOICE_CACHE=off keeps them in memory only.
`measured_rows()` is the table the Speed page shows.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

BUCKETS = (1, 4, 16, 64, 256)  # rows per call; a call uses the first bucket >= its rows, the last beyond it
PROBE_SHAPES = {"cuda": (4096, 4096), "cpu": (1024, 1024)}  # (out, in) of the layer each choice is timed on
REPEATS = {"cuda": 20, "cpu": 5}
WRONG = 2e-2  # relative error against the reference beyond which a candidate is refused


def bucket(tokens: int) -> int:
    for size in BUCKETS:
        if tokens <= size:
            return size
    return BUCKETS[-1]


@dataclass
class Measurement:
    device: str  # the device's name
    fmt: str
    layout: str
    group_size: int | None
    compute_dtype: str
    tokens: int  # the bucket: rows the candidates were timed at
    probe: tuple[int, int]  # (out, in) of the probe layer
    microseconds: dict[str, float] = field(default_factory=dict)  # candidate -> median µs, correct ones
    refused: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not eligible
    chosen: str = ""
    versions: str = ""  # torch (and Triton) versions it was measured with
    when: float = 0.0  # time.time() of the measurement: the latest one is shown


_LOCK = threading.RLock()
_MEMORY: dict[str, Measurement] = {}
_LOADED: set[str] = set()  # files already read into _MEMORY


def device_name(device_type: str) -> str:
    if device_type == "cuda":
        return f"cuda: {torch.cuda.get_device_name()}"
    return f"cpu: {_processor()}, {torch.get_num_threads()} threads"  # speed depends on the threads


@functools.cache
def _processor() -> str:
    return platform.processor() or platform.machine()


@functools.cache
def _versions() -> str:
    try:
        import triton

        return f"torch {torch.__version__}, triton {triton.__version__}"
    except ImportError:
        return f"torch {torch.__version__}"


def _file() -> Path | None:
    if os.environ.get("QE_KERNEL_CHOICE_CACHE", "").lower() in ("off", "0", "no"):
        return None
    root = os.environ.get("QE_CACHE_DIR") or Path.home() / ".cache" / "quantization-explorer"
    return Path(root) / "kernel-choice.json"


def _load() -> None:
    path = _file()
    if path is None or str(path) in _LOADED:
        return
    _LOADED.add(str(path))
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    for key, value in stored.items() if isinstance(stored, dict) else ():
        try:
            value["probe"] = tuple(value["probe"])
            measurement = Measurement(**value)
        except (TypeError, KeyError):
            continue  # an entry from another version of this file: measured again when needed
        if measurement.versions == _versions():  # other torch / Triton versions: measured again
            _MEMORY.setdefault(key, measurement)


def _save() -> None:
    path = _file()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps({k: asdict(v) for k, v in _MEMORY.items()}, indent=1))
        os.replace(temporary, path)  # whole files only: another process may read it at the same time
    except OSError:
        pass  # a read-only home: the choice is kept for this process


def forget() -> None:
    """Drop every measurement from memory (tests; the file stays unless QE_KERNEL_CHOICE_CACHE is off)."""
    with _LOCK:
        _MEMORY.clear()
        _LOADED.clear()
        _PROBES.clear()


def _key(*parts) -> str:
    return " | ".join(str(p) for p in parts)


# -- timing ---------------------------------------------------------------------------------------------------


def _median_seconds(call, device_type: str) -> float:
    repeats = REPEATS["cuda" if device_type == "cuda" else "cpu"]
    call()
    call()
    if device_type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(repeats):  # back to back: the GPU's time per call, not the host's
            call()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / repeats
    samples = []
    for _ in range(repeats):
        begin = time.perf_counter()
        call()
        samples.append(time.perf_counter() - begin)
    return statistics.median(samples)


def _time_candidates(probe, candidates, tokens: int, measurement: Measurement) -> None:
    """Fill `measurement` with each candidate's median time on `probe`, refusing wrong or failing ones."""
    device = probe.qweight.device
    generator = torch.Generator().manual_seed(0)
    rows = torch.randn(tokens, probe.in_features, generator=generator).to(device, probe.compute_dtype)
    expected = probe.reference_matmul(rows).float()
    scale = float(expected.norm()) or 1.0
    for entry in candidates:
        try:
            y = entry.kernel(rows, probe)
            if not bool(torch.isfinite(y).all()):
                measurement.refused[entry.name] = "returned NaN or inf"
                continue
            error = float((y.float().cpu() - expected).norm()) / scale
            if error > WRONG:
                measurement.refused[entry.name] = f"relative error {error:.2g} against the reference"
                continue
            seconds = _median_seconds(lambda e=entry: e.kernel(rows, probe), device.type)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001  (a candidate that fails is simply not chosen)
            measurement.refused[entry.name] = f"raised {type(exc).__name__}: {str(exc)[:200]}"
            continue
        measurement.microseconds[entry.name] = seconds * 1e6


def _probe(layer, layout: str | None = None, build=None):
    """A random layer of `layer`'s format, group, scheme and compute dtype at the device's probe shape (or
    `layer` itself where the probe shape does not fit its group), built by `build` (QuantLinear.from_linear;
    by default `layer`'s own class's)."""
    build = build or type(layer).from_linear
    device = layer.qweight.device
    out_features, in_features = PROBE_SHAPES["cuda" if device.type == "cuda" else "cpu"]
    group = layer.group_size
    if group is not None and in_features % group:
        return layer if layout in (None, layer.layout) else None
    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(in_features, out_features, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=generator) * 0.02)
    # activations in the compute dtype: the layout then derives the very compute dtype `layer` has
    return build(
        linear.to(device, layer.compute_dtype),
        layer.weight_scheme,
        layer.act_scheme,
        layout=layout or layer.layout,
    )


_PROBES: dict[
    tuple, object
] = {}  # one probe per (device, format, layout, group, scheme, dtype): every bucket


def _cached_probe(layer, device_type: str):
    """`_probe(layer)`, built once for all the buckets it is timed at (a 4096×4096 probe is quantized on
    the CPU: seconds)."""
    key = (device_type, layer.fmt, layer.layout, layer.group_size, layer.weight_scheme, layer.act_scheme)
    key += (layer.compute_dtype,)
    if key not in _PROBES:
        if len(_PROBES) >= 8:
            _PROBES.clear()
        _PROBES[key] = _probe(layer)
    return _PROBES[key]


def choose(layer, device_type: str, tokens: int, candidates: list, measure: bool = True):
    """The fastest correct candidate (KernelEntry) for `layer` at `tokens` rows, measured once per key.
    Returns None when every candidate was refused (the caller runs the reference)."""
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    size = bucket(tokens)
    names = tuple(entry.name for entry in candidates)
    key = _key(
        device_name(device_type),
        _versions(),
        layer.fmt,
        layer.layout,
        layer.group_size,
        layer.compute_dtype,
        size,
        ",".join(names),
    )
    with _LOCK:
        _load()
        found = _MEMORY.get(key)
        if found is None:
            if not measure:  # under torch.compile: nothing is timed while tracing
                return candidates[0]
            probe = _cached_probe(layer, device_type)
            found = Measurement(
                device_name(device_type),
                layer.fmt,
                layer.layout,
                layer.group_size,
                str(layer.compute_dtype).removeprefix("torch."),
                size,
                (probe.out_features, probe.in_features),
            )
            _time_candidates(probe, candidates, size, found)
            found.versions, found.when = _versions(), time.time()
            found.chosen = min(found.microseconds, key=found.microseconds.get) if found.microseconds else ""
            _MEMORY[key] = found
            _save()
    by_name = dict(zip(names, candidates, strict=True))
    return by_name.get(found.chosen)


def choose_layout(
    fitting: list, fmt: str, device_type: str, scheme, act_scheme, compute_dtype, group, build, candidates
):
    """The name of the layout (of `fitting`, more than one) whose fastest kernel is fastest at one row.
    `build` makes a probe layer (QuantLinear.from_linear), `candidates(layer, device_type, tokens)` lists
    the kernels that can run it (engine.kernels.dispatch.candidates): passed in, as both modules import
    this one."""
    key = _key(device_name(device_type), _versions(), fmt, "layout", group, compute_dtype, ",".join(fitting))
    with _LOCK:
        _load()
        found = _MEMORY.get(key)
        if found is None:
            stand_in = _LayerSpec(fmt, scheme, act_scheme, compute_dtype, group, device_type)
            found = Measurement(
                device_name(device_type),
                fmt,
                "/".join(fitting),
                group,
                str(compute_dtype).removeprefix("torch."),
                1,
                (0, 0),
            )
            for name in fitting:
                try:
                    probe = _probe(stand_in, layout=name, build=build)
                except (ValueError, RuntimeError) as exc:
                    found.refused[name] = str(exc)[:200]
                    continue
                if probe is None:
                    found.refused[name] = "the probe shape does not fit this group size"
                    continue
                found.probe = (probe.out_features, probe.in_features)
                trial = Measurement(found.device, fmt, name, group, found.compute_dtype, 1, found.probe)
                _time_candidates(probe, candidates(probe, device_type, 1), 1, trial)
                if trial.microseconds:
                    best = min(trial.microseconds, key=trial.microseconds.get)
                    found.microseconds[name] = trial.microseconds[best]
                else:
                    found.refused[name] = "; ".join(f"{k}: {v}" for k, v in trial.refused.items()) or (
                        "no kernel runs it here"
                    )
            found.chosen = min(found.microseconds, key=found.microseconds.get) if found.microseconds else ""
            found.versions, found.when = _versions(), time.time()
            _MEMORY[key] = found
            _save()
    return found.chosen or fitting[-1]


@dataclass
class _LayerSpec:
    """What _probe reads of a layer, for a layout choice made before any layer exists."""

    fmt: str
    weight_scheme: object
    act_scheme: object
    compute_dtype: torch.dtype
    group_size: int | None
    device_type: str
    layout: str = ""

    @property
    def qweight(self) -> Tensor:
        return torch.empty(0, device=self.device_type if self.device_type != "cuda" else "cuda")


def measured_rows(device_type: str | None = None) -> list[dict]:
    """The measurements so far, one row per (choice, candidate), for a table: what the Speed page shows."""
    with _LOCK:
        _load()
        measurements = list(_MEMORY.values())
    rows = []
    prefix = None if device_type is None else device_name(device_type)
    latest: dict[tuple, Measurement] = {}  # one measurement per choice: the latest, with today's versions
    for m in measurements:
        if (prefix is not None and m.device != prefix) or m.versions != _versions():
            continue
        what = (m.device, m.fmt, m.layout, m.group_size, m.compute_dtype, m.tokens)
        if what not in latest or m.when > latest[what].when:
            latest[what] = m
    for m in latest.values():
        what = "layout" if "/" in m.layout else "kernel"
        for name in sorted({*m.microseconds, *m.refused}, key=lambda n: m.microseconds.get(n, float("inf"))):
            rows.append(
                {
                    "format": m.fmt,
                    "choice": what,
                    "layout": m.layout,
                    "group": m.group_size,
                    "dtype": m.compute_dtype,
                    "rows": m.tokens,
                    "candidate": name,
                    "µs": m.microseconds.get(name),
                    "chosen": name == m.chosen,
                    "note": m.refused.get(name, ""),
                    "probe": f"{m.probe[0]}×{m.probe[1]}",
                }
            )
    return rows
