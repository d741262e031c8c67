"""Reading outliers out of statistics: weights, LLM.int8() features, residual channels, KIVI, sensitivity.

Everything here takes a `Stats` from `engine.analysis.stats.collect_stats` (or a model, for weights) and returns
plain values for tables and charts.

Where we depart from the papers:
- LLM.int8() (Dettmers et al. 2022) calls feature dimension j an outlier when some value has
  |x_j| >= 6.0 in the inputs of the attention projections and the first FFN layer, in at least 25% of
  the layers and at least 6% of the sequence positions. We apply exactly that to the linear inputs that
  read the residual stream (q/k/v and gate/up in a Llama): a layer counts when either of its two inputs
  crosses the threshold, a token position counts when any layer's input does (`Stats.input_token_max`).
  Positions are tokens of our calibration windows, not of the paper's evaluation sets.
- SmoothQuant's per-channel picture plots max |X_j| over tokens next to max |W_j| over output rows
  (`WeightStats.in_absmax`); we plot both without migrating anything.
- KIVI's recipe is measured in `engine.analysis.stats` (see its docstring); `kivi_summary` averages the SQNR over
  layers and heads, it does not run attention on the quantized cache.
- Sensitivity is the SQNR of one tensor under the sidebar scheme, a proxy: it ignores how errors
  propagate through the network. Weights are those of the decoder layers (not the head); activations
  are quantized per token (dynamic), keys and values per token and head, both on the stored sample of
  `sample_tokens` tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from engine.analysis.site_stats import CHUNK_ELEMENTS, KIVI_BITS, KIVI_LAYOUTS, KV_KINDS, SiteStats, Stats
from engine.analysis.stats import is_output_projection
from engine.quant.metrics import sqnr_db
from engine.quant.weight_formats import Format, check_fits, chunks_by_row, fake_quantize_any

ACTIVATION_STATISTICS = ("abs-max", "kurtosis", "max/median channel", "outlier channels")


# -- weights: engine/analysis/weight_stats.py (re-exported here for the page) ----------------------------------
from engine.analysis.weight_stats import (  # noqa: E402, F401
    WEIGHT_STATISTICS,
    WeightStats,
    layer_of,
    weight_matrix,
    weight_stats,
)

# -- activations -----------------------------------------------------------------------------------------


def site_matrix(
    stats: Stats, kinds: tuple[str, ...], statistic: str, threshold: float = 6.0
) -> tuple[list[str], list[int], Tensor]:
    """(site rows, layer columns, (sites, layers) values) of one ACTIVATION_STATISTICS entry."""
    if statistic not in ACTIVATION_STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; use one of {ACTIVATION_STATISTICS}")
    sites = [site for site in stats.sites if site.kind in kinds]
    labels = list(dict.fromkeys(site.label for site in sites))
    values = torch.full((len(labels), stats.layers), math.nan)
    for site in sites:
        value = {
            "abs-max": lambda s: float(s.absmax.max()),
            "kurtosis": lambda s: s.tensor_kurtosis,
            "max/median channel": lambda s: float(s.absmax.max() / s.absmax.median().clamp_min(1e-30)),
            "outlier channels": lambda s: float((s.absmax >= threshold).sum()),
        }[statistic](site)
        values[labels.index(site.label), site.layer] = value
    return labels, list(range(stats.layers)), values


def notable_channels(values: Tensor, top: int = 5, ratio: float = 3.0) -> list[int]:
    """Up to `top` channels, largest first, whose value is at least `ratio` times the median channel's."""
    floor = ratio * float(values.median())
    order = values.argsort(descending=True)[:top].tolist()
    return [index for index in order if float(values[index]) >= floor]


