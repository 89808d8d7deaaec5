"""The fingerprints a build stores in its metadata, which an incremental update (`features.incremental`) checks:
of the features/labels config (less build-only keys) and of the raw rows up to the dataset's end date, per table
and column, independent of the files' row order.

The adjusted columns Adj{O,H,L,C,Vo} are left out of the raw fingerprint where the raw prices and AdjFactor are
present: a split restates the whole adjusted history, and the features are scale-free in it (levels are put back
into the day's basis), so the rows already built still equal a full rebuild's (see docs/scale.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.io import fingerprint
from gogooku3.features.common import c
from gogooku3.features.plan import plain_config
from gogooku3.sources.schema import TABLES

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

# the date from which a raw row can be seen by a feature (a row is fingerprinted when this date ≤ the dataset's end)
DATE_KEYS = {
    "daily_quotes": (C.DATE,),
    "listed_info": (C.DATE,),
    "topix": (C.DATE,),
    "trading_calendar": (C.DATE,),
    "statements": ("DiscDate",),
    "investor_types": ("PubDate",),
    "margin_interest": ("PubDate", C.DATE),
}
ADJUSTED = {"AdjO": "O", "AdjH": "H", "AdjL": "L", "AdjC": "C", "AdjVo": "Vo"}
BUILD_ONLY = ("chunk_rows", "user")  # features keys that change how a dataset is built (or whether: the user-column
# leak check), never what it holds


def _digest(s: pl.Series) -> str:
    """16 hex digits of a column's values in order: their bytes, the null mask, for strings the lengths and bytes
    (stable across Polars versions: nothing of Polars' own hashing)."""
    h = hashlib.blake2b(digest_size=8)
    h.update(np.packbits(s.is_null().to_numpy()).data)
    if s.dtype == pl.Utf8:
        arr = s.fill_null("").to_arrow(compat_level=pl.CompatLevel.oldest())  # large_string: int64 offsets
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1]
        h.update(np.diff(offsets).data)
        data = arr.buffers()[2]
        if data is not None:
            h.update(memoryview(data)[offsets[0] : offsets[-1]])
    else:
        v = s.to_physical()
        v = v.cast(pl.Float64) if v.dtype.is_float() else v.cast(pl.Int64)
        h.update(np.ascontiguousarray(v.fill_null(0).to_numpy()).data)
    return h.hexdigest()


def _sorted_by(df: pl.DataFrame, keys: list[str]) -> bool:
    """Whether `df` is sorted by `keys` (lexicographically)."""
    ok: pl.Expr | None = None
    for k in reversed(keys):
        prev = c(k).shift(1)
        ok = c(k) >= prev if ok is None else (c(k) > prev) | ((c(k) == prev) & ok)
    if df.height < 2:
        return True
    assert ok is not None, "_sorted_by needs at least one key"
    return bool(df.select(ok.fill_null(True).all()).item())


def table_fingerprint(df: pl.DataFrame, name: str, through: dt.date) -> dict[str, str]:
    """{column: 16 hex digits} of the table's rows a feature of a row up to `through` can see (date key ≤ through),
    plus `_rows`. The rows are taken in the order of the table's key (all columns for statements), so the file's own
    row order does not matter; a digest names the column that changed."""
    keys = [k for k in DATE_KEYS.get(name, ()) if k in df.columns]
    keep = df.select((pl.coalesce([c(k) for k in keys]) <= through).fill_null(False)).to_series() if keys else None
    if keep is not None and keep.all():
        keep = None  # every row counts: no copy
    key = list(TABLES[name].key) if name in TABLES else []
    rows = df.select(key if key and all(k in df.columns for k in key) else df.columns)  # a unique key, or every column
    rows = rows.filter(keep) if keep is not None else rows
    sort = list(rows.columns)
    order = None if _sorted_by(rows, sort) else rows.with_row_index("_i").sort(sort, nulls_last=True)["_i"]
    skip = {a for a, raw in ADJUSTED.items() if raw in df.columns and "AdjFactor" in df.columns}

    def one(col: str) -> str:
        s = df[col]
        s = s.filter(keep) if keep is not None else s
        return _digest(s.gather(order) if order is not None else s)

    cols = [x for x in df.columns if x not in skip]
    with ThreadPoolExecutor(2) as ex:  # the digests and gathers release the GIL
        out = dict(zip(cols, ex.map(one, cols), strict=True))
    return {"_rows": f"{rows.height:016x}", **out}


def raw_fingerprint(tables: dict[str, pl.DataFrame], through: dt.date) -> dict[str, dict[str, str]]:
    """Per raw table, the fingerprint of its rows that a feature of a row up to `through` can see."""
    return {name: table_fingerprint(df, name, through) for name, df in sorted(tables.items())}


def config_fingerprints(cfg: Settings) -> dict[str, str]:
    """Fingerprints of what a dataset holds: the features config (less build-only keys) and the labels config."""
    f = {k: v for k, v in plain_config(cfg.features).items() if k not in BUILD_ONLY}
    return {"features": fingerprint(f), "labels": fingerprint(plain_config(cfg.labels))}


def build_fingerprints(cfg: Settings, tables: dict[str, pl.DataFrame], end: dt.date) -> dict[str, Any]:
    """The metadata entries an incremental update checks against."""
    return {
        "config_fingerprint": config_fingerprints(cfg),
        "raw_fingerprint": {"through": end.isoformat(), "tables": raw_fingerprint(tables, end)},
    }
