"""Issue 21: t-stats of mean daily RankIC over overlapping h-day labels have the right size.

Null simulation: 50 stocks, i.i.d. daily returns, persistent predictions (AR(1) per stock, phi 0.98), h-day forward
returns as rolling sums of the daily ones, daily RankIC over 157 days; a nominal 5 % two-sided test of the
`metrics.mean_tstat` t (reference Student t with its ``tstat_dof``) must reject 5 % ± 1.5 % of 1,000 seeded draws.
"""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from scipy import stats

from gogooku3.evaluation import metrics

N_DAYS, N_STOCKS, DRAWS, PHI = 157, 50, 1000, 0.98


def _ranks(a: np.ndarray) -> np.ndarray:
    """Ranks along the last axis (continuous draws: no ties), centred."""
    r = a.argsort(-1).argsort(-1).astype(np.float64)
    return r - r.mean(-1, keepdims=True)


def _null_rank_ics(h: int, seed: int) -> np.ndarray:
    """(DRAWS, N_DAYS) daily RankIC of persistent predictions against h-day forward returns with no signal."""
    rng = np.random.default_rng(seed)
    shape = (DRAWS, N_DAYS, N_STOCKS)
    pred = np.empty(shape)
    pred[:, 0] = rng.standard_normal((DRAWS, N_STOCKS))
    shocks = rng.standard_normal(shape) * math.sqrt(1 - PHI**2)
    for t in range(1, N_DAYS):
        pred[:, t] = PHI * pred[:, t - 1] + shocks[:, t]
    ret = rng.standard_normal((DRAWS, N_DAYS + h - 1, N_STOCKS))  # ret[:, t]: the return earned after day t
    cum = np.concatenate([np.zeros((DRAWS, 1, N_STOCKS)), ret.cumsum(axis=1)], axis=1)
    fwd = cum[:, h : h + N_DAYS] - cum[:, :N_DAYS]  # sum of ret[t .. t + h - 1]: the overlapping h-day label
    rp, ry = _ranks(pred), _ranks(fwd)
    return (rp * ry).sum(-1) / np.sqrt((rp**2).sum(-1) * (ry**2).sum(-1))


def _rejection_rate(ics: np.ndarray, h: int) -> float:
    rejected = 0
    for x in ics:
        t = metrics.mean_tstat(x, h)
        rejected += abs(t["tstat"]) > stats.t.ppf(0.975, t["tstat_dof"])
    return rejected / len(ics)


@pytest.mark.parametrize("h", [1, 5, 20])
def test_nominal_5pct_test_rejects_5pct_under_the_null(h):
    ics = _null_rank_ics(h, seed=2100 + h)
    assert _rejection_rate(ics, h) == pytest.approx(0.05, abs=0.015)
    if h == 20:  # the simulation can tell: Newey–West with lag h − 1 (the estimator before issue 21) over-rejects
        old = [abs(x.mean() / metrics.newey_west_se(x, metrics.hac_lag(N_DAYS, h))) for x in ics]
        assert np.mean(np.array(old) > stats.t.ppf(0.975, N_DAYS - 1)) > 0.10


def test_ewc_by_hand():
    """x = 1..5 at h = 2: B = floor(0.4 · 5 / 2) = 1, Λ₁ = √(2/5) Σ x_t cos(π (t − ½) / 5) = −√0.4 (4 cos(π/10) +
    2 cos(3π/10)) (the middle cosine is 0), se² = Λ₁² / 5, so t = 3 / se = 3 / (√0.08 (4 cos(π/10) + 2 cos(3π/10)))
    ≈ 2.1299, reference Student t(1)."""
    res = metrics.mean_tstat(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), 2)
    t = 3 / (math.sqrt(0.08) * (4 * math.cos(math.pi / 10) + 2 * math.cos(3 * math.pi / 10)))
    assert t == pytest.approx(2.1299, abs=1e-4)
    assert res["tstat"] == pytest.approx(t) and res["mean"] == 3.0
    assert res["tstat_method"] == "ewc" and res["tstat_dof"] == 1 and res["hac_lag"] is None
    days = [date(2024, 1, 1) + timedelta(days=i) for i in range(5)]
    a = pl.DataFrame({"Date": days, "rank_ic": [0.1, 0.2, 0.3, 0.4, 0.5]})
    b = a.with_columns(rank_ic=pl.lit(0.0))
    p = metrics.paired_comparison(a, b, horizon=2)
    assert p["t_stat"] == pytest.approx(t) and p["tstat_dof"] == 1
    assert p["p_value"] == pytest.approx(1 - 2 / math.pi * math.atan(t))  # Student t(1) = Cauchy
    assert metrics.ewc_dof(157, 5) == 12 and metrics.ewc_dof(157, 20) == 3 and metrics.ewc_dof(12, 5) == 0
    s = metrics.summarize_ic(a.with_columns(ic=pl.col("rank_ic")), horizon=2)
    assert s["rank_ic_tstat"] == pytest.approx(t) and s["rank_ic_p_value"] == pytest.approx(p["p_value"])
    assert s["tstat_method"] == "ewc" and s["tstat_dof"] == 1


def test_ewc_needs_enough_days_and_the_1_day_t_is_unchanged():
    """B = floor(0.4 · 9 / 5) = 0: no t; the 1-day t is the Newey–West one, as before issue 21."""
    x = np.array([0.03, -0.01, 0.02, 0.05, 0.00, 0.01, 0.04, -0.02, 0.02])
    assert math.isnan(metrics.mean_tstat(x, 5)["tstat"]) and metrics.mean_tstat(x, 5)["tstat_dof"] == 0
    one = metrics.mean_tstat(x, 1)
    lag = metrics.hac_lag(9, 1)
    assert one["tstat_method"] == "newey_west" and one["hac_lag"] == lag and one["tstat_dof"] == 8
    assert one["tstat"] == x.mean() / metrics.newey_west_se(x, lag)
