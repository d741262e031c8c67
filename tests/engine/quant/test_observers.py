"""Observers: calibrated ranges and static qparams that plug into the primitives."""

import pytest
import torch

from engine.quant.metrics import mse
from engine.quant.observers import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
)
from engine.quant.primitives import fake_quantize, qparams_from_range
from engine.quant.schemes import QuantScheme

pytestmark = pytest.mark.usefixtures("single_thread")

PER_TENSOR_INT8 = QuantScheme(8, granularity="tensor")


def _batches(n=4, seed=0, shape=(8, 32, 64)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) * (i + 1) for i in range(n)]


def test_minmax_tracks_global_extremes_per_tensor_and_per_feature():
    batches = _batches()
    everything = torch.stack(batches)
    obs, per_feature = MinMaxObserver(), MinMaxObserver(per_channel=True)
    for b in batches:
        obs.update(b)
        per_feature.update(b)
    lo, hi = obs.range()
    assert lo.shape == () and float(lo) == float(everything.min()) and float(hi) == float(everything.max())
    lo, hi = per_feature.range()
    flat = everything.reshape(-1, 64)
    assert lo.shape == (64,) and torch.equal(lo, flat.amin(dim=0)) and torch.equal(hi, flat.amax(dim=0))
    scale, zero = obs.qparams(PER_TENSOR_INT8)
    assert zero is None and float(scale) >= float(everything.abs().max()) / 127
    scale, zero = per_feature.qparams(QuantScheme(8, symmetric=False, granularity="channel"))
    assert scale.shape == (64,) and zero.shape == (64,)
    with pytest.raises(ValueError, match="feature count changed"):
        per_feature.update(torch.randn(4, 32))


def test_moving_average_weights_each_new_batch_by_momentum():
    obs = MovingAverageMinMaxObserver(momentum=0.25)
    obs.update(torch.tensor([-1.0, 2.0]))
    obs.update(torch.tensor([-5.0, 10.0]))
    lo, hi = obs.range()
    assert float(lo) == pytest.approx(-1 + 0.25 * (-5 + 1)) and float(hi) == pytest.approx(2 + 0.25 * 8)
    with pytest.raises(ValueError, match="momentum must be in"):
        MovingAverageMinMaxObserver(momentum=0.0)


def test_percentile_ignores_rare_outliers_and_100_is_minmax():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(400_000, generator=g)
    data[:10] = 50.0  # 0.0025% outliers
    p999, p100 = PercentileObserver(99.9), PercentileObserver(100.0)
    for chunk in data.split(100_000):
        p999.update(chunk)
        p100.update(chunk)
    lo, hi = p999.range()
    width = (50 - float(data.min())) / 2048
    assert float(hi) == pytest.approx(3.09, abs=0.03 + width) and float(lo) == pytest.approx(
        -3.09, abs=0.03 + width
    )
    lo, hi = p100.range()
    assert float(lo) == pytest.approx(float(data.min()), abs=1e-5) and float(hi) == pytest.approx(
        50.0, abs=1e-4
    )
    with pytest.raises(ValueError, match="percentile must be in"):
        PercentileObserver(30)


def test_histogram_rebins_when_the_range_grows():
    g = torch.Generator().manual_seed(1)
    data = torch.randn(200_000, generator=g)
    one_shot, growing = PercentileObserver(99.0), PercentileObserver(99.0)
    one_shot.update(data)
    for chunk in sorted(data.split(20_000), key=lambda c: float(c.abs().max())):  # range widens each time
        growing.update(chunk)
    width = float(data.max() - data.min()) / 2048
    for a, b in zip(one_shot.range(), growing.range(), strict=True):
        assert float(a) == pytest.approx(float(b), abs=3 * width)
    assert float(growing.hist.sum()) == pytest.approx(200_000)


def test_mse_observer_clips_outliers_and_beats_minmax():
    g = torch.Generator().manual_seed(2)
    data = torch.randn(64, 256, generator=g)
    data[0, :4] = torch.tensor([40.0, -35.0, 30.0, 25.0])
    for scheme in (
        QuantScheme(4, granularity="tensor"),
        QuantScheme(8, granularity="tensor"),
        QuantScheme(4, symmetric=False, granularity="tensor"),
        QuantScheme(4, "nf4", granularity="tensor"),
    ):
        mse_obs, minmax = MSEObserver(scheme), MinMaxObserver()
        mse_obs.update(data)
        minmax.update(data)
        assert mse_obs.best_ratio(scheme) < 1.0
        static_mse = mse(data, fake_quantize(data, scheme, *mse_obs.qparams(scheme)))
        static_minmax = mse(data, fake_quantize(data, scheme, *minmax.qparams(scheme)))
        assert static_mse < static_minmax


def test_mse_observer_range_uses_its_scheme():
    data = torch.randn(10_000, generator=torch.Generator().manual_seed(3))
    obs = MSEObserver(QuantScheme(4, granularity="tensor"))
    obs.update(data)
    lo, hi = obs.range()
    assert float(hi) < float(data.max()) and float(lo) > float(data.min())
    assert set(obs.errors(QuantScheme(8, granularity="tensor"))) == set(obs.ratios)


def test_static_and_dynamic_are_both_expressible():
    x = torch.randn(4, 16, 64, generator=torch.Generator().manual_seed(4))
    per_tensor = QuantScheme(8, symmetric=False, granularity="tensor")
    obs = MinMaxObserver()
    obs.update(x)
    static = fake_quantize(x, per_tensor, *obs.qparams(per_tensor))
    dynamic = fake_quantize(x, per_tensor)
    assert torch.equal(static, dynamic)  # calibrated on x itself, per-tensor static == dynamic
    per_feature = MinMaxObserver(per_channel=True)
    per_feature.update(x)
    channel = QuantScheme(8, granularity="channel")
    y = fake_quantize(x, channel, *per_feature.qparams(channel))
    assert y.shape == x.shape
    scale, _ = qparams_from_range(*per_feature.range(), channel)
    assert torch.equal(scale, per_feature.qparams(channel).scale)


def test_observer_errors_name_the_fix():
    obs = MinMaxObserver()
    with pytest.raises(ValueError, match="has seen no data; call update"):
        obs.range()
    obs.update(torch.randn(4, 8))
    with pytest.raises(ValueError, match="use per_channel=True or granularity 'tensor'"):
        obs.qparams(QuantScheme(8, granularity="channel"))
    with pytest.raises(ValueError, match="static group-wise activation scales are not supported"):
        obs.qparams(QuantScheme(4, granularity="group", group_size=4))
    with pytest.raises(ValueError, match="use per_channel=False or granularity 'channel'"):
        MinMaxObserver(per_channel=True).qparams(PER_TENSOR_INT8)
    hist = PercentileObserver()
    hist.update(torch.randn(100))
    with pytest.raises(ValueError, match="keeps one histogram per tensor"):
        hist.qparams(QuantScheme(8, granularity="channel"))
    with pytest.raises(ValueError, match="has seen no data"):
        MSEObserver().best_ratio(PER_TENSOR_INT8)
    with pytest.raises(ValueError, match="double_quant applies to per-block weight scales"):
        MinMaxObserver(per_channel=True).qparams(QuantScheme(8, granularity="channel", double_quant=True))
