"""`predict_panel`'s options: quantile forecasts and per-sample variable-selection weights (single model, ensemble)."""

import numpy as np
import polars as pl
import pytest
import torch

from gogooku3.data.panel import PanelDayDataset, PanelStore
from gogooku3.model.atft_gat_fan import ATFTGATFAN, ATFTConfig
from gogooku3.model.ensemble import ATFTEnsemble
from gogooku3.training.inference import EXPLAIN_COL, predict_panel, quantile_col

torch.set_num_threads(1)
FEATS = ["returns_1d", "f_signal", "f_noise1"]
GRAPH = {"window": 10, "method": "ewm", "halflife": 5, "shrinkage": 0.1, "threshold": 0.3, "k": 4, "min_obs": 5}


@pytest.fixture()
def panel(tmp_path, planted_dataset):
    ds = planted_dataset(tmp_path, n_stocks=12, n_days=40, n_noise=1)
    return PanelStore.from_frame(pl.read_parquet(ds), FEATS, [1, 5])


def _model(seed: int) -> ATFTGATFAN:
    torch.manual_seed(seed)
    return ATFTGATFAN(
        ATFTConfig.packaged(
            n_features=len(FEATS), window=10, hidden=16, head_hidden=8, horizons=(1, 5), vsn_init_gain=3.0, graph=GRAPH
        )
    ).eval()


@pytest.mark.parametrize("members", [1, 2])
def test_quantiles_and_selection_weights(panel, members):
    model = _model(0) if members == 1 else ATFTEnsemble([_model(0), _model(1)]).eval()
    days = np.arange(15, 25)
    out = predict_panel(model, panel, days, window=10, min_window_frac=1.0, quantiles=True, explain=True)
    plain = predict_panel(model, panel, days, window=10, min_window_frac=1.0)
    assert out.select(plain.columns).equals(plain)  # the options only add columns
    levels = model.cfg.quantiles
    assert [c for c in out.columns if "_q" in c] == [quantile_col(h, q) for h in (1, 5) for q in levels]
    assert quantile_col(1, 0.1) == "pred_1d_q10"
    valid, ds = panel.window_valid(10, 1.0), PanelDayDataset(panel, 10)
    for d in (15, 24):
        idx = np.flatnonzero(valid[d])
        b = ds[(d, idx)]
        with torch.no_grad():
            ref = model(b["x"], b["sector"], b["segment"], b["returns"], b["returns_valid"])
        got = out.filter(pl.col("Date") == panel.dates[d])
        np.testing.assert_allclose(got[quantile_col(5, 0.9)].to_numpy(), ref["quantiles"][:, 1, -1].numpy(), atol=1e-6)
        w = np.stack(got[EXPLAIN_COL].to_list())
        assert w.shape == (len(idx), len(FEATS))
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)  # a softmax per stock (mean of softmaxes)
        np.testing.assert_allclose(w.mean(axis=0), ref["feature_weights"].numpy(), atol=1e-5)  # the model's mean
        assert np.ptp(w[:, 0]) > 1e-4  # and they differ across stocks
    # hooks are removed: later calls see no extra module hooks
    assert not any(m._forward_hooks for m in model.modules())
