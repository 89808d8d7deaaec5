"""The predictions a backtest reads (Date, Code, pred_{h}d, target_{h}d): reading the file and checking its rows."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import DataError, SchemaError, rows_hint


def read_predictions(path: Path) -> pl.DataFrame:
    """The predictions parquet (DataError when it is missing or unreadable)."""
    if not path.exists():
        raise DataError(f"{path}: predictions file not found")
    try:
        return pl.read_parquet(path)
    except Exception as e:  # broad on purpose: polars raises several types for corrupt files
        raise DataError(f"{path}: cannot read predictions parquet ({type(e).__name__})") from e


def check_input(preds: pl.DataFrame, pred: str, target: str) -> None:
    """SchemaError / DataError unless `preds` has Date, Code, `pred`, `target`, rows, unique (Date, Code) and a
    `pred` value on every day."""
    missing = [c for c in (C.DATE, C.CODE, pred, target) if c not in preds.columns]
    if missing:
        raise SchemaError(f"predictions: missing column(s) {', '.join(missing)}; need Date, Code, {pred}, {target}")
    if preds.height == 0:
        raise DataError("predictions: no rows")
    dup = preds.group_by(C.DATE, C.CODE).len().filter(pl.col("len") > 1)
    if dup.height:
        raise DataError(
            f"predictions: {dup.height} duplicate (Date, Code) rows, e.g. "
            + rows_hint(f"{r[C.DATE]} {r[C.CODE]}" for r in dup.head(5).iter_rows(named=True))
        )
    empty = (
        preds.group_by(C.DATE)
        .agg(k=pl.col(pred).cast(pl.Float64).fill_nan(None).count())
        .filter(pl.col("k") == 0)
        .sort(C.DATE)
    )
    if empty.height:
        raise DataError(
            f"predictions: {empty.height} day(s) without any {pred} value: " + rows_hint(empty[C.DATE].to_list())
        )
