"""The one prediction loop (`inference.predict_panel`) and the one plan maker (`training.make_plans`)."""

import numpy as np
import polars as pl
import pytest
import torch

from gogooku3.config.compose import load_config
from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.data.panel import PanelDayDataset, PanelStore
from gogooku3.features.manifest import FeatureManifest, manifest_path
from gogooku3.model.atft_gat_fan import ATFTGATFAN, ATFTConfig
from gogooku3.training.fit import make_plans
from gogooku3.training.inference import predict_panel

torch.set_num_threads(1)
FEATS = ["returns_1d", "f_signal", "f_noise1"]


@pytest.fixture()
def panel(tmp_path, planted_dataset):
    ds = planted_dataset(tmp_path, n_stocks=12, n_days=60, n_noise=1)
    return PanelStore.from_frame(pl.read_parquet(ds), FEATS, [1, 5])


def test_predict_panel_matches_a_day_by_day_model_call(panel):
    torch.manual_seed(0)
    model = ATFTGATFAN(
        ATFTConfig.packaged(
            n_features=len(FEATS),
            window=10,
            hidden=16,
            head_hidden=8,
            horizons=(1, 5),
            graph={
                "window": 10,
                "method": "ewm",
                "halflife": 5,
                "shrinkage": 0.1,
                "threshold": 0.3,
                "k": 4,
                "min_obs": 5,
            },
        )
    ).eval()
    days = np.arange(20, 40)
    out = predict_panel(model, panel, days, window=10, min_window_frac=1.0)
    valid = panel.window_valid(10, 1.0)
    assert out.columns == ["Date", "Code", "pred_1d", "pred_5d", "target_1d", "target_5d"]
    assert out.height == int(valid[days].sum())
    ds = PanelDayDataset(panel, 10)
    for d in (20, 33, 39):  # the per-day path: one batch of the day's valid stocks, rows named by index
        idx = np.flatnonzero(valid[d])
        b = ds[(d, idx)]
        with torch.no_grad():
            ref = model(b["x"], b["sector"], b["segment"], b["returns"], b["returns_valid"])["point"].numpy()
        got = out.filter(pl.col("Date") == panel.dates[d])
        assert got["Code"].to_list() == [panel.codes[i] for i in idx]
        assert np.allclose(got["pred_1d"].to_numpy(), ref[:, 0], atol=1e-6)
        y = np.asarray(panel.targets)[d, idx, 1]
        assert np.allclose(got["target_5d"].to_numpy().astype(float), y, equal_nan=True)
    assert out["target_5d"].null_count() > 0 or not np.isnan(np.asarray(panel.targets)[days, :, 1]).any()
    with pytest.raises(DataError, match="window"):
        predict_panel(model, panel, np.arange(0, 5), window=10, min_window_frac=1.0)
    with pytest.raises(ValueError, match="min_window_frac"):  # train.min_window_frac, never a code default
        predict_panel(model, panel, days, window=10)


def test_plans_follow_the_manifest_lag(tmp_path, planted_dataset):
    """A dataset built with entry lag 2: the config's lag 1 is refused; with the lag of the dataset the last fit
    label ends before the validation slice and every training label before the test block."""
    ds = planted_dataset(tmp_path, n_days=200)
    df = pl.read_parquet(ds)
    FeatureManifest.from_frame(df, {f: "price" for f in FEATS}, [1, 5], 2).save(manifest_path(ds))
    man = FeatureManifest.for_dataset(ds)
    with pytest.raises(ConfigError, match=r"entry_lag=2.*entry_lag=1"):
        man.check_labels(load_config(["labels.horizons=[1,5]"]).labels, ds)
    cfg = load_config(
        [
            "labels.horizons=[1,5]",
            "labels.entry_lag=2",
            "split.min_train_days=60",
            "split.n_splits=2",
            "split.val_days=12",
        ]
    )
    man.check_labels(cfg.labels, ds)
    dates = df["Date"].unique().sort().to_list()
    folds, plans = make_plans(dates, cfg.split, man.horizons, man.entry_lag, None)
    pos = {d: k for k, d in enumerate(dates)}
    (plan,) = plans
    assert plan.index == folds[-1].index
    reach = max(man.horizons) + man.entry_lag  # a label at t is realised at t + lag + h
    assert pos[plan.fit[-1]] + reach < pos[plan.val[0]]
    assert pos[plan.fold.train_dates[-1]] + reach < pos[plan.test[0]]
    assert len(make_plans(dates, cfg.split, man.horizons, man.entry_lag, "all")[1]) == 2
    with pytest.raises(ConfigError, match=r"cv.folds"):
        make_plans(dates, cfg.split, man.horizons, man.entry_lag, 0)


def test_columns_are_spelled_once():
    assert (C.target(5), C.pred(5), C.oracle(5), C.monitor(1)) == (
        "target_5d",
        "pred_5d",
        "oracle_5d",
        "val_rank_ic_1d",
    )
    assert C.pred_horizons(["Date", "pred_5d", "target_5d", "pred_1d", "target_20d"]) == [5]
