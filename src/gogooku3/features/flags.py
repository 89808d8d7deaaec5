"""Validity flags (Int8): indicator maturity by the stock's row count, block validity, section fallback, halt days."""

from __future__ import annotations

import datetime as dt

import polars as pl

from gogooku3.core import columns as C
from gogooku3.features.common import Block, c, flag


def flags(fl: dict, present: set[str], fallback_section: str) -> Block:
    """`present`: helper columns left by the blocks that were built (_flow_fresh, _stmt_fresh, _margin_fresh)."""
    b = Block("flags")
    for name, min_rows in fl["maturity"].items():
        b.add(name, flag(c("_row") >= int(min_rows)), is_flag=True)
    for name, helper in (
        ("is_flow_valid", "_flow_fresh"),
        ("is_stmt_valid", "_stmt_fresh"),
        ("is_margin_valid", "_margin_fresh"),
    ):
        b.add(name, flag(c(helper)) if helper in present else pl.lit(0, pl.Int8), is_flag=True)
    b.add("is_section_fallback", flag(c(C.SECTION) == fallback_section), is_flag=True)
    halts = [dt.date.fromisoformat(str(d)) for d in fl["halt_days"]]
    b.add("is_halt_day", flag(c(C.DATE).is_in(halts)), is_flag=True)
    return b
