"""The build itself: in one piece (`build_features`, pure: tables in, frame out) or in runs of codes
(`build_in_chunks`), the same frame either way.

The chunked build (above `features.chunk_rows` quote rows, docs/scale.md) runs the per-stock blocks on each run of
codes; the market table is made once over the whole universe; the cross-sectional blocks (`Block.cross_sectional`:
they read other stocks' rows of the same day) run once, on a narrow frame of their inputs built chunk by chunk, and
each chunk takes its rows of their features before it is handed to the writer. `drop_all_null` is the safety net
behind the blocks' own input checks: a feature with no value at all is dropped, and its group notes why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.calendar import TradingCalendar
from gogooku3.core.errors import DataError
from gogooku3.features.common import c
from gogooku3.features.leak_check import check_user_columns
from gogooku3.features.plan import (
    Plan,
    Tables,
    apply_blocks,
    eager,
    plain_config,
    plan_features,
    same_plan,
)

log = logging.getLogger(__name__)


@dataclass
class BuiltFrame:
    """A built frame (ids, features, labels) and what the manifest and the coverage table say of it."""

    df: pl.DataFrame
    groups: dict[str, str]  # feature column -> group
    skipped: dict[str, str] = field(default_factory=dict)  # group -> why it (or part of it) was not built
    notes: dict[str, str] = field(default_factory=dict)  # group -> how it was built where not as usual (a proxy)


def build_features(tables: Tables, calendar: TradingCalendar, features_cfg: Any, labels_cfg: Any) -> BuiltFrame:
    """Build every enabled feature group, the ids and the labels from raw tables (pure; nothing is written)."""
    check_user_columns(tables, calendar, features_cfg, labels_cfg)  # a user column that tracks a future return
    p = plan_features(tables, calendar, features_cfg, labels_cfg)
    out = p.output(p.lf).collect()  # features are typed by Block.apply and day_basis
    return BuiltFrame(out, p.groups, p.skipped, p.notes)


def dead_columns(groups: dict[str, str], nulls: dict[str, int], rows: int) -> list[str]:
    """Feature columns with no value at all (`nulls`: null count per column over `rows` rows)."""
    return [n for n in groups if nulls.get(n, 0) == rows] if rows else []


def note_dropped(skipped: dict[str, str], groups: dict[str, str], dead: list[str]) -> dict[str, str]:
    """`skipped` with each group's dropped all-null columns noted (as `drop_all_null` notes them)."""
    skipped = dict(skipped)
    by_group: dict[str, list[str]] = {}
    for n in dead:
        by_group.setdefault(groups[n], []).append(n)
    for g, names in by_group.items():
        why = f"dropped {len(names)} all-null column(s): {', '.join(names)}"
        skipped[g] = f"{skipped[g]}; {why}" if g in skipped else why
    if dead:
        log.warning("dropping %d all-null feature column(s) from the dataset: %s", len(dead), ", ".join(dead))
    return skipped


def drop_all_null(built: BuiltFrame) -> BuiltFrame:
    """The safety net behind the blocks' own input checks: a feature column with no value at all is dropped from
    the frame (and so from the manifest), and its group's entry in `skipped` says so."""
    df = built.df
    if not built.groups or df.height == 0:
        return built
    nulls = df.select(pl.col(list(built.groups)).null_count()).row(0, named=True)
    dead = dead_columns(built.groups, nulls, df.height)
    if not dead:
        return built
    skipped = note_dropped(built.skipped, built.groups, dead)
    groups = {n: g for n, g in built.groups.items() if n not in dead}
    return BuiltFrame(df.drop(dead), groups, skipped, dict(built.notes))


# ---------------------------------------------------------------------------------------------- chunked build
# A block is per stock unless it declares itself cross-sectional (`Block.cross_sectional`: a window over Date, or
# Date and sector, reads the whole cross-section of each day, so a chunk of codes cannot compute it alone).
PER_CODE_TABLES = ("daily_quotes", "statements", "margin_interest")  # joined by Code: a chunk needs its codes' rows


def code_chunks(dq: pl.DataFrame, chunk_rows: int) -> list[tuple[list[str], int, int]]:
    """Consecutive runs of codes in sorted order with about `chunk_rows` quote rows each: (codes, offset, rows),
    the offset and row count of the run in the (Code, Date)-sorted frame."""
    out: list[tuple[list[str], int, int]] = []
    codes: list[str] = []
    offset = n = 0
    for code, k in dq.group_by(C.CODE).len().sort(C.CODE).iter_rows():
        if codes and n + k > chunk_rows:
            out.append((codes, offset, n))
            codes, offset, n = [], offset + n, 0
        codes.append(code)
        n += k
    if codes:
        out.append((codes, offset, n))
    return out


