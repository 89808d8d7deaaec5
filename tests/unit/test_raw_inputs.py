"""The raw input channels (Alpha360-like, `data.raw_inputs`) and their panel (`load_panel(inputs="raw")`)."""

from __future__ import annotations

import datetime as dt
import logging
import math

import numpy as np
import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.core.io import write_parquet
from gogooku3.data import raw_inputs
from gogooku3.data.dataset import load_dataset, load_panel
from gogooku3.data.panel import PanelStore, clean_cache
from gogooku3.data.raw_inputs import CHANNELS, informative, raw_channels
from gogooku3.features.builder import build_dataset
from gogooku3.features.published import unpin_all
from gogooku3.sources.schema import write_table

D0, D1, D2 = dt.date(2024, 1, 4), dt.date(2024, 1, 5), dt.date(2024, 1, 9)
NAN = None


@pytest.fixture(autouse=True)
def _fresh():
    raw_inputs._logged.clear()  # "logged once" is per process: each test sees its own first time
    yield
    unpin_all()


def _three() -> pl.DataFrame:
    """3 stocks × 3 days in the dataset's layout. A: a 1:2 split on D2 (the day-basis Close halves, returns_1d, from
    the adjusted series, is 0). B: no trade on D1 (Volume 0). C: VWAP = Close up to float32 rounding on D0."""
    rows = [
        # Code,  Date, Open,  High,  Low,   Close, Volume, TurnoverValue, returns_1d, volume_ratio_20
        ("13010", D0, 99.0, 102.0, 98.0, 100.0, 1000.0, 1000.0 * 100.0, NAN, NAN),
        ("13010", D1, 101.0, 103.0, 100.0, 102.0, 2000.0, 2000.0 * 101.5, 0.02, 1.5),
        ("13010", D2, 51.5, 52.0, 50.0, 51.0, 4000.0, 4000.0 * 51.25, 0.0, 2.0),
        ("13020", D0, 200.0, 210.0, 190.0, 205.0, 500.0, 500.0 * 204.0, -0.01, 1.0),
        ("13020", D1, 205.0, 205.0, 205.0, 205.0, 0.0, 0.0, 0.0, 0.0),
        ("13020", D2, 206.0, 212.0, 204.0, 210.0, 800.0, 800.0 * 209.0, 0.05 / 2.05, 1.6),
        ("13030", D0, 120.0, 125.0, 119.0, 123.4, 4567.0, 4567.0 * 123.4, 0.03, 0.8),
        ("13030", D1, 123.0, 130.0, 121.0, 126.0, 3000.0, 3000.0 * 125.0, 0.0210, 0.5),
        ("13030", D2, 126.0, 127.0, 118.0, 119.0, 6000.0, 6000.0 * 122.0, -0.0556, 1.25),
    ]
    cols = ["Code", "Date", "Open", "High", "Low", "Close", "Volume", "TurnoverValue", "returns_1d", "volume_ratio_20"]
    df = pl.DataFrame(rows, schema=cols, orient="row")
    return df.with_columns(pl.col(cols[2:]).cast(pl.Float32), S33=pl.lit("0050"), Section=pl.lit("TSEPrime"))


def _values(df: pl.DataFrame, exprs: dict) -> dict[tuple[str, dt.date], dict]:
    out = df.select("Code", "Date", *exprs.values())
    return {(r["Code"], r["Date"]): r for r in out.iter_rows(named=True)}


def test_channels_by_hand():
    df = _three()
    exprs = raw_channels(df.columns, CHANNELS, 20)
    assert list(exprs) == ["raw_close", "raw_open", "raw_high", "raw_low", "raw_vwap", "raw_volume"]
    v = _values(df, exprs)
    a1, a2 = v["13010", D1], v["13010", D2]
    for got, want in [
        (a1["raw_close"], math.log(1.02)),
        (a1["raw_open"], math.log(101 / 102)),
        (a1["raw_high"], math.log(103 / 102)),
        (a1["raw_low"], math.log(100 / 102)),
        (a1["raw_vwap"], math.log(101.5 / 102)),
        (a1["raw_volume"], math.log(1.5)),
        (a2["raw_open"], math.log(51.5 / 51)),
        (a2["raw_vwap"], math.log(51.25 / 51)),
        (a2["raw_volume"], math.log(2.0)),
        (v["13020", D2]["raw_close"], math.log(2.1 / 2.05)),
    ]:
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
    # the split day: the adjusted return (0), not the day-basis close ratio ln(51/102) = -69 %
    assert a2["raw_close"] == 0.0
    assert v["13010", D0]["raw_close"] is None and v["13010", D0]["raw_volume"] is None  # no history yet
    assert v["13010", D0]["raw_vwap"] == 0.0  # VWAP = Close exactly
    b1 = v["13020", D1]
    assert b1["raw_volume"] is None and b1["raw_vwap"] is None  # no trade: no volume ratio, no VWAP (not -inf)
    assert b1["raw_open"] == b1["raw_high"] == b1["raw_low"] == 0.0
    # float32 rounding of TurnoverValue / (Volume · Close) is not a value: snapped to 0
    c0 = df.filter((pl.col("Code") == "13030") & (pl.col("Date") == D0)).row(0, named=True)
    assert c0["TurnoverValue"] / (c0["Volume"] * c0["Close"]) != 1.0
    assert v["13030", D0]["raw_vwap"] == 0.0
    assert df.select(exprs.values()).schema == dict.fromkeys(exprs, pl.Float32)


