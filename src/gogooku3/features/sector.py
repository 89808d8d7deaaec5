"""Ids from listed_info (point in time) and the same-day sector-relative features (within the 33-sector code).

`Section`, `S33`, `S17` come from the latest listed_info snapshot on or before each Date (as-of join by Code); a row
with no earlier snapshot gets Section "AllMarket" and S33/S17 "Unknown" (never a later snapshot: that would leak).
"""

from __future__ import annotations

import polars as pl

from gogooku3.core import columns as C
from gogooku3.features.common import EPS, Block, c, flag

UNKNOWN = "Unknown"


def attach_listed(
    lf: pl.LazyFrame, listed: pl.LazyFrame | None, sections: dict[str, str], fallback: str
) -> pl.LazyFrame:
    """Add Section, S33, S17 to the daily frame (sorted by Code, Date)."""
    if listed is None:
        return lf.with_columns(
            pl.lit(fallback).alias(C.SECTION), pl.lit(UNKNOWN).alias(C.S33), pl.lit(UNKNOWN).alias(C.S17)
        )
    have = set(listed.collect_schema().names())
    li = (
        listed.select(
            C.CODE,
            pl.col(C.DATE).alias("_li_date"),
            (c("Mkt").cast(pl.Utf8) if "Mkt" in have else pl.lit(None, pl.Utf8)).alias("_mkt"),
            *[(c(x).cast(pl.Utf8) if x in have else pl.lit(None, pl.Utf8)).alias(f"_{x}") for x in (C.S33, C.S17)],
        )
        .unique([C.CODE, "_li_date"], keep="last", maintain_order=True)
        .sort(C.CODE, "_li_date")
    )
    out = lf.join_asof(li, left_on=C.DATE, right_on="_li_date", by=C.CODE, strategy="backward", check_sortedness=False)
    sec = c("_mkt").replace_strict(sections, default=None, return_dtype=pl.Utf8)
    return out.with_columns(
        sec.fill_null(fallback).alias(C.SECTION),
        c("_S33").fill_null(UNKNOWN).alias(C.S33),
        c("_S17").fill_null(UNKNOWN).alias(C.S17),
    ).drop("_li_date", "_mkt", "_S33", "_S17")


def missing_sectors(listed: pl.DataFrame | None) -> str | None:
    """Why the sector block cannot run (no listed_info, or no S33 value in it), else None: without sectors every
    stock is "Unknown" and the block would only write null columns."""
    if listed is None:
        return "no sector column (listed_info table absent; files: map data.columns.sector)"
    if C.S33 not in listed.columns or listed[C.S33].drop_nulls().len() == 0:
        return "no sector column (listed_info has no S33 values; files: map data.columns.sector)"
    return None


def _z(x: str, grp: list[str]) -> pl.Expr:
    return (c(x) - c(x).mean().over(grp)) / (c(x).std().over(grp) + EPS)


def sector_relative(min_count: int) -> Block:
    """Same-day cross-sectional features within (Date, S33); null where the sector has < min_count stocks that day."""
    b = Block("sector", cross_sectional=True)  # within (Date, S33)
    g = [C.DATE, C.S33]
    known = (c(C.S33) != UNKNOWN) & (c("_r1").count().over(g) >= min_count)
    b.add("_sec_r1", pl.when(known).then(c("_r1").mean().over(g)))
    b.add("_sec_ok", known)
    b.next_stage()
    ok = c("_sec_ok")
    b.add("sec_ret_1d_mean", c("_sec_r1"))
    b.add("ret_1d_vs_sec", c("_r1") - c("_sec_r1"))
    b.add("ret_1d_in_sec_z", pl.when(ok).then(_z("_r1", g)))
    b.add("ret_1d_rank_in_sec", pl.when(ok).then(c("_r1").rank("average").over(g) / c("_r1").count().over(g)))
    b.add("ret_5d_vs_sec", pl.when(ok).then(c("returns_5d") - c("returns_5d").mean().over(g)))
    b.add("volume_in_sec_z", pl.when(ok).then(_z("volume_ratio_20", g)))
    b.add("rv20_in_sec_z", pl.when(ok).then(_z(C.VOLATILITY_20D, g)))
    b.add("rsi14_in_sec_z", pl.when(ok).then(_z("rsi_14", g)))
    return b


NEEDS = ("returns_5d", "volume_ratio_20", C.VOLATILITY_20D, "rsi_14")


def section_fallback_flag(fallback: str) -> pl.Expr:
    return flag(c(C.SECTION) == fallback)