def llm_int8_outliers(
    stats: Stats, threshold: float = 6.0, min_layers: float = 0.25, min_tokens: float = 0.06
) -> list[dict]:
    """LLM.int8() feature table: dims with |x| >= threshold in any layer, systematic ones first."""
    if threshold <= 0:
        raise ValueError(f"threshold must be positive (got {threshold}); LLM.int8() uses 6.0")
    reading = [
        site
        for site in stats.by_kind("activation")
        if site.channels == stats.hidden_size and site.name in _residual_readers(stats)
    ]
    if not reading or stats.input_token_max is None:
        raise ValueError("collect the 'activations' target to find LLM.int8() outlier features")
    affected = torch.zeros(stats.layers, stats.hidden_size, dtype=torch.bool)  # (layers, features)
    peak = torch.zeros(stats.hidden_size)
    for site in reading:
        affected[site.layer] |= site.absmax >= threshold
        peak = torch.maximum(peak, site.absmax)
    layer_share = affected.float().mean(0)  # (features,)
    token_share = (stats.input_token_max.float() >= threshold).float().mean(0)  # (features,)
    rows = [
        {
            "feature dim": dim,
            "% layers": 100 * float(layer_share[dim]),
            "% tokens": 100 * float(token_share[dim]),
            "max |x|": float(peak[dim]),
            "systematic": bool(layer_share[dim] >= min_layers and token_share[dim] >= min_tokens),
        }
        for dim in layer_share.nonzero().flatten().tolist()
    ]
    return sorted(rows, key=lambda r: (not r["systematic"], -r["% layers"], -r["max |x|"]))


def _residual_readers(stats: Stats) -> set[str]:
    return {site.name for site in stats.by_kind("activation") if not is_output_projection(site.consumers[0])}


def residual_outliers(stats: Stats, ratio: float = 10.0, top: int = 3) -> list[dict]:
    """Residual-stream channels that dwarf the rest: per channel, where and how large it peaks."""
    residual = stats.by_kind("residual")
    if not residual:
        raise ValueError("collect the 'residual' target to find residual-stream outlier channels")
    absmax = torch.stack([site.absmax for site in residual])  # (layers, hidden)
    medians = absmax.median(1, keepdim=True).values  # (layers, 1)
    strong = absmax >= ratio * medians  # (layers, hidden)
    tops = absmax.argmax(1)  # (layers,)
    order = sorted(
        range(stats.hidden_size),
        key=lambda c: (-int(strong[:, c].sum()), -float(absmax[:, c].max())),
    )[:top]
    rows = []
    for channel in order:
        layer = int(absmax[:, channel].argmax())
        site = residual[layer]
        rows.append(
            {
                "channel": channel,
                "max |x|": float(absmax[layer, channel]),
                "at layer": site.layer,
                "median channel |x| there": float(medians[layer, 0]),
                "× median": float(absmax[layer, channel] / medians[layer, 0]),
                f"layers ≥ {ratio:g}× median": int(strong[:, channel].sum()),
                "layers as top channel": int((tops == channel).sum()),
                "peak token position in window": int(site.token_absmax.argmax()) % max(stats.window, 1),
            }
        )
    return [row for row in rows if row[f"layers ≥ {ratio:g}× median"] > 0] or rows[:1]


# -- keys and values -------------------------------------------------------------------------------------


def head_channel_ratio(site: SiteStats) -> Tensor:
    """(heads,) largest over median channel abs-max within each KV head."""
    per_head = site.absmax.view(site.heads, site.head_dim)  # (heads, head_dim)
    return per_head.amax(1) / per_head.median(1).values.clamp_min(1e-30)


def kv_contrast(stats: Stats) -> list[dict]:
    """Per layer: keys' vs values' largest-over-median channel abs-max (mean over heads), kurtosis."""
    keys, values = stats.by_kind("key"), stats.by_kind("value")
    if not keys:
        raise ValueError("collect the 'kv' target to compare keys and values")
    return [
        {
            "layer": k.layer,
            "key max/median": float(head_channel_ratio(k).mean()),
            "value max/median": float(head_channel_ratio(v).mean()),
            "key abs-max": float(k.absmax.max()),
            "value abs-max": float(v.absmax.max()),
            "key kurtosis": k.tensor_kurtosis,
            "value kurtosis": v.tensor_kurtosis,
        }
        for k, v in zip(keys, values, strict=True)
    ]


