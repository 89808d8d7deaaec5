"""FinancialGraphBuilder: planted blocks recovered, k / threshold / symmetry respected, missing data handled."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest
import torch

from gogooku3.core.errors import ConfigError
from gogooku3.data.graph import FinancialGraphBuilder, graph_snapshot, graph_stats

torch.set_num_threads(1)


def _blocks(t=80, n_blocks=8, size=12, seed=0, load=0.8, noise=0.6):
    g = torch.Generator().manual_seed(seed)
    n = n_blocks * size
    block = torch.arange(n) // size
    f = torch.randn(t, n_blocks, generator=g, dtype=torch.float64)
    r = f[:, block] * load + torch.randn(t, n, generator=g, dtype=torch.float64) * noise
    return r, block


def _adj(ei, n):
    a = torch.zeros(n, n, dtype=torch.bool)
    a[ei[0], ei[1]] = True
    return a


@pytest.mark.parametrize("method", ["ewm", "pearson"])
def test_recovers_planted_blocks(method):
    r, block = _blocks()
    b = FinancialGraphBuilder(window=60, method=method, k=6, threshold=0.3, shrinkage=0.1)
    ei, ew = b.edges(r)
    n = r.shape[1]
    a = _adj(ei, n)
    assert torch.equal(a, a.T)  # symmetric
    assert not a.diagonal().any()  # no self loops
    assert int(a.sum(1).max()) <= 6  # at most k per node
    assert float(ew.abs().min()) >= 0.3  # threshold
    same = (block[ei[0]] == block[ei[1]]).double().mean()
    assert same > 0.97  # edges stay inside the planted blocks
    assert int((a.sum(1) == 0).sum()) == 0  # nobody isolated: block peers are strongly correlated
    st = graph_stats(ei, ew, n)
    assert st["n_edges"] * 2 == ei.shape[1] and st["avg_degree"] == pytest.approx(2 * st["n_edges"] / n)


def test_noise_gives_few_edges_and_threshold_cuts():
    g = torch.Generator().manual_seed(3)
    r = torch.randn(60, 50, generator=g, dtype=torch.float64)
    ei, _ = FinancialGraphBuilder(method="pearson", threshold=0.5, k=10).edges(r)
    assert ei.shape[1] == 0
    r2, _ = _blocks(seed=4)
    dense, _ = FinancialGraphBuilder(threshold=0.0, k=3).edges(r2)
    assert int(_adj(dense, r2.shape[1]).sum(1).max()) <= 3


def test_pearson_matches_numpy_and_shrinkage():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 15, generator=g, dtype=torch.float64)
    c = FinancialGraphBuilder(method="pearson", shrinkage=0.0).correlation(x).numpy()
    np.testing.assert_allclose(c, np.corrcoef(x.numpy().T), atol=1e-10)
    cs = FinancialGraphBuilder(method="pearson", shrinkage=0.2).correlation(x).numpy()
    off = ~np.eye(15, dtype=bool)
    np.testing.assert_allclose(cs[off], 0.8 * c[off], atol=1e-10)
    np.testing.assert_allclose(np.diag(cs), 1.0)


def test_ewm_weights_recent_days_more():
    g = torch.Generator().manual_seed(2)
    t = 60
    a = torch.randn(t, generator=g, dtype=torch.float64)
    b = torch.randn(t, generator=g, dtype=torch.float64)
    # correlated only in the most recent 20 days
    b[-20:] = a[-20:] + 0.1 * b[-20:]
    x = torch.stack([a, b], 1)
    pe = FinancialGraphBuilder(method="pearson", shrinkage=0.0).correlation(x)[0, 1]
    ew = FinancialGraphBuilder(method="ewm", halflife=5, shrinkage=0.0).correlation(x)[0, 1]
    assert ew > pe + 0.2


def test_missing_values_pairwise_complete_and_min_obs():
    r, _block = _blocks(t=60, seed=5)
    full = FinancialGraphBuilder(method="pearson", shrinkage=0.0).correlation(r)
    rn = r.clone()
    rn[:10, 0] = float("nan")
    c = FinancialGraphBuilder(method="pearson", shrinkage=0.0).correlation(rn)
    assert torch.isfinite(c).all()
    expect = np.corrcoef(r[10:, 0].numpy(), r[10:, 1].numpy())[0, 1]
    assert float(c[0, 1]) == pytest.approx(expect, abs=1e-10)
    assert torch.allclose(c[2:, 2:], full[2:, 2:])
    # a stock with fewer than min_obs valid days gets no correlations and no edges
    mask = torch.ones_like(r, dtype=torch.bool)
    mask[:50, 3] = False
    b = FinancialGraphBuilder(min_obs=20)
    cm = b.correlation(r, mask)
    assert float(cm[3, [i for i in range(r.shape[1]) if i != 3]].abs().max()) == 0.0
    ei, _ = b.edges(r, mask)
    assert not (ei == 3).any()


def test_config_errors():
    with pytest.raises(ConfigError):
        FinancialGraphBuilder(method="spearman")
    with pytest.raises(ConfigError):
        FinancialGraphBuilder(shrinkage=1.5)


def test_snapshot_top_by_market_cap():
    r, block = _blocks(t=70, n_blocks=4, size=10, seed=6)
    t, n = r.shape
    dates = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(t)]
    df = pl.DataFrame(
        {
            "Date": [d for d in dates for _ in range(n)],
            "Code": [f"{i:05d}" for i in range(n)] * t,
            "returns_1d": r.numpy().reshape(-1),
            "market_cap": np.tile(np.arange(n, dtype=float), t),
            "S33": [str(int(b)) for b in block] * t,
        }
    )
    st = graph_snapshot(df, FinancialGraphBuilder(window=60, k=5), n_nodes=20)
    assert st["n_nodes"] == 20 and st["ranked_by"] == "market_cap" and st["window_days"] == 60
    assert st["same_sector_edge_share"] > 0.95 and st["n_edges"] > 0
    st2 = graph_snapshot(
        df.drop("market_cap").with_columns(pl.lit(1.0).alias("dollar_volume")), FinancialGraphBuilder(k=5), n_nodes=10
    )
    assert st2["ranked_by"] == "dollar_volume" and st2["n_nodes"] == 10
