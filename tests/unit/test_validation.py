"""Dataset validation: required columns, feature count, duplicates, prices, null shares, target sanity."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.errors import DataError, SchemaError
from gogooku3.data.validation import drop_too_null, scan_dataset, validate_dataset
from gogooku3.features.manifest import FeatureManifest

N_FEAT = 55


def _checks(**keys) -> dict:
    """The packaged safe.validation values with `keys` on top: validate_dataset takes every one explicitly."""
    return {**dataclasses.asdict(load_config().safe.validation), **keys}


def _data(n_days=30, n_stocks=10, seed=0):
    rng = np.random.default_rng(seed)
    d = [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n_days)]
    rows = n_days * n_stocks
    cols = {f"f{i}": rng.normal(size=rows) for i in range(N_FEAT)}
    df = pl.DataFrame(
        {
            "Code": [f"{i:05d}" for i in range(n_stocks)] * n_days,
            "Date": [a for a in d for _ in range(n_stocks)],
            "Close": rng.uniform(10, 100, rows),
            **cols,
            "target_1d": rng.normal(0, 0.02, rows),
        }
    ).sort("Code", "Date")
    groups = {"Close": "ohlcv", **{f"f{i}": "g" for i in range(N_FEAT)}}
    return df, FeatureManifest.from_frame(df, groups, [1], 1)


def test_clean_dataset_passes_with_stats():
    df, man = _data()
    res = validate_dataset(df, man, [1], **_checks())
    assert res.features == man.names and not res.dropped and not res.flagged_targets
    assert res.stats["n_rows"] == 300 and res.stats["n_stocks"] == 10 and res.stats["n_dates"] == 30


def test_null_feature_dropped_or_rejected_in_training_span_only():
    df, man = _data()
    dates = df["Date"].unique().sort().to_list()
    # f3 is null in the first 20 days only (the training span), f4 only afterwards
    df = df.with_columns(
        pl.when(pl.col("Date") < dates[20]).then(None).otherwise(pl.col("f3")).alias("f3"),
        pl.when(pl.col("Date") >= dates[20]).then(None).otherwise(pl.col("f4")).alias("f4"),
    )
    res = validate_dataset(df, man, [1], dates[:20], **_checks(max_null_share=0.5))
    assert res.dropped == {"f3": 1.0} and "f3" not in res.features and "f4" in res.features
    with pytest.raises(DataError, match="f3"):
        validate_dataset(df, man, [1], dates[:20], **_checks(max_null_share=0.5, null_action="error"))


def test_drop_too_null_is_the_shared_rule():
    df, man = _data()
    dates = df["Date"].unique().sort().to_list()
    df = df.with_columns(
        pl.when(pl.col("Date") < dates[20]).then(None).otherwise(pl.col("f3")).alias("f3"),
        pl.when(pl.col("f0") > 0).then(float("nan")).otherwise(pl.col("f5")).alias("f5"),
    )
    kept, dropped, shares = drop_too_null(df, man.names, dates[:20], 0.4, "drop")
    assert dropped == {"f3": 1.0, "f5": pytest.approx(shares["f5"], abs=1e-4)} and 0.4 < shares["f5"] < 0.6
    assert kept == [f for f in man.names if f not in ("f3", "f5")]
    assert drop_too_null(df, man.names, None, 0.7, "drop")[1] == {}  # over all rows f3 is 2/3 null
    with pytest.raises(DataError, match=r"safe.validation.max_null_share=0.4.*f3 \(100%\)"):
        drop_too_null(df, man.names, dates[:20], 0.4, "error", "ds.parquet")


def test_bad_inputs_raise_one_line_errors():
    df, man = _data()
    with pytest.raises(DataError, match="no rows"):
        validate_dataset(df.head(0), man, [1], **_checks())
    with pytest.raises(SchemaError, match="target_1d"):
        validate_dataset(df.drop("target_1d"), man, [1], **_checks())
    with pytest.raises(DataError, match="only 51 features"):
        validate_dataset(
            df,
            FeatureManifest.from_frame(df, {f"f{i}": "g" for i in range(51)}, [1], 1),
            [1],
            **_checks(min_features=52),
        )
    with pytest.raises(DataError, match="duplicate"):
        validate_dataset(pl.concat([df, df.head(3)]), man, [1], **_checks())
    with pytest.raises(DataError, match="Close"):
        validate_dataset(
            df.with_columns(pl.when(pl.col("f0") > 2).then(-1.0).otherwise(pl.col("Close")).alias("Close")),
            man,
            [1],
            **_checks(),
        )
    with pytest.raises(DataError, match="constant"):
        validate_dataset(df.with_columns(pl.lit(0.01).alias("target_1d")), man, [1], **_checks())
    err = None
    try:
        validate_dataset(pl.concat([df, df.head(3)]), man, [1], **_checks())
    except DataError as e:
        err = str(e)
    assert err is not None and "\n" not in err


def test_large_targets_flagged_with_codes_and_dates():
    df, man = _data()
    df = df.with_columns(
        pl.when((pl.col("Code") == "00002") & (pl.col("Date") == dt.date(2024, 1, 5)))
        .then(1.7)
        .otherwise(pl.col("target_1d"))
        .alias("target_1d")
    )
    res = validate_dataset(df, man, [1], **_checks())
    flag = res.flagged_targets["target_1d"]
    assert flag["n"] == 1 and flag["rows"][0] == {"Code": "00002", "Date": "2024-01-05", "value": 1.7}


def test_scan_projects_and_filters(tmp_path):
    df, man = _data()
    p = tmp_path / "ds.parquet"
    df.with_columns(pl.lit(1.0).alias("junk")).write_parquet(p)
    lf = scan_dataset(p, man, [1], start=dt.date(2024, 1, 10), end=dt.date(2024, 1, 19))
    out = lf.collect()
    assert "junk" not in out.columns and out["Date"].n_unique() == 10
    with pytest.raises(SchemaError, match="target_5d"):
        scan_dataset(p, man, [1, 5])
    with pytest.raises(DataError, match="not found"):
        scan_dataset(tmp_path / "nope.parquet", man, [1])