def chunk_tables(tables: Tables, codes: list[str]) -> Tables:
    """The raw tables of `codes` only (the per-code tables filtered; the others are by Date or Section)."""
    return {
        k: (eager(v).filter(c(C.CODE).is_in(codes)) if k in PER_CODE_TABLES and v is not None else v)
        for k, v in tables.items()
    }


def _cross_sectional_columns(
    tables: Tables, calendar: TradingCalendar, f: dict, lab: dict, full: Plan, chunks: list[tuple[list[str], int, int]]
) -> pl.DataFrame:
    """Code, Date and the features of the cross-sectional blocks for every row: their per-stock inputs are built
    chunk by chunk (narrow), then the blocks run once on the whole, as in the one-piece build."""
    last = max(i for i, b in enumerate(full.blocks) if b.cross_sectional)
    xs = [b for b in full.blocks if b.cross_sectional]
    made = {n for b in xs for st in b.stages for n in st}
    reads = {r for b in xs for st in b.stages for e in st.values() for r in e.meta.root_names()} - made
    inputs = [C.CODE, C.DATE, *sorted(reads - {C.CODE, C.DATE})]
    parts = []
    for codes, _, _ in chunks:
        p = plan_features(chunk_tables(tables, codes), calendar, f, lab, market=full.market)
        same_plan(p, full)
        pre = [b for b in p.blocks[:last] if not b.cross_sectional]
        parts.append(apply_blocks(p.lf, pre, set(inputs)).select(inputs).collect())
    lf = pl.concat(parts).lazy().with_columns(c(C.CODE).set_sorted())
    del parts
    out = [n for b in xs for n in b.features if n in full.groups]
    return apply_blocks(lf, xs, {C.CODE, C.DATE, *out}).select(C.CODE, C.DATE, *out).collect()


def build_in_chunks(
    tables: Tables, calendar: TradingCalendar, features_cfg: Any, labels_cfg: Any, chunk_rows: int, write: Any
) -> Plan:
    """The build in runs of codes of about `chunk_rows` quote rows, each handed to `write` in (Code, Date) order:
    the output equals `build_features`' frame (before `drop_all_null`) while only one chunk's columns are held.

    Per-stock blocks run on each chunk's rows; the market table is made once over the whole universe (its proxy
    index is a per-day aggregate); the cross-sectional blocks (sector, quality: `Block.cross_sectional`) run once on
    a narrow frame of their inputs, and each chunk takes its rows of their features.
    """
    f, lab = plain_config(features_cfg), plain_config(labels_cfg)
    check_user_columns(tables, calendar, f, lab)  # a user column that tracks a future return
    full = plan_features(tables, calendar, f, lab)
    xs = [b for b in full.blocks if b.cross_sectional]
    xs_out = frozenset(n for b in xs for n in b.features if n in full.groups)
    xs_made = {n for b in xs for st in b.stages for n in st}
    late = {
        r
        for b in full.blocks
        if not b.cross_sectional
        for st in b.stages
        for e in st.values()
        for r in e.meta.root_names()
    } & xs_made
    if late:
        raise DataError(
            f"chunked build: per-stock blocks read cross-sectional columns ({', '.join(sorted(late))}); "
            "build it in one piece (features.chunk_rows=0)"
        )
    chunks = code_chunks(eager(tables["daily_quotes"]), chunk_rows)
    log.info("building in %d chunks of about %d rows (%d cross-sectional blocks)", len(chunks), chunk_rows, len(xs))
    xs_frame = _cross_sectional_columns(tables, calendar, f, lab, full, chunks) if xs else None
    for codes, offset, rows in chunks:
        p = plan_features(chunk_tables(tables, codes), calendar, f, lab, market=full.market)
        same_plan(p, full)
        part = p.output(p.lf, [b for b in p.blocks if not b.cross_sectional], xs_out).collect()
        if xs_frame is not None:
            x = xs_frame.slice(offset, rows)
            if not part.select(C.CODE, C.DATE).equals(x.select(C.CODE, C.DATE)):
                raise DataError("chunked build: a chunk's rows do not line up with the cross-sectional features")
            part = part.hstack(x.drop(C.CODE, C.DATE)).select(full.columns)
        write(part)
    return full
