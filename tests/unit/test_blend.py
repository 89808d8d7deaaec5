"""Blending model and LightGBM (`gogooku3.predictors.blend`) and the market context of the model (`model.tft`)."""

import datetime as dt

import numpy as np
import polars as pl
import pytest
import torch

from gogooku3.core.errors import ConfigError
from gogooku3.evaluation import metrics
from gogooku3.model.tft import MarketContext, market_state
from gogooku3.predictors.blend import choose_weights, combine, weight_grid


def _frames(seed: int = 0, days: int = 40, n: int = 60):
    """Model and baseline predictions that each see a different half of the target, plus independent noise."""
    rng = np.random.default_rng(seed)
    dates = [dt.date(2024, 1, 1) + dt.timedelta(days=k) for k in range(days)]
    a, b = rng.normal(size=(days, n)), rng.normal(size=(days, n))
    y = a + b + rng.normal(size=(days, n))
    pm = a + 0.5 * rng.normal(size=(days, n))
    pb = 100.0 * (b + 0.5 * rng.normal(size=(days, n))) + 7.0  # another scale and level: standardised away
    key = {"Date": np.repeat(dates, n).tolist(), "Code": [f"{i:04d}" for i in range(n)] * days}
    model = pl.DataFrame({**key, "pred_1d": pm.ravel(), "target_1d": y.ravel()})
    base = pl.DataFrame({**key, "pred_1d": pb.ravel()})
    return model, base


def _ric(df):
    return float(metrics.daily_ic(df, "pred_1d", "target_1d")["rank_ic"].mean())


@pytest.mark.parametrize("method", ["zscore", "rank"])
def test_blend_weights_end_points_and_choice(method):
    model, base = _frames()
    only_model = combine(model, base, {1: 1.0}, method)
    only_base = combine(model, base, {1: 0.0}, method)
    assert _ric(only_model) == pytest.approx(_ric(model))  # w = 1: the model's ranking
    assert _ric(only_base) == pytest.approx(_ric(base.join(model.drop("pred_1d"), on=["Date", "Code"])))
    choice = choose_weights(model, base, [1], method, weight_grid(0.1))
    w = choice.weights[1]
    assert 0.2 <= w <= 0.8  # two halves of the signal: mix them
    assert max(choice.val_rank_ic[1]) > max(_ric(only_model), _ric(only_base)) + 0.02
    assert choice.val_rank_ic[1][-1] == pytest.approx(_ric(only_model))


def test_blend_keeps_the_model_where_the_baseline_lacks_a_horizon_and_checks_config():
    model, base = _frames()
    model = model.with_columns(pred_5d=pl.col("pred_1d"), target_5d=pl.col("target_1d"))
    choice = choose_weights(model, base, [1, 5], "zscore", weight_grid(0.25))
    assert choice.weights[5] == 1.0 and 5 not in choice.val_rank_ic
    out = combine(model, base, choice.weights, "zscore")
    assert out.columns == ["Date", "Code", "pred_1d", "pred_5d", "target_1d", "target_5d"]
    assert out.height == model.height
    with pytest.raises(ConfigError, match="grid_step"):
        weight_grid(0)
    with pytest.raises(ConfigError, match=r"blend.method"):
        combine(model, base, {1: 0.5}, "mean")


def test_blend_uses_only_the_rows_with_both_predictions():
    model, base = _frames()
    base = base.filter(pl.col("Code") != "0000")
    out = combine(model, base, {1: 0.5}, "zscore")
    assert out.height == model.height - 40 and "0000" not in out["Code"].to_list()
    day = out.filter(pl.col("Date") == out["Date"].min())["pred_1d"]
    assert abs(day.mean()) < 1e-6  # standardised within the day


def test_market_state_reads_the_window_and_film_starts_as_identity():
    torch.manual_seed(0)
    n, L = 200, 60
    eps = torch.randn(n, L) * 0.02
    calm = torch.randn(L)[None] * 0.005 + eps
    stormy = torch.randn(L)[None] * 0.03 + eps
    s_calm, s_storm = market_state(calm), market_state(stormy)
    assert s_calm.shape == (MarketContext.N_STATE,) and torch.isfinite(s_calm).all()
    assert s_storm[0] > s_calm[0] + 1.0 and s_storm[2] > s_calm[2] + 1.0  # log market volatility
    up = eps + 0.01  # every stock up 1 % a day
    assert market_state(up)[7] > 2.0 and market_state(up)[11] > 0.5  # trend and breadth
    valid = torch.ones(n, L, dtype=torch.bool)
    valid[:, :30] = False  # an invalid first half is ignored
    junk = stormy.clone()
    junk[:, :30] = 5.0
    assert torch.allclose(market_state(junk, valid), market_state(torch.cat([calm[:, :30], stormy[:, 30:]], 1), valid))
    ctx = MarketContext(16, 0.1).eval()
    h = torch.randn(n, 16)
    assert torch.equal(ctx(h, stormy), h)  # zero-initialised: identity at start
