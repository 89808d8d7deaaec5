"""Likely unadjusted corporate actions (splits, reverse splits) in a user's prices, and what to do with them.

A file of raw prices with no adjusted close and no adjustment factor turns every split into a huge fake return
(a 1:2 split reads as −50 %). `detect_splits` flags, per code, a move from the previous row's close to the day's open
(the close where there is no open) within a few per cent of a common split ratio (price × 1/2, 1/3, 1/4, 1/5, 1/10;
reverse splits × 2, 5, 10) that is backed by evidence known at the close of that day: the day's own traded volume
moving inversely (against the median of the 20 rows before, by at least a third of the ratio in log terms), or an
AdjFactor equal to the ratio on that row. Without volume and factor columns (a close-only file), only a move within
2 % of the ratio counts. Rows whose adjusted close is already continuous show no such move and are never flagged.
The decision for day t reads rows up to t only (point in time: removing later rows never changes it).

`data.adjust_splits` (files source): `warn` (default) logs each candidate with code, date and ratio; `adjust` also
rescales the adjusted columns (AdjO/AdjH/AdjL/AdjC × Π of later ratios, AdjVo ÷ it) and records the ratio as the
ex-date's AdjFactor, J-Quants style, leaving the raw columns as they were; `off` skips the check.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import polars as pl

from gogooku3.core.errors import ConfigError

log = logging.getLogger(__name__)

# price multiplier on the ex-date -> the usual name of the action (1:2 = one old share becomes two)
RATIOS = {1 / 2: "1:2", 1 / 3: "1:3", 1 / 4: "1:4", 1 / 5: "1:5", 1 / 10: "1:10", 2.0: "2:1", 5.0: "5:1", 10.0: "10:1"}
POLICIES = ("warn", "adjust", "off")
PRICE_TOL = math.log(1.06)  # |ln(move) − ln(ratio)| with volume or factor evidence
PRICE_ONLY_TOL = math.log(1.02)  # ... and without any (close-only files)
VOL_BEFORE = 20  # rows in the volume median before the ex-date (the ex-date's own volume is compared with it)
VOL_SHARE = 1 / 3  # the volume must move inversely by at least this share of the ratio (in logs)


def _c(name: str) -> pl.Expr:
    return pl.col(name)


def detect_splits(dq: pl.DataFrame) -> pl.DataFrame:
    """Candidate unadjusted splits: Code, Date, ratio ("1:2"), multiplier (price factor), move (observed
    price ratio), volume_change (the day's volume / the median of the 20 rows before; null without volume), evidence
    (volume | factor | price). Point in time: the row of day t is decided from rows up to t."""
    cols = set(dq.columns)
    px = "AdjC" if "AdjC" in cols else "C"
    vo = "AdjVo" if "AdjVo" in cols else ("Vo" if "Vo" in cols else None)
    d = dq.sort("Code", "Date")
    prev = _c(px).shift(1).over("Code")
    first = _c("AdjO") if "AdjO" in cols else _c(px)
    exprs = [(first / prev).alias("_move")]
    if vo is not None:
        v = pl.when(_c(vo) > 0).then(_c(vo))
        before = v.shift(1).rolling_median(VOL_BEFORE, min_samples=3).over("Code")
        # the ex-date's own volume: a median over later rows would decide day t with volume not yet traded
        exprs.append((v / before).alias("volume_change"))
    else:
        exprs.append(pl.lit(None, pl.Float64).alias("volume_change"))
    af = _c("AdjFactor") if "AdjFactor" in cols else pl.lit(None, pl.Float64)
    d = d.with_columns(*exprs, af.cast(pl.Float64).alias("_af"))
    lm = _c("_move").log()
    out = []
    for mult, name in RATIOS.items():
        lr = math.log(mult)
        near = (lm - lr).abs()
        inverse = (_c("volume_change").log() * (1 if lr > 0 else -1) <= -VOL_SHARE * abs(lr)).fill_null(False)
        factor = ((_c("_af").log() - lr).abs() <= PRICE_TOL).fill_null(False)
        price_only = (near <= PRICE_ONLY_TOL) & _c("volume_change").is_null() & _c("_af").is_null()
        evidence = (
            pl.when((near <= PRICE_TOL) & factor)
            .then(pl.lit("factor"))
            .when((near <= PRICE_TOL) & inverse)
            .then(pl.lit("volume"))
            .when(price_only)
            .then(pl.lit("price"))
        )
        hit = d.with_columns(evidence.alias("evidence")).filter(_c("evidence").is_not_null())
        out.append(
            hit.select(
                "Code",
                "Date",
                pl.lit(name).alias("ratio"),
                pl.lit(mult).alias("multiplier"),
                _c("_move").alias("move"),
                "volume_change",
                "evidence",
            )
        )
    res = pl.concat(out) if out else pl.DataFrame()
    return res.sort("Code", "Date").unique(["Code", "Date"], keep="first", maintain_order=True)


def adjust_splits(dq: pl.DataFrame, splits: pl.DataFrame) -> pl.DataFrame:
    """Adjusted columns rescaled for `splits` (Code, Date, multiplier): every row before an ex-date × its
    multiplier (volumes ÷), AdjFactor on the ex-date = the multiplier; raw O/H/L/C/Vo unchanged."""
    if splits.height == 0:
        return dq
    cols = set(dq.columns)
    marks = splits.select("Code", "Date", _c("multiplier").alias("_m"))
    d = dq.join(marks, on=["Code", "Date"], how="left").sort("Code", "Date")
    m = _c("_m").fill_null(1.0)
    # Π of the multipliers strictly after each row: reverse cumulative product, shifted by one row
    later = m.reverse().cum_prod().reverse().shift(-1).fill_null(1.0).over("Code")
    d = d.with_columns(later.alias("_k"))
    upd = [(_c(x) * _c("_k")).alias(x) for x in ("AdjO", "AdjH", "AdjL", "AdjC") if x in cols]
    if "AdjVo" in cols:
        upd.append((_c("AdjVo") / _c("_k")).alias("AdjVo"))
    base = _c("AdjFactor").fill_null(1.0) if "AdjFactor" in cols else pl.lit(1.0)
    upd.append((base * m).alias("AdjFactor"))
    return (
        d.with_columns(upd).drop("_m", "_k").select([*dq.columns, *(["AdjFactor"] if "AdjFactor" not in cols else [])])
    )


def _describe(row: dict[str, Any]) -> str:
    vol = f", volume {row['volume_change']:.1f}x" if row["volume_change"] is not None else ""
    return f"{row['Code']} {row['Date']} {row['ratio']} (price {row['move']:.2f}x{vol}; {row['evidence']})"


def check_splits(tables: dict[str, pl.DataFrame], policy: str, source: str | Path) -> dict[str, pl.DataFrame]:
    """Apply `policy` (`data.adjust_splits`: warn | adjust | off) to the daily_quotes of `tables`; returns the
    tables."""
    if policy not in POLICIES:
        raise ConfigError(f"data.adjust_splits='{policy}' must be one of {', '.join(POLICIES)}")
    dq = tables.get("daily_quotes")
    if policy == "off" or dq is None or dq.height == 0:
        return tables
    found = detect_splits(dq)
    if found.height == 0:
        log.info("%s: no likely unadjusted split in the prices", source)
        return tables
    listed = "; ".join(_describe(r) for r in found.head(10).iter_rows(named=True))
    more = f" (+{found.height - 10} more)" if found.height > 10 else ""
    if policy == "warn":
        log.warning(
            "%s: %d likely unadjusted split(s): %s%s. Returns across them are fake; set "
            "data.adjust_splits=adjust to adjust the prices before them (or map data.columns.adj_close / "
            "adj_factor; data.adjust_splits=off silences this)",
            source,
            found.height,
            listed,
            more,
        )
        return tables
    log.warning(
        "%s: adjusting %d likely unadjusted split(s) (data.adjust_splits=adjust): %s%s",
        source,
        found.height,
        listed,
        more,
    )
    return {**tables, "daily_quotes": adjust_splits(dq, found)}