def test_the_raw_panel_normalises_each_channel_per_day():
    """The 3-stock panel by hand: robust z = (x − median) / (1.4826 · MAD) across the day's three stocks."""
    df = _three()
    exprs = raw_channels(df.columns, CHANNELS, 20)
    p = PanelStore.from_frame(df, list(exprs), [], {"method": "robust_z", "clip": 5.0}, exprs=exprs)
    assert p.feature_names == list(exprs) and p.features.shape == (3, 3, 6)
    k = p.feature_names.index("raw_high")
    hi = [math.log(103 / 102), 0.0, math.log(130 / 126)]  # D1: A, B, C (B: High = Close)
    med = sorted(hi)[1]
    mad = sorted(abs(x - med) for x in hi)[1] * 1.4826
    assert p.features[1, :, k] == pytest.approx([(x - med) / mad for x in hi], rel=1e-5)
    # a null channel value (B's volume on D1) is the day's centre after normalisation
    assert p.features[1, 1, p.feature_names.index("raw_volume")] == 0.0
    # the raw returns and the masks are the features panel's
    feats = PanelStore.from_frame(df, ["Close"], [], {"method": "robust_z", "clip": 5.0})
    assert np.array_equal(p.mask, feats.mask) and np.array_equal(p.returns, feats.returns, equal_nan=True)
    assert (p.codes, p.dates) == (feats.codes, feats.dates)


def test_close_only_data_keeps_the_close_channel_and_says_so_once(caplog):
    df = _three().select("Code", "Date", "Close", "returns_1d")
    with caplog.at_level(logging.WARNING, logger="gogooku3.data.raw_inputs"):
        for _ in range(2):
            exprs = raw_channels(df.columns, CHANNELS, 20, "user.parquet")
    assert list(exprs) == ["raw_close"]
    (rec,) = caplog.records  # once per source and process
    assert "user.parquet" in rec.message and "1 of 6 channels" in rec.message
    assert "open (no Open)" in rec.message and "volume (no volume_ratio_20 or Volume+volume_ma_20)" in rec.message
    with pytest.raises(DataError, match=r"no raw input channel can be made.*close needs returns_1d or log_returns_1d"):
        raw_channels(["Code", "Date", "Close"], CHANNELS, 20)


def test_channel_forms_config_and_checks():
    cols = ["log_returns_1d", "Volume", "volume_ma_5", "volume_ratio_20"]
    exprs = raw_channels(cols, ["volume", "close"], 5)  # the configured order; volume from Volume / volume_ma_5
    assert list(exprs) == ["raw_volume", "raw_close"]
    assert set(exprs["raw_volume"].meta.root_names()) == {"Volume", "volume_ma_5"}
    assert set(exprs["raw_close"].meta.root_names()) == {"log_returns_1d"}
    with pytest.raises(ConfigError, match="unknown channel 'vol'"):
        raw_channels(cols, ["vol"], 20)
    cfg = load_config([])
    assert list(cfg.train.raw_inputs.channels) == list(CHANNELS)
    with pytest.raises(ConfigError, match=r"train\.raw_inputs\.channels"):
        load_config(["train.raw_inputs.channels=[close,typo]"])


def test_channels_with_no_information_are_left_out(caplog):
    df = _three().with_columns(TurnoverValue=pl.col("Volume") * pl.col("Close"))  # VWAP = Close: the synthetic market
    exprs = raw_channels(df.columns, CHANNELS, 20)
    with caplog.at_level(logging.INFO, logger="gogooku3.data.raw_inputs"):
        kept = informative(df.lazy(), exprs, "synth")
    assert list(kept) == ["raw_close", "raw_open", "raw_high", "raw_low", "raw_volume"]
    assert "left out raw_vwap" in caplog.text
    with pytest.raises(DataError, match="every raw input channel"):
        informative(df.lazy(), {"raw_vwap": exprs["raw_vwap"]}, "synth")