def kivi_summary(stats: Stats, layer: int | None = None) -> list[dict]:
    """SQNR (dB) of keys and values quantized per channel vs per token, per bits and head.

    With `layer` None the SQNR is averaged over layers (in dB) and the head is "all" (also averaged).
    """
    if stats.kivi_sqnr is None:
        raise ValueError("collect the 'kv' target to compare per-channel and per-token KV quantization")
    sqnr = stats.kivi_sqnr  # (layers, key/value, layouts, bits, heads)
    rows = []
    for slot, kind in enumerate(KV_KINDS):
        for layout_index, layout in enumerate(KIVI_LAYOUTS):
            for bits_index, bits in enumerate(KIVI_BITS):
                if layer is None:
                    rows.append(
                        {
                            "tensor": kind,
                            "layout": layout,
                            "bits": bits,
                            "head": "all",
                            "SQNR (dB)": float(sqnr[:, slot, layout_index, bits_index].mean()),
                        }
                    )
                    continue
                for head, value in enumerate(sqnr[layer, slot, layout_index, bits_index].tolist()):
                    rows.append(
                        {"tensor": kind, "layout": layout, "bits": bits, "head": head, "SQNR (dB)": value}
                    )
    return rows


# -- sensitivity -----------------------------------------------------------------------------------------


def _sqnr_under(x: Tensor, scheme: Format) -> tuple[float, str]:
    """SQNR of x: (rows, cols) under the scheme (or GGUF type), over row chunks when blocks never span rows."""
    try:
        check_fits(scheme, x.shape)
    except ValueError as exc:
        return math.nan, str(exc)
    if not chunks_by_row(scheme):  # one scale, scales compressed together, or NVFP4's tensor scale
        return sqnr_db(x, fake_quantize_any(x, scheme)), ""
    rows = max(1, CHUNK_ELEMENTS // x.shape[1])
    signal = noise = 0.0
    for start in range(0, x.shape[0], rows):
        chunk = x[start : start + rows]
        error = fake_quantize_any(chunk, scheme).sub_(chunk)
        signal += float(torch.sum(chunk * chunk, dtype=torch.float64))
        noise += float(torch.sum(error * error, dtype=torch.float64))
    if noise == 0:
        return math.inf, ""
    return (10 * math.log10(signal / noise) if signal > 0 else -math.inf), ""


@torch.no_grad()
def sensitivity(stats: Stats, model: torch.nn.Module, scheme: Format) -> list[dict]:
    """SQNR the scheme causes on every weight, activation (per token) and K/V (per token and head)."""
    rows = []
    for name, module in model.named_modules():
        layer = layer_of(model, name)
        if not isinstance(module, torch.nn.Linear) or layer is None:
            continue
        w = module.weight.detach().to(device="cpu", dtype=torch.float32)  # (out_features, in_features)
        value, note = _sqnr_under(w, scheme)
        rows.append(_row(layer, "weight", name.rsplit(".", 1)[-1], name, value, note))
    for site in stats.sites:
        if site.kind == "residual" or site.sample.numel() == 0:
            continue
        x = site.sample  # (tokens, channels)
        if site.kind in ("key", "value"):
            x = x.reshape(-1, site.head_dim)  # (tokens * heads, head_dim): one row per token and head
        value, note = _sqnr_under(x, scheme)
        kind = "activation" if site.kind == "activation" else site.kind
        rows.append(_row(site.layer, kind, site.label, site.name, value, note))
    return sorted(rows, key=lambda r: (math.isnan(r["SQNR (dB)"]), r["SQNR (dB)"]))


def _row(layer: int, kind: str, tensor: str, name: str, value: float, note: str) -> dict:
    return {"layer": layer, "kind": kind, "tensor": tensor, "SQNR (dB)": value, "name": name, "note": note}


def layer_sensitivity(rows: list[dict]) -> list[dict]:
    """Per layer and kind, the worst (lowest) SQNR: the layers to keep in higher precision first."""
    worst: dict[tuple[int, str], dict] = {}
    for row in rows:
        if math.isnan(row["SQNR (dB)"]):
            continue
        key = (row["layer"], row["kind"])
        if key not in worst or row["SQNR (dB)"] < worst[key]["SQNR (dB)"]:
            worst[key] = row
    return sorted(worst.values(), key=lambda r: (r["layer"], r["kind"]))
