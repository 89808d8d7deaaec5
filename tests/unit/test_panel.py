"""PanelStore conversion, caching, window validity and day batches."""

import datetime as dt

import numpy as np
import polars as pl
import pytest

from gogooku3.core.io import write_parquet
from gogooku3.data.normalize import CrossSectionalNormalizer
from gogooku3.data.panel import DayBatchSampler, PanelDataModule, PanelStore

FEATS = ["f1", "f2", "returns_1d"]


def _frame(n_days=50, n_stocks=8, seed=0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    dates = [dt.date(2024, 1, 1) + dt.timedelta(days=k) for k in range(n_days)]
    rows = []
    for i in range(n_stocks):
        for k, d in enumerate(dates):
            if i == 3 and k < 20:  # late listing: no full window before day 20 + L - 1
                continue
            if i == 5 and k == 30:  # one missing day
                continue
            f2 = None if (i == 1 and k == 10) else float(rng.normal())
            y = None if (i == 2 and k == 40) else float(rng.normal())
            rows.append(
                (
                    f"{1300 + i}0",
                    d,
                    ["TSEPrime", "TSEGrowth"][i % 2],
                    str(i % 3),
                    float(rng.normal()),
                    f2,
                    float(rng.normal() * 0.01),
                    y,
                )
            )
    df = pl.DataFrame(rows, schema=["Code", "Date", "Section", "S33", *FEATS, "target_1d"], orient="row")
    return df.sample(fraction=1.0, shuffle=True, seed=seed)  # conversion must not rely on row order


def test_conversion_matches_rows_and_normalises_once():
    df = _frame()
    p = PanelStore.from_frame(df, FEATS, [1], {"method": "robust_z", "clip": 5.0})
    assert p.features.shape == (50, 8, 3) and p.targets.shape == (50, 8, 1)
    assert p.mask.sum() == df.height
    norm = CrossSectionalNormalizer("robust_z", 5.0).fit(df, FEATS).transform(df)
    row = norm.filter((pl.col("Code") == "13040") & (pl.col("Date") == dt.date(2024, 1, 15))).row(0, named=True)
    d, i = p.dates.index(dt.date(2024, 1, 15)), p.codes.index("13040")
    assert np.allclose(p.features[d, i], [row[f] for f in FEATS], atol=1e-6)
    raw = df.filter((pl.col("Code") == "13040") & (pl.col("Date") == dt.date(2024, 1, 15))).row(0, named=True)
    assert np.isclose(p.returns[d, i], raw["returns_1d"])  # raw returns kept un-normalised
    assert p.features[10, p.codes.index("13010"), 1] == 0.0  # null -> 0 after normalisation
    assert np.isnan(p.targets[40, p.codes.index("13020"), 0])  # missing label stays NaN
    assert not p.mask[:20, p.codes.index("13030")].any()
    assert p.segment_vocab == ["TSEGrowth", "TSEPrime"] and p.segment[0, 0] == 2 and p.sector[0, 1] == 2


def test_window_validity():
    p = PanelStore.from_frame(_frame(), FEATS, [1], {})
    ok = p.window_valid(10, 1.0)
    assert not ok[:9].any() and ok[9, 0]
    i3 = p.codes.index("13030")
    assert not ok[:29, i3].any() and ok[29, i3]  # listed day 20: first full window ends 29
    i5 = p.codes.index("13050")
    assert not ok[30:40, i5].any() and ok[40, i5]  # the gap on day 30 spoils windows 30..39
    assert p.window_valid(10, 0.9)[31, i5]  # 9 of 10 days present is enough at 0.9


def test_day_batch_equals_hand_sliced_windows():
    p = PanelStore.from_frame(_frame(), FEATS, [1], {})
    dates = p.dates
    dm = PanelDataModule(
        p, dates[:35], dates[38:], window=10, max_stocks=2048, min_window_frac=1.0, min_stocks=2, seed=3
    )
    seen = set()
    for b in dm.train_dataloader():
        d = int(b["day"])
        seen.add(d)
        idx = b["idx"].numpy()
        assert np.array_equal(idx, np.flatnonzero(dm.labelled[d]))
        assert np.allclose(b["x"].numpy(), p.features[d - 9 : d + 1, idx, :].transpose(1, 0, 2))
        assert np.allclose(b["y"].numpy(), p.targets[d, idx])
        r = p.returns[d - 9 : d + 1, idx].T
        assert np.allclose(b["returns"].numpy(), np.where(np.isfinite(r), r, 0.0))
        assert np.isfinite(b["y"].numpy()).all()  # training rows need the 1-day label
    assert seen == set(range(9, 35))


def test_unlabelled_and_short_window_stocks_excluded_from_training():
    p = PanelStore.from_frame(_frame(), FEATS, [1], {})
    dm = PanelDataModule(
        p, p.dates[:45], p.dates[45:], window=10, max_stocks=2048, min_window_frac=1.0, min_stocks=2, seed=0
    )
    batches = {int(b["day"]): set(b["idx"].tolist()) for b in dm.train_dataloader()}
    assert p.codes.index("13020") not in batches[40]  # no label on day 40
    assert p.codes.index("13030") not in batches[25]  # no full window yet
    pred = {int(b["day"]): set(b["idx"].tolist()) for b in dm.predict_loader(np.array([40]))}
    assert p.codes.index("13020") in pred[40]  # predictions still cover it


def test_sampler_shuffles_caps_and_shards():
    valid = np.ones((30, 100), dtype=bool)
    s = DayBatchSampler(valid, range(30), max_stocks=16, shuffle=True, seed=1)
    e0 = [d for d, _ in s]
    s.set_epoch(1)
    e1 = [d for d, idx in s]
    assert sorted(e0) == list(range(30)) and e0 != e1
    assert all(len(idx) == 16 and np.all(np.diff(idx) > 0) for _, idx in s)
    r0 = [d for d, _ in DayBatchSampler(valid, range(30), shuffle=True, seed=1, rank=0, world_size=2)]
    r1 = [d for d, _ in DayBatchSampler(valid, range(30), shuffle=True, seed=1, rank=1, world_size=2)]
    assert len(r0) == len(r1) == 15 and not set(r0) & set(r1)


def test_build_caches_and_rebuilds(tmp_path):
    ds = tmp_path / "ds.parquet"
    write_parquet(_frame(), ds)
    kw = dict(
        features=FEATS,
        horizons=[1],
        cache_dir=tmp_path / "cache",
        normalizer={"method": "robust_z"},
        manifest_fingerprint="m1",
        dataset_fingerprint="d1",
    )
    a = PanelStore.build(ds, **kw)
    assert isinstance(a.features, np.memmap)  # converted, then loaded memory-mapped
    b = PanelStore.build(ds, **kw)
    assert b.fingerprint == a.fingerprint and isinstance(b.features, np.memmap)
    assert np.array_equal(np.asarray(b.features), a.features) and b.dates == a.dates
    c = PanelStore.build(ds, **{**kw, "normalizer": {"method": "rank_gauss"}})
    assert c.fingerprint != a.fingerprint
    mtime = (tmp_path / "cache" / "panels" / a.fingerprint / "features.npy").stat().st_mtime_ns
    PanelStore.build(ds, **kw, force=True)
    assert (tmp_path / "cache" / "panels" / a.fingerprint / "features.npy").stat().st_mtime_ns != mtime


def test_missing_feature_is_a_clear_error():
    from gogooku3.core.errors import DataError

    with pytest.raises(DataError, match="nope"):
        PanelStore.from_frame(_frame(), ["f1", "nope"], [1], {})