def test_convert_streams_the_channels_like_from_frame(tmp_path):
    """Row-local channels through `convert`'s batches of rows: the same bytes as `from_frame` on the whole frame."""
    rng = np.random.default_rng(0)
    n, days = 12, 40
    dates = [dt.date(2024, 1, 1) + dt.timedelta(days=k) for k in range(days)]
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (days, n)), axis=0))
    df = pl.DataFrame(
        {
            "Code": [f"{1300 + i}0" for _ in range(days) for i in range(n)],
            "Date": [d for d in dates for _ in range(n)],
            "Close": close.ravel(),
            "Open": (close * np.exp(rng.normal(0, 0.01, (days, n)))).ravel(),
            "High": (close * np.exp(np.abs(rng.normal(0, 0.01, (days, n))))).ravel(),
            "Low": (close * np.exp(-np.abs(rng.normal(0, 0.01, (days, n))))).ravel(),
            "returns_1d": rng.normal(0, 0.02, days * n),
            "target_1d": rng.normal(0, 0.02, days * n),
        }
    ).with_columns(pl.exclude("Code", "Date").cast(pl.Float32))
    df = df.sort("Code", "Date")
    write_parquet(df, tmp_path / "d.parquet")
    exprs = raw_channels(df.columns, CHANNELS, 20)
    norm = {"method": "robust_z", "clip": 5.0}
    ref = PanelStore.from_frame(df, list(exprs), [1], norm, exprs=exprs)
    got = PanelStore.convert(
        tmp_path / "d.parquet", tmp_path / "p", list(exprs), [1], norm, block_mb=0.001, batch_rows=37, exprs=exprs
    )
    assert got.feature_names == ["raw_close", "raw_open", "raw_high", "raw_low"]
    for name in ("features", "mask", "targets", "returns"):
        assert np.array_equal(np.asarray(getattr(got, name)), getattr(ref, name), equal_nan=True), name


@pytest.fixture(scope="module")
def built(mini_factory, tmp_path_factory):
    """The hand-made market (4 stocks, 100 sessions, a 1:2 split) built into a dataset."""
    root = tmp_path_factory.mktemp("rawbuilt")
    for name, df in mini_factory(n_stocks=4, n_days=100).items():
        write_table(df, root / "raw", name)
    over = [
        f"paths.raw_dir={root / 'raw'}",
        f"paths.output_dir={root / 'out'}",
        f"paths.dataset={root / 'out'}/ml_dataset_latest.parquet",
        f"paths.cache_dir={root / 'cache'}",
    ]
    build_dataset(load_config(over))
    return root, over


def test_load_panel_raw_mode_shares_everything_but_the_inputs_and_has_its_own_cache(built):
    root, over = built
    cfg = load_config(over)
    ds, manifest, ref = load_dataset(cfg)
    feats = load_panel(cfg, ds, manifest, ref)
    raw = load_panel(cfg, ds, manifest, ref, inputs="raw")
    # the hand-made market's TurnoverValue is Close x Volume: no VWAP information, so no VWAP channel
    assert raw.feature_names == ["raw_close", "raw_open", "raw_high", "raw_low", "raw_volume"]
    assert feats.feature_names == manifest.names
    assert (raw.codes, raw.dates, raw.horizons) == (feats.codes, feats.dates, feats.horizons)
    for name in ("mask", "targets", "returns", "sector", "segment"):
        assert np.array_equal(np.asarray(getattr(raw, name)), np.asarray(getattr(feats, name)), equal_nan=True), name
    assert raw.root is not None and feats.root is not None and raw.root != feats.root
    assert raw.root.parent == feats.root.parent == root / "cache" / "panels"
    # each mode reuses its own panel; a different channel spec is another panel
    assert load_panel(cfg, ds, manifest, ref, inputs="raw").root == raw.root
    assert load_panel(cfg, ds, manifest, ref).root == feats.root
    cfg2 = load_config([*over, "train.raw_inputs.channels=[close,volume]"])
    two = load_panel(cfg2, ds, manifest, ref, inputs="raw")
    assert two.feature_names == ["raw_close", "raw_volume"] and two.root not in (raw.root, feats.root)
    k = raw.feature_names.index("raw_volume")
    assert np.array_equal(np.asarray(two.features[..., 1]), np.asarray(raw.features[..., k]))
    # the cache bound sees them all as panels: keep 1 (the one in use protected) removes the other two
    removed = clean_cache(root / "cache", keep=1, protect=[raw.root.name])
    assert sorted(removed) == sorted([feats.root, two.root]) and raw.root.exists()
    with pytest.raises(ConfigError, match="inputs='alpha360'"):
        load_panel(cfg, ds, manifest, ref, inputs="alpha360")


def test_load_panel_raw_on_close_only_data(tmp_path, planted_dataset, caplog):
    """A dataset with returns but no OHLV (the planted test market): the close channel alone, logged."""
    ds = planted_dataset(tmp_path)
    cfg = load_config([f"paths.dataset={ds}", f"paths.cache_dir={tmp_path / 'cache'}", "labels.horizons=[1,5]"])
    d, manifest, ref = load_dataset(cfg)
    with caplog.at_level(logging.WARNING, logger="gogooku3.data.raw_inputs"):
        p = load_panel(cfg, d, manifest, ref, inputs="raw")
    assert p.feature_names == ["raw_close"] and "1 of 6 channels" in caplog.text
