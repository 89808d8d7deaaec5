"""Real data as users bring it (issue 15): calendars over any span, close-only graphs, errors that name the fixing
key, no all-null groups, a market proxy without an index, and a coverage table readable at any width."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import re

import numpy as np
import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.calendar import TradingCalendar
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.core.io import read_json, write_parquet
from gogooku3.data.graph import HISTORY, FinancialGraphBuilder, graph_snapshot, pick_nodes
from gogooku3.data.split import WalkForwardSplitter
from gogooku3.data.validation import validate_dataset
from gogooku3.features.build import BuiltFrame, build_features, drop_all_null
from gogooku3.features.builder import build_dataset
from gogooku3.features.coverage import coverage_path, coverage_table, coverage_text
from gogooku3.features.manifest import FeatureManifest
from gogooku3.features.market import proxy_index


def counts(b) -> dict:
    return dict(collections.Counter(b.groups.values()))


# ---- 1. calendars over the data's whole span ---------------------------------------------------------------------
def test_exchange_calendar_covers_the_whole_span():
    cal = TradingCalendar.from_exchange("XNYS", "1990-01-02", "2022-12-30")
    assert cal.first == dt.date(1990, 1, 2) and cal.last == dt.date(2022, 12, 30) and len(cal) > 8000
    assert TradingCalendar.from_exchange("XTKS", "2024-01-04", "2024-01-04").sessions.to_list() == [dt.date(2024, 1, 4)]


def test_calendar_that_does_not_reach_back_says_so_and_names_the_key():
    with pytest.raises(
        ConfigError,
        match=r"XTKS .*reaches only back to 1997-01-01, but the data starts 1990-01-02: "
        r"set data.calendar=dates",
    ):
        TradingCalendar.from_exchange("XTKS", "1990-01-02", "2000-01-04")
    with pytest.raises(ConfigError, match="unknown exchange calendar 'XNYSE'"):
        TradingCalendar.from_exchange("XNYSE", "2020-01-02", "2020-02-03")


def test_import_of_a_file_from_1990(tmp_path):
    from gogooku3.sources.files import import_files
    from gogooku3.sources.schema import read_table

    f = tmp_path / "old.csv"
    f.write_text("Date,Ticker,Close\n1990-01-02,IBM,100\n1990-01-03,IBM,101\n1990-01-04,IBM,99\n")
    import_files(
        load_config(
            ["data=files", f"paths.raw_dir={tmp_path / 'raw'}", "data.calendar=XNYS", "data.columns.code=Ticker"]
        ),
        f,
    )
    assert read_table(tmp_path / "raw", "daily_quotes")["Date"].min() == dt.date(1990, 1, 2)


# ---- 2. graph nodes without size or liquidity ----------------------------------------------------------------------
def _returns_panel(n_days=70, n=12, seed=0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    dates = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n_days)]
    df = pl.DataFrame(
        {
            "Date": [d for d in dates for _ in range(n)],
            "Code": [f"c{i}" for i in range(n)] * n_days,
            "returns_1d": rng.normal(0, 0.02, n_days * n),
        }
    )
    # c0 listed only for the last 10 days: too little history for the graph
    return df.filter((pl.col("Code") != "c0") | (pl.col("Date") >= dates[-10]))


def test_graph_node_order_falls_back_to_return_history():
    df = _returns_panel()
    day = df["Date"].max()
    top, by = pick_nodes(df, day, 5, window=60, min_obs=20)
    assert by == HISTORY and top.height == 5 and "c0" not in top["Code"].to_list()
    top, by = pick_nodes(df, day, 50, window=60, min_obs=20)
    assert top.height == 11  # every name with enough history, none other
    vol = df.with_columns(pl.lit(10.0).alias("Close"), (pl.col("Code").str.slice(1).cast(pl.Float64)).alias("Volume"))
    top, by = pick_nodes(vol, day, 3, window=60, min_obs=20)
    assert by == "close_x_volume" and top["Code"].to_list() == ["c11", "c10", "c9"]
    tv = vol.with_columns((-pl.col("Volume")).alias("TurnoverValue"))
    assert pick_nodes(tv, day, 3, 60, 20)[1] == "TurnoverValue"
    dv = tv.with_columns(pl.lit(None, pl.Float64).alias("market_cap"), pl.col("Volume").alias("dollar_volume"))
    assert pick_nodes(dv, day, 3, 60, 20)[1] == "dollar_volume"  # market_cap without values is passed over
    st = graph_snapshot(df, FinancialGraphBuilder(window=60, min_obs=20, k=3), n_nodes=8)
    assert st["ranked_by"] == HISTORY and st["n_nodes"] == 8 and st["window_days"] == 60


def test_graph_without_enough_history_names_the_keys():
    df = _returns_panel(n_days=15)
    with pytest.raises(DataError, match=r"lower safe.graph.min_obs or set safe.graph.enabled=false"):
        pick_nodes(df, df["Date"].max(), 5, window=60, min_obs=20)


# ---- 3. errors name the key that fixes them ------------------------------------------------------------------------
def _dataset(n_feat=48, n_days=30, n_stocks=10, seed=0) -> tuple[pl.DataFrame, FeatureManifest]:
    rng = np.random.default_rng(seed)
    d = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n_days)]
    rows = n_days * n_stocks
    df = pl.DataFrame(
        {
            "Code": [f"{i:05d}" for i in range(n_stocks)] * n_days,
            "Date": [a for a in d for _ in range(n_stocks)],
            **{f"f{i}": rng.normal(size=rows) for i in range(n_feat)},
            "target_1d": rng.normal(0, 0.02, rows),
        }
    )
    return df, FeatureManifest.from_frame(df, {f"f{i}": "g" for i in range(n_feat)}, [1], 1)


def test_min_features_error_proposes_a_value_that_works():
    df, man = _dataset(48)
    with pytest.raises(DataError) as e:
        validate_dataset(df, man, [1], **_checks(min_features=50))
    msg = str(e.value)
    assert "only 48 features in the manifest, need at least 50 (safe.validation.min_features)" in msg
    value = int(re.search(r"safe\.validation\.min_features=(\d+)", msg).group(1))
    assert len(validate_dataset(df, man, [1], **_checks(min_features=value)).features) == 48


def test_too_null_error_proposes_min_features_or_max_null_share():
    df, man = _dataset(52)
    df = df.with_columns(
        [pl.when(pl.col("f0") > -0.5).then(None).otherwise(pl.col(f)).alias(f) for f in ("f1", "f2", "f3")]
    )
    with pytest.raises(DataError) as e:
        validate_dataset(df, man, [1], **_checks(min_features=50, max_null_share=0.5))
    msg = str(e.value)
    assert "safe.validation.max_null_share=0.5" in msg and "safe.validation.min_features=49" in msg
    share = float(re.search(r"keep them all with safe\.validation\.max_null_share=([\d.]+)", msg).group(1))
    assert len(validate_dataset(df, man, [1], **_checks(min_features=50, max_null_share=share)).features) == 52


def _checks(**keys) -> dict:
    """The packaged safe.validation values with `keys` on top: validate_dataset takes every one explicitly."""
    return {**dataclasses.asdict(load_config().safe.validation), **keys}


@pytest.mark.parametrize(
    "n,kw",
    [
        (252, {}),
        (252, {"n_splits": 5}),
        (300, {"test_days": 120}),
        (400, {"min_train_days": 300, "test_days": 60}),
        (150, {}),
    ],
)
def test_walk_forward_error_proposes_split_keys_that_work(n, kw):
    days = [dt.date(2022, 1, 3) + dt.timedelta(days=i) for i in range(n)]
    base = {**_walk_forward_yaml(), "horizons": [1, 5, 10, 20], "entry_lag": 1, **kw}
    with pytest.raises(DataError, match="too few dates") as e:
        WalkForwardSplitter(**base).split(days)
    msg = str(e.value)
    proposals = re.findall(r"((?:split\.\w+=\d+ ?)+) \(", msg)
    assert proposals, msg
    for p in proposals:
        keys = {k.removeprefix("split."): int(v) for k, v in (x.split("=") for x in p.split())}
        folds = WalkForwardSplitter(**{**base, **keys}).split(days)
        assert len(folds) == keys.get("n_splits", base.get("n_splits", 3))
        # room for the inner validation slice, the held-out slice, their gaps and a fit
        assert len(folds[0].train_dates) >= 40 + 21 + 20 + 21 + 20


def test_walk_forward_error_when_nothing_fits():
    days = [dt.date(2022, 1, 3) + dt.timedelta(days=i) for i in range(90)]
    with pytest.raises(
        DataError, match=r"add dates, or shorten labels.horizons \(a first training span needs about 122"
    ):
        WalkForwardSplitter(**_walk_forward_yaml(), horizons=[1, 5, 10, 20], entry_lag=1).split(days)


def _walk_forward_yaml() -> dict:
    """The splitter keys of the packaged split=walk_forward option."""
    return {k: v for k, v in dataclasses.asdict(load_config().split).items() if k not in ("method", "val_days")}


# ---- 4. no all-null groups --------------------------------------------------------------------------------------
def test_prices_and_volume_without_sector_skip_the_sector_block(mini_factory, cfg):
    t = mini_factory(n_stocks=4, n_days=130)
    tables = {"daily_quotes": t["daily_quotes"], "trading_calendar": t["trading_calendar"]}
    b = build_features(tables, TradingCalendar.from_table(t["trading_calendar"]), cfg.features, cfg.labels)
    assert "sector" not in counts(b) and "no sector column" in b.skipped["sector"]
    assert not [n for n in b.df.columns if n.startswith("sec_") or "_in_sec" in n]
    with_listed = build_features(
        {**tables, "listed_info": t["listed_info"]},
        TradingCalendar.from_table(t["trading_calendar"]),
        cfg.features,
        cfg.labels,
    )
    assert counts(with_listed)["sector"] == 8


def test_all_null_columns_are_dropped_from_frame_and_manifest_with_a_reason():
    df = pl.DataFrame(
        {
            "Code": ["a", "b"],
            "Date": [dt.date(2024, 1, 4)] * 2,
            "f": [1.0, 2.0],
            "g": pl.Series([None, None], dtype=pl.Float32),
            "h": pl.Series([None, 1.0], dtype=pl.Float32),
        }
    )
    out = drop_all_null(BuiltFrame(df, {"f": "x", "g": "y", "h": "y"}, {"y": "part of y"}))
    assert out.df.columns == ["Code", "Date", "f", "h"] and out.groups == {"f": "x", "h": "y"}
    assert out.skipped["y"] == "part of y; dropped 1 all-null column(s): g"


# ---- 5. market proxy -------------------------------------------------------------------------------------------
def test_equal_and_cap_weighted_proxy_by_hand():
    d = [dt.date(2024, 1, 4), dt.date(2024, 1, 5), dt.date(2024, 1, 9)]
    lf = pl.LazyFrame(
        {
            "Code": ["a"] * 3 + ["b"] * 3,
            "Date": d * 2,
            "_r1": [None, 0.10, 0.02, None, -0.02, 0.04],
            "cap": [1.0, 3.0, 3.0, 3.0, 1.0, 1.0],
        }
    )
    ew, desc = proxy_index(lf, "auto")
    assert "equal-weighted" in desc
    assert ew.collect()["C"].to_list() == pytest.approx([100.0, 104.0, 107.12])
    cw, desc = proxy_index(lf, "auto", pl.col("cap"))
    # day 2: weights are the caps of day 1 (1 and 3); day 3: of day 2 (3 and 1)
    r2, r3 = (0.10 * 1 - 0.02 * 3) / 4, (0.02 * 3 + 0.04 * 1) / 4
    assert "cap-weighted" in desc
    assert cw.collect()["C"].to_list() == pytest.approx([100.0, 100 * (1 + r2), 100 * (1 + r2) * (1 + r3)])
    assert proxy_index(lf, "equal", pl.col("cap"))[0].collect().equals(ew.collect())
    with pytest.raises(ConfigError, match=r"features.market.proxy"):
        proxy_index(lf, "topix")


def test_proxy_feeds_market_and_cross_without_topix(mini_tables, mini_calendar, mini_built, cfg):
    """The J-Quants-like tables keep TOPIX; without the topix table the proxy is cap-weighted (statements give
    market caps) and flagged; with `proxy=off` market and cross are skipped."""
    assert mini_built.notes == {} and counts(mini_built)["market"] == 26
    tables = {k: v for k, v in mini_tables.items() if k != "topix"}
    b = build_features(tables, mini_calendar, cfg.features, cfg.labels)
    assert counts(b)["market"] == 24 and counts(b)["cross"] == 8  # no index H/L: no ATR/NATR
    assert b.notes["market"].startswith("proxy: cap-weighted")
    day = b.df.filter(pl.col("Date") == b.df["Date"].unique().sort()[50])
    assert day["mkt_ret_1d"].n_unique() == 1 and day["mkt_ret_1d"][0] != 0
    assert day["beta_60d"].drop_nulls().len() == day.height
    off = load_config(["features.market.proxy=off"])
    b_off = build_features(tables, mini_calendar, off.features, off.labels)
    assert "market" not in counts(b_off) and "proxy=off" in b_off.skipped["market"] and "cross" in b_off.skipped


def test_close_only_proxy_is_the_mean_return(mini_factory, cfg):
    t = mini_factory(n_stocks=4, n_days=130)
    dq = t["daily_quotes"].select("Date", "Code", "AdjC")
    b = build_features(
        {"daily_quotes": dq}, TradingCalendar.from_table(t["trading_calendar"]), cfg.features, cfg.labels
    )
    assert b.notes["market"].startswith("proxy: equal-weighted")
    mean = b.df.group_by("Date").agg(pl.col("returns_1d").mean().alias("m"), pl.col("mkt_ret_1d").first())
    mean = mean.drop_nulls()
    assert mean.height > 100 and np.allclose(mean["m"], mean["mkt_ret_1d"], atol=1e-6)


# ---- 4 + 5 + 7 through build_dataset ---------------------------------------------------------------------------
def test_close_only_build_writes_no_null_column_a_proxy_note_and_the_coverage_file(mini_factory, tmp_path, caplog):
    t = mini_factory(n_stocks=4, n_days=100)
    raw = tmp_path / "raw"
    write_parquet(t["daily_quotes"].select("Date", "Code", "C", "AdjC"), raw / "daily_quotes.parquet")
    write_parquet(t["trading_calendar"], raw / "trading_calendar.parquet")
    cfg = load_config(
        [
            f"paths.raw_dir={raw}",
            f"paths.output_dir={tmp_path / 'out'}",
            f"paths.dataset={tmp_path / 'out' / 'ml_dataset_latest.parquet'}",
        ]
    )
    caplog.set_level("INFO")
    res = build_dataset(cfg)
    df = pl.read_parquet(res.path)
    man = FeatureManifest.for_dataset(res.path)
    dead = [n for n in man.names if df[n].null_count() == df.height]
    assert not dead and "sector" not in man.groups
    assert "mkt_vol_20d_z" not in man.names and "all-null" in man.skipped_groups["market"]  # 252-day z on 100 days
    assert man.notes["market"].startswith("proxy: equal-weighted") and "beta_60d" in man.names
    for p in (res.path, res.latest_path):
        text = coverage_path(p).read_text()
        assert text.startswith("ML dataset coverage: 400 rows") and "market: proxy: equal-weighted" in text
        assert read_json(p.with_name(p.name.removesuffix(".parquet") + ".metadata.json"))["notes"] == man.notes
    assert "coverage table written to" in caplog.text


# ---- 7. coverage table width ---------------------------------------------------------------------------------
META = {
    "rows": 143490,
    "stocks": 20,
    "dates": 7555,
    "start": "1993-01-04",
    "end": "2022-12-30",
    "n_features": 90,
    "groups": {"returns": {"features": 10, "null_share": 0.004}, "market": {"features": 24, "null_share": 0.006}},
    "skipped": {
        "market": "mkt_atr_14, mkt_natr_14 need index H/L",
        "sector": "no sector column (listed_info table absent; files: map data.columns.sector)",
    },
    "notes": {"market": "proxy: equal-weighted index of the universe's 1-day returns (no topix table)"},
}


def test_plain_coverage_table_is_narrow_and_keeps_every_note():
    text = coverage_text(META)
    assert text == coverage_table(META, tty=False)
    rows = text.splitlines()
    assert max(len(r) for r in rows if not r.startswith(("ML dataset", "  "))) <= 40
    assert (
        "  market: proxy: equal-weighted index of the universe's 1-day returns (no topix table); mkt_atr_14, "
        "mkt_natr_14 need index H/L" in rows
    )
    assert "  sector: no sector column (listed_info table absent; files: map data.columns.sector)" in rows
    assert not set("│┃━─") & set(text)


@pytest.mark.parametrize("width", [60, 80, 140])
def test_terminal_coverage_table_fits_the_width(width):
    text = coverage_table(META, width=width, tty=True)
    assert max(len(line) for line in text.splitlines()) <= width
    assert "sector" in text and "proxy" in text


def test_treasury_shares_are_netted_out_of_shares_outstanding(mini_tables, mini_calendar, mini_built, cfg):
    st = mini_tables["statements"].with_columns((pl.col("ShOut") * 0.1).alias("TrShFY"))
    b = build_features({**mini_tables, "statements": st}, mini_calendar, cfg.features, cfg.labels)
    a, n = mini_built.df["shares_outstanding"], b.df["shares_outstanding"]
    ok = a.is_not_null()
    assert ok.sum() > 100 and np.allclose(n.filter(ok).to_numpy(), 0.9 * a.filter(ok).to_numpy(), rtol=1e-5)
    assert np.allclose(
        b.df["market_cap"].filter(ok).to_numpy(), 0.9 * mini_built.df["market_cap"].filter(ok).to_numpy(), rtol=1e-5
    )
