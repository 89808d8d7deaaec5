"""build_dataset: outputs on good input; one clear error and no output file on bad input."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.errors import DataError, SchemaError
from gogooku3.core.io import read_json
from gogooku3.features.manifest import FeatureManifest, metadata_path


def write_raw(tables: dict, raw) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        df.write_parquet(raw / f"{name}.parquet")  # no validation here: the builder must catch bad input


def config(tmp_path):
    return load_config(
        [
            f"paths.raw_dir={tmp_path / 'raw'}",
            f"paths.output_dir={tmp_path / 'out'}",
            f"paths.dataset={tmp_path / 'out' / 'ml_dataset_latest.parquet'}",
        ]
    )


@pytest.fixture(scope="module")
def small(mini_factory):
    return mini_factory(n_stocks=4, n_days=100)


def test_build_writes_dataset_latest_metadata_manifest(small, tmp_path, caplog):
    from gogooku3.features.builder import build_dataset

    write_raw(small, tmp_path / "raw")
    caplog.set_level("INFO")
    res = build_dataset(config(tmp_path))
    d = small["daily_quotes"]["Date"]
    assert res.path.name == f"ml_dataset_{d.min():%Y%m%d}_{d.max():%Y%m%d}.parquet"
    df, latest = pl.read_parquet(res.path), pl.read_parquet(res.latest_path)
    assert df.equals(latest) and df.height == small["daily_quotes"].height
    for p in (res.path, res.latest_path):
        meta = read_json(metadata_path(p))
        assert meta["rows"] == df.height and meta["stocks"] == 4 and meta["dates"] == 100
        assert meta["n_features"] == res.n_features >= 139 and meta["peak_rss_mb"] > 0
        assert set(meta["groups"]["market"]) == {"features", "null_share"}
        m = FeatureManifest.for_dataset(p)
        assert m.names == [c for c in df.columns if c in m.names] and len(m.names) == res.n_features
        assert not [n for n in m.names if n.startswith("target_")] and m.targets == [
            f"target_{h}d" for h in (1, 5, 10, 20)
        ]
        # the dataset's facts: lag, calendar, source and every listed group's look-back (purged k-fold needs them)
        assert (m.entry_lag, m.calendar, m.source) == (1, "trading_calendar table", "synthetic")
        assert set(m.groups) <= set(m.lookback) and m.max_lookback == 600  # ema_200 decays below e^-6 in 600
    assert "coverage" in caplog.text and "statements" in caplog.text
    assert not list((tmp_path / "out").glob(".*.tmp"))


def _expect(tables, tmp_path, exc, *words):
    from gogooku3.features.builder import build_dataset

    write_raw(tables, tmp_path / "raw")
    with pytest.raises(exc) as e:
        build_dataset(config(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    return msg


def test_missing_required_column(small, tmp_path):
    _expect(
        {**small, "daily_quotes": small["daily_quotes"].drop("AdjC")},
        tmp_path,
        SchemaError,
        "daily_quotes.parquet",
        "AdjC",
    )


def test_duplicate_keys(small, tmp_path):
    dq = small["daily_quotes"]
    _expect(
        {**small, "daily_quotes": pl.concat([dq, dq.slice(7, 1)])},
        tmp_path,
        SchemaError,
        "daily_quotes.parquet",
        "duplicate",
        "Code, Date",
    )


def test_non_positive_prices(small, tmp_path):
    dq = small["daily_quotes"].with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(0.0).otherwise(pl.col("AdjC")).alias("AdjC")
    )
    _expect({**small, "daily_quotes": dq}, tmp_path, SchemaError, "daily_quotes.parquet", "'AdjC'", "> 0", "5")


def test_rows_on_non_trading_days(small, tmp_path):
    dq = small["daily_quotes"]
    bad = dq.slice(0, 1).with_columns(pl.lit(dt.date(2023, 6, 3)).alias("Date"))  # a Saturday
    _expect(
        {**small, "daily_quotes": pl.concat([dq, bad])},
        tmp_path,
        DataError,
        "daily_quotes.parquet",
        "non-trading",
        "2023, 6, 3",
    )


def test_rows_on_non_trading_days_with_the_xtks_fallback(small, tmp_path):
    dq = small["daily_quotes"]
    bad = dq.slice(0, 1).with_columns(pl.lit(dt.date(2024, 1, 8)).alias("Date"))  # Coming of Age Day
    t = {k: v for k, v in small.items() if k != "trading_calendar"}
    _expect({**t, "daily_quotes": pl.concat([dq, bad])}, tmp_path, DataError, "non-trading")


def test_empty_input(small, tmp_path):
    _expect({**small, "daily_quotes": small["daily_quotes"].head(0)}, tmp_path, DataError, "daily_quotes", "empty")


def test_missing_quotes_file(small, tmp_path):
    _expect(
        {k: v for k, v in small.items() if k != "daily_quotes"},
        tmp_path,
        DataError,
        "daily_quotes.parquet",
        "not found",
    )


def test_corrupt_parquet(small, tmp_path):
    write_raw(small, tmp_path / "raw")
    p = tmp_path / "raw" / "statements.parquet"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    from gogooku3.features.builder import build_dataset

    with pytest.raises(DataError, match=r"statements.parquet: cannot read parquet"):
        build_dataset(config(tmp_path))
    assert not (tmp_path / "out").exists()


def test_statements_for_unknown_codes(small, tmp_path):
    st = small["statements"]
    st = pl.concat([st, st.head(1).with_columns(pl.lit("99990").alias("Code"))])
    _expect({**small, "statements": st}, tmp_path, SchemaError, "statements.parquet", "'Code'", "99990")


def test_bad_statement_dtype(small, tmp_path):
    st = small["statements"].with_columns(pl.col("Sales").cast(pl.Utf8).str.replace(r"^1", "x"))
    _expect({**small, "statements": st}, tmp_path, SchemaError, "statements.parquet", "'Sales'")
