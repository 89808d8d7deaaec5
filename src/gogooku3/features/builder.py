"""The point-in-time ML dataset builder: raw tables → features, ids and labels (one row per Code, Date).

`build_features` is pure (tables in, frame out): every group is a set of Polars expressions applied lazily to the
(Code, Date)-sorted daily frame and collected once. The other tables are attached first, while the frame is still
narrow (market and flows by binary-search look-up, statements and margin by as-of join); then the blocks run in
order, each followed by dropping the helper columns no later block reads. Price and volume levels (Close, SMAs,
volume MAs, MACD, ATR, ...) are put into the day's own share basis at the end (`common.day_basis`), so no level
reflects a split after its date; the dataset's `Close` is the day-t price as traded on day t (what a price filter
such as the backtest's `min_price` needs). `build_dataset` reads and validates the raw tables, builds, and writes the
dataset, its `latest` copy, the metadata, the feature manifest and the coverage table (`<dataset>.coverage.txt`)
atomically. Above `features.chunk_rows` quote rows it builds in runs of codes and writes the parquet piece by piece
(`build_in_chunks`, `DatasetWriter`): the same dataset with bounded memory (docs/scale.md). `plan_features` is the
build as a plan (joined frame, blocks, output names) that the chunked build and `features.incremental` reuse.

A block whose inputs are missing is skipped and listed with the reason (`BuiltFrame.skipped`, the manifest's
`skipped_groups`, the coverage table), never written as null columns; `drop_all_null` is the safety net behind that
(a feature with no value at all is dropped, with the reason). Without a topix table the market block runs on a
proxy index of the universe (`market.proxy_index`), noted in `BuiltFrame.notes` and the manifest's `notes`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from omegaconf import DictConfig, OmegaConf

from gogooku3.core import columns as C
from gogooku3.core.calendar import TradingCalendar
from gogooku3.core.errors import DataError, SchemaError, rows_hint
from gogooku3.features import cross as cross_mod
from gogooku3.features import flows as flows_mod
from gogooku3.features import margin as margin_mod
from gogooku3.features import price, quality, sector, statements, technical
from gogooku3.features.common import Block, c, day_basis, lookup, narrow
from gogooku3.features.flags import flags as flag_block
from gogooku3.features.lookback import group_lookbacks
from gogooku3.features.manifest import (
    META_COLUMNS,
    FeatureManifest,
    manifest_path,
    metadata_path,
)
from gogooku3.features.market import market_frame, proxy_index
from gogooku3.features.targets import add_targets
from gogooku3.features.user import user, user_columns
from gogooku3.core.io import atomic_path, peak_rss_mb, write_json, write_parquet, write_text
from gogooku3.sources.schema import TABLES, conform, scan_table, table_path

log = logging.getLogger(__name__)

Tables = dict[str, "pl.DataFrame | pl.LazyFrame"]


@dataclass
class BuiltFrame:
    df: pl.DataFrame
    groups: dict[str, str]  # feature column -> group
    skipped: dict[str, str] = field(default_factory=dict)  # group -> why it (or part of it) was not built
    notes: dict[str, str] = field(default_factory=dict)  # group -> how it was built where not as usual (a proxy)


@dataclass
class BuildResult:
    path: Path
    latest_path: Path
    rows: int
    n_features: int
    group_counts: dict[str, int]
    skipped: dict[str, str]
    seconds: float
    peak_rss_mb: float
    metadata: dict[str, Any]


def _plain(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def _lazy(t: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    return t.lazy() if isinstance(t, pl.DataFrame) else t


def _eager(t: pl.DataFrame | pl.LazyFrame | None) -> pl.DataFrame | None:
    return t.collect() if isinstance(t, pl.LazyFrame) else t


def base_frame(dq: pl.LazyFrame) -> tuple[pl.LazyFrame, list[str]]:
    """Daily quotes → Code, Date, adjusted Open..Volume, raw helpers, user columns; sorted by (Code, Date).

    Adjusted O/H/L/Vo missing but raw ones present (user files) are derived with the day's factor AdjC/C.
    """
    have = dq.collect_schema()
    cols = set(have.names())
    k = c("AdjC") / c("C") if "C" in cols else None
    sel = [c("Code").cast(pl.Utf8), c("Date").cast(pl.Date), c("AdjC").cast(pl.Float64).alias("Close")]
    for adj, raw, out in (("AdjO", "O", "Open"), ("AdjH", "H", "High"), ("AdjL", "L", "Low")):
        if adj in cols:
            sel.append(c(adj).cast(pl.Float64).alias(out))
        elif raw in cols and k is not None:
            sel.append((c(raw) * k).alias(out))
    if "AdjVo" in cols:
        sel.append(c("AdjVo").cast(pl.Float64).alias("Volume"))
    elif "Vo" in cols and k is not None:
        sel.append((c("Vo") / k).alias("Volume"))
    for raw, out in (("Va", "TurnoverValue"), ("C", "_RawC"), ("Vo", "_RawVo"), ("AdjFactor", "_AF")):
        if raw in cols:
            sel.append(c(raw).cast(pl.Float64).alias(out))
    users = user_columns(have)
    sel += [c(u) for u in users]
    lf = dq.select(sel)
    lf = lf.with_columns(day_scales(set(lf.collect_schema().names()))).sort("Code", "Date")
    # sorted by Code first: flagging it lets every over("Code") window use contiguous slices
    return lf.with_columns(c("Code").set_sorted()), users


def day_scales(cols: set[str]) -> list[pl.Expr]:
    """`_kp` = C/AdjC and `_kv` = Vo/AdjVo per row: the factors from the adjusted basis into the day's own basis.

    Either one gives the other (Vo/AdjVo = AdjC/C), so a row with a usable close or volume pair gets both. Without raw
    C and Vo (user files with AdjC only) both are 1: the levels stay adjusted, which is as point in time as the file.
    """
    kp = pl.when((c("_RawC") > 0) & (c("Close") > 0)).then(c("_RawC") / c("Close")) if "_RawC" in cols else None
    kv = (pl.when((c("_RawVo") > 0) & (c("Volume") > 0)).then(c("_RawVo") / c("Volume"))
          if {"_RawVo", "Volume"} <= cols else None)
    if kp is None and kv is None:
        return [pl.lit(1.0).alias("_kp"), pl.lit(1.0).alias("_kv")]
    if kp is None:
        return [(1.0 / kv).alias("_kp"), kv.alias("_kv")]
    if kv is None:
        return [kp.alias("_kp"), (1.0 / kp).alias("_kv")]
    return [pl.coalesce(kp, 1.0 / kv).alias("_kp"), pl.coalesce(kv, 1.0 / kp).alias("_kv")]


@dataclass
class MarketTable:
    """The mkt_* columns, one row per Date, as joined to every stock: from the topix table or the universe's proxy
    index, over the raw tables' whole history (a chunk or a slice of the quotes reuses the table, never rebuilds
    it). `frame` None: no market block (`skip` says why)."""

    frame: pl.DataFrame | None
    block: Block | None
    note: str | None = None
    skip: str | None = None


@dataclass
class Plan:
    """What `build_features` applies: the joined daily frame (lazy, sorted by Code, Date), the blocks in order, and
    the names of the output. `core` are the helper columns added before the joins (`price.core_columns`)."""

    lf: pl.LazyFrame
    blocks: list[Block]
    core: dict[str, pl.Expr]
    groups: dict[str, str]  # feature column -> group
    levels: dict[str, str]  # output price/volume levels, put into the day's basis at the end
    skipped: dict[str, str]
    notes: dict[str, str]
    meta: list[str]
    targets: list[str]
    market: MarketTable | None

    @property
    def columns(self) -> list[str]:
        """The output's columns in order: ids, features, labels."""
        return [*self.meta, *self.groups, *self.targets]

    @property
    def final(self) -> set[str]:
        """Every column the blocks must leave for the output (levels and day scales included)."""
        return {*self.columns, *self.levels, "_kp", "_kv"}

    def output(self, lf: pl.LazyFrame, blocks: list[Block] | None = None, leave: frozenset[str] = frozenset()
               ) -> pl.LazyFrame:
        """Apply `blocks` (default: all) to `lf`, put the levels into the day's basis and select the output columns
        less `leave` (the features of blocks left out)."""
        lf = apply_blocks(lf, self.blocks if blocks is None else blocks, self.final - leave)
        lf = lf.with_columns(day_basis({n: k for n, k in self.levels.items() if n not in leave}))
        return lf.select([n for n in self.columns if n not in leave])


def build_features(tables: Tables, calendar: TradingCalendar, features_cfg: Any, labels_cfg: Any) -> BuiltFrame:
    """Build every enabled feature group, the ids and the labels from raw tables (pure; nothing is written)."""
    p = plan_features(tables, calendar, features_cfg, labels_cfg)
    out = p.output(p.lf).collect()  # features are typed by Block.apply and day_basis
    return BuiltFrame(out, p.groups, p.skipped, p.notes)


def plan_features(tables: Tables, calendar: TradingCalendar, features_cfg: Any, labels_cfg: Any,
                  market: MarketTable | None = None) -> Plan:
    """The build as a plan: joins set up lazily, blocks queued, output names known. Nothing is computed but the
    market table (pass `market` to reuse one built over the whole history, as a chunk or a slice of quotes must)."""
    f, lab = _plain(features_cfg), _plain(labels_cfg)
    on = {g: bool(v) for g, v in (f.get("groups") or {}).items()}
    horizons, entry_lag = [int(h) for h in lab["horizons"]], int(lab["entry_lag"])
    if "daily_quotes" not in tables or tables["daily_quotes"] is None:
        raise DataError("raw tables: daily_quotes is required")
    lf, users = base_frame(_lazy(tables["daily_quotes"]))
    lf = add_targets(lf, calendar, horizons, entry_lag)
    core = price.core_columns()
    lf = lf.with_columns(list(core.values()))
    fallback = f["flows"]["fallback_section"]
    lf = sector.attach_listed(lf, _lazy(tables["listed_info"]) if tables.get("listed_info") is not None else None,
                              {str(k): v for k, v in f["sections"].items()}, fallback)
    avail = set(lf.collect_schema().names())
    groups: dict[str, str] = {}
    levels: dict[str, str] = {}  # output price/volume levels, put into the day's basis at the end
    skipped: dict[str, str] = {}
    notes: dict[str, str] = {}

    def note(g: str, why: str) -> None:
        skipped[g] = f"{skipped[g]}; {why}" if g in skipped else why

    blocks: list[Block] = []  # applied in order at the end, see `apply_blocks`

    def run(b: Block, keep: bool = True) -> None:
        """Queue a block (applied by `apply_blocks`) and note its columns, features, levels and skips."""
        blocks.append(b)
        avail.update(n for st in b.stages for n in st)
        if b.skipped:
            note(b.group, b.skipped)
        if keep:
            groups.update({n: b.group for n in b.features})
            levels.update({n: k for n, k in b.levels.items() if not n.startswith("_")})

    def disabled(g: str) -> bool:
        if on.get(g, True):
            return False
        note(g, "disabled in features.groups")
        return True

    def lacks(g: str, needs: tuple[str, ...]) -> bool:
        gone = [n for n in needs if n not in avail]
        if gone:
            note(g, f"needs {', '.join(gone)} (from a skipped or disabled group)")
        return bool(gone)

    w = f["windows"]
    want = {g: not disabled(g) for g in ("ohlcv", "returns", "volatility", "moving_averages", "price_position",
                                         "volume", "technicals", "market")}
    # every join runs first, on the still narrow frame: a join copies all columns of its left side
    mkt_block = stmt_block = flow_block = margin_block = None
    cross_on = not disabled("cross")
    stmt_on, vol_on = not disabled("statements"), want["volume"]
    if stmt_on or vol_on:
        lf, stmt_block = statements.attach(lf, _eager(tables.get("statements")), calendar, f["statements"], stmt_on)
    if want["market"]:
        market = market or market_table(lf, tables.get("topix"), f["market"])
        if market.skip:
            note("market", market.skip)
        if market.note:
            notes["market"] = market.note
        if market.frame is not None:
            mkt = market.frame
            lf = lookup(lf, mkt, c("Date"), "Date", [x for x in mkt.columns if x != "Date"])
            mkt_block = market.block
    if not disabled("flows"):
        lf, flow_block = flows_mod.attach(lf, _eager(tables.get("investor_types")), calendar, f["flows"])
    if not disabled("margin"):
        lf, margin_block = margin_mod.attach(lf, _eager(tables.get("margin_interest")), calendar, f["margin"], avail)
    avail = set(lf.collect_schema().names())

    # price blocks other groups read are computed even when their own group is switched off (then not output)
    run(price.ohlcv(avail), keep=want["ohlcv"])
    run(price.returns(avail, w), keep=want["returns"])
    run(price.volatility(avail, w), keep=want["volatility"])
    run(price.moving_averages(avail, w), keep=want["moving_averages"])
    run(price.price_position(avail), keep=want["price_position"])
    run(price.volume(avail, w), keep=vol_on)
    run(technical.technicals(avail, f["technicals"]), keep=want["technicals"])
    if mkt_block is not None:
        run(mkt_block)
    if cross_on and not lacks("cross", cross_mod.NEEDS):
        run(cross_mod.cross(f["cross"]))
    if stmt_block is not None:
        run(stmt_block, keep=stmt_on)
        if vol_on:
            if "_shout" in avail:
                run(statements.shares_block(avail))
            else:
                note("volume", "shares_outstanding, turnover_rate, market_cap need the statements table (ShOut)")
    for b in (flow_block, margin_block):
        if b is not None:
            run(b)
    if not disabled("sector") and not lacks("sector", sector.NEEDS):
        why = sector.missing_sectors(_eager(tables.get("listed_info")))
        if why:
            note("sector", why)
        else:
            run(sector.sector_relative(int(f["sector"]["min_count"])))
    if not disabled("quality") and not lacks("quality", quality.NEEDS):
        run(quality.quality(avail, f["quality"]))  # reads returns_1d, returns_{h}d, dollar_volume
    if not disabled("flags"):
        run(flag_block(f["flags"], avail, fallback))
    if not disabled("user") and users:
        run(user(users))

    targets = [C.target(h) for h in horizons]
    meta = [m for m in META_COLUMNS if m in avail]
    return Plan(lf, blocks, core, groups, levels, skipped, notes, meta, targets, market if want["market"] else None)


def market_table(lf: pl.LazyFrame, topix: pl.DataFrame | pl.LazyFrame | None, m: dict) -> MarketTable:
    """The mkt_* columns by Date: from the topix table, else from a proxy index of the universe (`market.proxy`)
    built from `lf`, the daily frame of every stock (collected here, narrow)."""
    note = None
    if topix is not None:
        idx = _lazy(topix)
    else:
        mode = str(m.get("proxy", "auto"))
        if mode == "off":
            return MarketTable(None, None, skip="no topix table (and features.market.proxy=off)")
        have = set(lf.collect_schema().names())
        weights = None
        if "_shout" in have:  # statements with shares outstanding: weight by market cap
            src = statements.shares_block(have).apply(lf)
            weights = c("market_cap")
        else:
            src = lf
        idx, note = proxy_index(src, mode, weights)
        log.info("market: %s", note)
    mkt, block = market_frame(idx, m)
    return MarketTable(narrow(mkt.collect().unique("Date", keep="last"), block.features), block, note)


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


def apply_blocks(lf: pl.LazyFrame, blocks: list[Block], final: set[str]) -> pl.LazyFrame:
    """Apply the blocks in order; after each, keep only the columns a later block or the output still reads, so
    helper columns are freed as soon as they are spent (the single collect would otherwise hold them all)."""
    reads = [{r for st in b.stages for e in st.values() for r in e.meta.root_names()} for b in blocks]
    needed, acc = [], set(final)
    for r in reversed(reads):
        needed.append(set(acc))
        acc |= r
    for b, keep in zip(blocks, reversed(needed), strict=True):
        lf = b.apply(lf)
        names = lf.collect_schema().names()
        if any(n not in keep for n in names):
            lf = lf.select([n for n in names if n in keep])
    return lf


# ---------------------------------------------------------------------------------------------- chunked build
# A block is per stock when every window in it is over Code; one with a window over Date (or Date and sector)
# reads the whole cross-section of each day, so a chunk of codes cannot compute it alone.
_OVER = re.compile(r"\.over\(\[([^\]]*)\]")
PER_CODE_TABLES = ("daily_quotes", "statements", "margin_interest")  # joined by Code: a chunk needs its codes' rows
ROW_GROUP = 262_144  # rows per parquet row group of a chunked write


def cross_sectional(b: Block) -> bool:
    """Whether the block reads other stocks' rows of the same day (a window over anything but Code)."""
    return any(part != 'col("Code")' for st in b.stages for e in st.values() for part in _OVER.findall(str(e)))


def code_chunks(dq: pl.DataFrame, chunk_rows: int) -> list[tuple[list[str], int, int]]:
    """Consecutive runs of codes in sorted order with about `chunk_rows` quote rows each: (codes, offset, rows),
    the offset and row count of the run in the (Code, Date)-sorted frame."""
    out: list[tuple[list[str], int, int]] = []
    codes: list[str] = []
    offset = n = 0
    for code, k in dq.group_by("Code").len().sort("Code").iter_rows():
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
    return {k: (_eager(v).filter(c("Code").is_in(codes)) if k in PER_CODE_TABLES and v is not None else v)
            for k, v in tables.items()}


def _same_plan(p: Plan, full: Plan) -> None:
    if p.columns != full.columns or [b.group for b in p.blocks] != [b.group for b in full.blocks]:
        raise DataError("chunked build: a chunk of codes planned other columns than the whole universe "
                        f"({len(p.columns)} vs {len(full.columns)}); build it in one piece (features.chunk_rows=0)")


def _cross_sectional_columns(tables: Tables, calendar: TradingCalendar, f: dict, lab: dict, full: Plan,
                             chunks: list[tuple[list[str], int, int]]) -> pl.DataFrame:
    """Code, Date and the features of the cross-sectional blocks for every row: their per-stock inputs are built
    chunk by chunk (narrow), then the blocks run once on the whole, as in the one-piece build."""
    last = max(i for i, b in enumerate(full.blocks) if cross_sectional(b))
    xs = [b for b in full.blocks if cross_sectional(b)]
    made = {n for b in xs for st in b.stages for n in st}
    reads = {r for b in xs for st in b.stages for e in st.values() for r in e.meta.root_names()} - made
    inputs = ["Code", "Date", *sorted(reads - {"Code", "Date"})]
    parts = []
    for codes, _, _ in chunks:
        p = plan_features(chunk_tables(tables, codes), calendar, f, lab, market=full.market)
        _same_plan(p, full)
        pre = [b for b in p.blocks[:last] if not cross_sectional(b)]
        parts.append(apply_blocks(p.lf, pre, set(inputs)).select(inputs).collect())
    lf = pl.concat(parts).lazy().with_columns(c("Code").set_sorted())
    del parts
    out = [n for b in xs for n in b.features if n in full.groups]
    return apply_blocks(lf, xs, {"Code", "Date", *out}).select("Code", "Date", *out).collect()


def build_in_chunks(tables: Tables, calendar: TradingCalendar, features_cfg: Any, labels_cfg: Any,
                    chunk_rows: int, write: Any) -> Plan:
    """The build in runs of codes of about `chunk_rows` quote rows, each handed to `write` in (Code, Date) order:
    the output equals `build_features`' frame (before `drop_all_null`) while only one chunk's columns are held.

    Per-stock blocks run on each chunk's rows; the market table is made once over the whole universe (its proxy
    index is a per-day aggregate); the cross-sectional blocks (sector, quality) run once on a narrow frame of
    their inputs, and each chunk takes its rows of their features.
    """
    f, lab = _plain(features_cfg), _plain(labels_cfg)
    full = plan_features(tables, calendar, f, lab)
    xs = [b for b in full.blocks if cross_sectional(b)]
    xs_out = frozenset(n for b in xs for n in b.features if n in full.groups)
    xs_made = {n for b in xs for st in b.stages for n in st}
    late = {r for b in full.blocks if not cross_sectional(b) for st in b.stages for e in st.values()
            for r in e.meta.root_names()} & xs_made
    if late:
        raise DataError(f"chunked build: per-stock blocks read cross-sectional columns ({', '.join(sorted(late))}); "
                        "build it in one piece (features.chunk_rows=0)")
    chunks = code_chunks(_eager(tables["daily_quotes"]), chunk_rows)
    log.info("building in %d chunks of about %d rows (%d cross-sectional blocks)", len(chunks), chunk_rows, len(xs))
    xs_frame = _cross_sectional_columns(tables, calendar, f, lab, full, chunks) if xs else None
    for codes, offset, rows in chunks:
        p = plan_features(chunk_tables(tables, codes), calendar, f, lab, market=full.market)
        _same_plan(p, full)
        part = p.output(p.lf, [b for b in p.blocks if not cross_sectional(b)], xs_out).collect()
        if xs_frame is not None:
            x = xs_frame.slice(offset, rows)
            if not part.select("Code", "Date").equals(x.select("Code", "Date")):
                raise DataError("chunked build: a chunk's rows do not line up with the cross-sectional features")
            part = part.hstack(x.drop("Code", "Date")).select(full.columns)
        write(part)
    return full


@dataclass
class DatasetStats:
    """What the metadata and the coverage table say of a dataset, gathered while it is written."""

    schema: pl.Schema
    rows: int
    stocks: int
    dates: int
    start: Any
    end: Any
    nulls: dict[str, int]

    @classmethod
    def of(cls, df: pl.DataFrame) -> DatasetStats:
        return cls(df.schema, df.height, df["Code"].n_unique(), df["Date"].n_unique(), df["Date"].min(),
                   df["Date"].max(), df.null_count().row(0, named=True))


class DatasetWriter:
    """Writes the dataset piece by piece into one parquet file (row groups in the order given, i.e. (Code, Date);
    each piece holds whole stocks) and gathers its `DatasetStats`. A piece is encoded on a background thread while
    the caller computes the next one (at most one piece waits)."""

    def __init__(self, path: str | Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.path = Path(path)
        self._writer: Any = None
        self._schema: pl.Schema | None = None
        self._rows = self._stocks = 0
        self._nulls: dict[str, int] = {}
        self._dates: list[pl.Series] = []
        self._pool = ThreadPoolExecutor(1)
        self._pending: Any = None
        self._closed = False

    def __call__(self, df: pl.DataFrame) -> None:
        if self._schema is None:
            self._schema = df.schema
        elif df.schema != self._schema:
            diff = [n for n in set(df.schema) | set(self._schema) if df.schema.get(n) != self._schema.get(n)]
            raise DataError(f"{self.path}: a chunk's columns differ from the first chunk's ({', '.join(diff[:5])})")
        self._wait()
        self._pending = self._pool.submit(self._write, df)
        for n, k in df.null_count().row(0, named=True).items():
            self._nulls[n] = self._nulls.get(n, 0) + k
        self._rows += df.height
        self._stocks += df["Code"].n_unique()
        self._dates.append(df["Date"].unique())

    def _write(self, df: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = df.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self._writer is None:
            strings = [n for n, d in df.schema.items() if d == pl.Utf8]  # dictionary pages pay only for labels
            self._writer = pq.ParquetWriter(self.path, table.schema, compression=PARQUET["compression"],
                                            write_statistics=PARQUET["statistics"], use_dictionary=strings)
        self._writer.write_table(table, row_group_size=ROW_GROUP)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # re-raises a failed write here

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:  # an error on the way: stop the background write, leave the file to the caller
            self._closed = True
            self._pool.shutdown(wait=True, cancel_futures=True)
            if self._writer is not None:
                self._writer.close()

    def close(self) -> DatasetStats:
        self._closed = True
        try:
            self._wait()
        finally:
            self._pool.shutdown()
            if self._writer is not None:
                self._writer.close()
        if self._writer is None:
            raise DataError(f"{self.path}: the build produced no rows")
        dates = pl.concat(self._dates).unique()
        return DatasetStats(self._schema, self._rows, self._stocks, dates.len(), dates.min(), dates.max(),
                            self._nulls)


def drop_columns(path: Path, cols: list[str]) -> None:
    """Rewrite the parquet at `path` without `cols` (streamed; the rare path of all-null features in a chunked
    build, which are known only once every chunk is written)."""
    # a name `clean_stale_temps` recognises (`.<dataset>.<owner>.<random>.tmp`) should this process be killed
    tmp = path.with_name(path.name.removesuffix(".tmp") + "d.tmp")
    try:
        pl.scan_parquet(path).drop(cols).sink_parquet(tmp, **PARQUET)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- reading + validation
def read_raw_tables(raw_dir: str | Path) -> dict[str, pl.DataFrame]:
    """Read and validate every raw table present (projection: the schema's columns, plus x_* of daily_quotes)."""
    out: dict[str, pl.DataFrame] = {}
    for name, spec in TABLES.items():
        lf = scan_table(raw_dir, name)
        if lf is None:
            continue
        path = table_path(raw_dir, name)
        names = lf.collect_schema().names()
        keep = [n for n in names if n in spec.columns or (name == "daily_quotes" and n.startswith("x_"))]
        try:
            df = lf.select(keep).collect()
        except Exception as e:  # corrupt row groups surface only on read
            raise DataError(f"{path}: cannot read parquet ({type(e).__name__}: {str(e).splitlines()[0]})") from e
        out[name] = conform(df, name, path)
    if "daily_quotes" not in out:
        raise DataError(f"{table_path(raw_dir, 'daily_quotes')}: file not found "
                        "(run `gogooku3 data synth|fetch|import`)")
    return out


def make_calendar(tables: dict[str, pl.DataFrame], exchange: str) -> TradingCalendar:
    if "trading_calendar" in tables:
        return TradingCalendar.from_table(tables["trading_calendar"])
    d = tables["daily_quotes"]["Date"]
    return TradingCalendar.from_exchange(exchange, d.min(), d.max())


def validate_tables(tables: dict[str, pl.DataFrame], cal: TradingCalendar, raw_dir: str | Path) -> None:
    """Cross-table checks beyond the per-table schema: quotes only on sessions, statements only for known codes."""
    dq = tables["daily_quotes"]
    off = ~cal.is_session(dq["Date"])
    if off.any():
        ex = dq.filter(off).select("Code", "Date").head(3).rows()
        raise DataError(f"{table_path(raw_dir, 'daily_quotes')}: {int(off.sum())} row(s) on non-trading days at rows "
                        f"{rows_hint(off.arg_true().to_list())}, e.g. {ex}")
    if "statements" in tables:
        st = tables["statements"]
        unknown = ~st["Code"].is_in(dq["Code"].unique().implode())
        if unknown.any():
            ex = st.filter(unknown)["Code"].unique(maintain_order=True).head(3).to_list()
            raise SchemaError(f"{table_path(raw_dir, 'statements')}: column 'Code' has codes absent from daily_quotes "
                              f"at rows {rows_hint(unknown.arg_true().to_list())}, e.g. {ex}")


# ---------------------------------------------------------------------------------------------- dataset + report
def coverage(built: BuiltFrame) -> dict[str, dict[str, float]]:
    """Per group: feature count and mean null share."""
    df = built.df
    nulls = df.select(pl.col(list(built.groups)).null_count()).row(0, named=True) if built.groups else {}
    return coverage_of(built.groups, nulls, df.height)


def coverage_of(groups: dict[str, str], nulls: dict[str, int], rows: int) -> dict[str, dict[str, float]]:
    """Per group: feature count and mean null share, from each feature's null count over `rows` rows."""
    out: dict[str, dict[str, float]] = {}
    for n, g in groups.items():
        e = out.setdefault(g, {"features": 0, "null_share": 0.0})
        e["features"] += 1
        e["null_share"] += nulls[n] / max(rows, 1)
    for e in out.values():
        e["null_share"] = round(e["null_share"] / e["features"], 4)
    return out


def _coverage_rows(meta: dict) -> list[tuple[str, str, str, str]]:
    """(group, features, null share, note) per group built, then per group skipped entirely."""
    notes, skipped = meta.get("notes", {}), meta["skipped"]

    def why(g: str) -> str:
        return "; ".join(x for x in (notes.get(g, ""), skipped.get(g, "")) if x)

    rows = [(g, str(e["features"]), f"{e['null_share']:.1%}", why(g)) for g, e in meta["groups"].items()]
    rows += [(g, "0", "-", why(g)) for g in skipped if g not in meta["groups"]]
    return rows


def _coverage_title(meta: dict) -> str:
    return (f"ML dataset coverage: {meta['rows']:,} rows, {meta['stocks']:,} stocks, {meta['dates']:,} dates "
            f"({meta['start']}..{meta['end']}), {meta['n_features']} features")


def coverage_text(meta: dict) -> str:
    """The coverage table as plain text: fixed columns for the counts, then each note on its own line (readable in
    any width, in a log file and in `<dataset>.coverage.txt`)."""
    rows = _coverage_rows(meta)
    wg = max([len("group"), *(len(r[0]) for r in rows)])
    lines = [_coverage_title(meta), f"{'group':<{wg}}  features  null share"]
    lines += [f"{g:<{wg}}  {n:>8}  {ns:>10}" for g, n, ns, _ in rows]
    noted = [(g, note) for g, _, _, note in rows if note]
    if noted:
        lines.append("notes:")
        lines += [f"  {g}: {note}" for g, note in noted]
    return "\n".join(lines) + "\n"


def _log_terminal() -> tuple[bool, int]:
    """(whether the log goes to a terminal, its width): from the root logger's rich console where the CLI set one
    up, else from stderr (where a plain StreamHandler writes)."""
    import sys

    for h in logging.getLogger().handlers:
        con = getattr(h, "console", None)
        if con is not None:
            return bool(con.is_terminal), int(con.width)
    return sys.stderr.isatty(), shutil.get_terminal_size((100, 24)).columns


def _coverage_table(meta: dict, width: int | None = None, tty: bool | None = None) -> str:
    """The coverage table for the log: a rich table fitted to the terminal's width when the log goes to a terminal
    (less the log handler's time/level prefix), else `coverage_text`."""
    if tty is None or width is None:
        is_tty, columns = _log_terminal()
        tty = is_tty if tty is None else tty
        width = width or max(60, columns - LOG_PREFIX)
    if not tty:
        return coverage_text(meta)
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    t = Table(title=_coverage_title(meta))
    for col, kw in (("group", {"no_wrap": True}), ("features", {"justify": "right"}),
                    ("null share", {"justify": "right"}), ("note", {"overflow": "fold"})):
        t.add_column(col, **kw)
    for row in _coverage_rows(meta):
        t.add_row(*row)
    buf = StringIO()
    Console(file=buf, width=width, force_terminal=False, color_system=None).print(t)
    return buf.getvalue()


LOG_PREFIX = 22  # columns the CLI's log handler puts before a message ("[12:34:56] INFO     ")


def coverage_path(dataset_path: str | Path) -> Path:
    p = Path(dataset_path)
    return p.with_name(p.name.removesuffix(".parquet") + ".coverage.txt")


# lz4: the float32 features hardly compress (zstd saves ~15 % of the size), and lz4 writes ~30 % and reads ~35 %
# faster; column statistics stay on for the date filters pushed down by the readers
PARQUET = {"compression": "lz4", "statistics": True}


def _link_or_copy(src: Path, dst: Path) -> None:
    """The `latest` copy as a hard link where the file system allows it (both names are only ever replaced by an
    atomic rename, never written in place), else a byte copy."""
    try:
        dst.unlink(missing_ok=True)  # the empty temporary file from atomic_path
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def dataset_path(cfg: DictConfig, start: Any, end: Any) -> Path:
    return Path(cfg.paths.output_dir) / f"ml_dataset_{start:%Y%m%d}_{end:%Y%m%d}.parquet"


def calendar_name(tables: dict, cfg: DictConfig) -> str:
    return "trading_calendar table" if "trading_calendar" in tables else str(cfg.features.calendar_exchange)


def load_tables(cfg: DictConfig) -> tuple[Path, dict[str, pl.DataFrame], TradingCalendar]:
    """Read and validate the raw tables of `cfg.paths.raw_dir`; their trading calendar."""
    raw_dir = Path(cfg.paths.raw_dir)
    tables = read_raw_tables(raw_dir)
    cal = make_calendar(tables, str(cfg.features.calendar_exchange))
    validate_tables(tables, cal, raw_dir)
    return raw_dir, tables, cal


def build_dataset(cfg: DictConfig) -> BuildResult:
    """Read raw tables from `cfg.paths.raw_dir`, build, write dataset + latest copy + metadata + manifest.

    More quote rows than `features.chunk_rows`: built in chunks of codes and written piece by piece
    (`build_in_chunks`), the same dataset with a fraction of the memory.
    """
    from gogooku3.features.incremental import build_fingerprints

    t0 = time.perf_counter()
    raw_dir, tables, cal = load_tables(cfg)
    dq = tables["daily_quotes"]
    chunk_rows = int(cfg.features.chunk_rows)
    log.info("building features from %s (%d quote rows)", raw_dir, dq.height)
    path = dataset_path(cfg, dq["Date"].min(), dq["Date"].max())
    if 0 < chunk_rows < dq.height:
        with atomic_path(path) as tmp, DatasetWriter(tmp) as write:
            plan = build_in_chunks(tables, cal, cfg.features, cfg.labels, chunk_rows, write)
            stats = write.close()
            dead = dead_columns(plan.groups, stats.nulls, stats.rows)
            skipped = note_dropped(plan.skipped, plan.groups, dead)
            if dead:
                drop_columns(tmp, dead)
                stats.schema = pl.Schema({n: d for n, d in stats.schema.items() if n not in dead})
        built = BuiltFrame(pl.DataFrame(), {n: g for n, g in plan.groups.items() if n not in dead}, skipped,
                           plan.notes)
    else:
        built = drop_all_null(build_features(tables, cal, cfg.features, cfg.labels))
        stats = DatasetStats.of(built.df)
        write_parquet(built.df, path, **PARQUET)
    extra = build_fingerprints(cfg, tables, stats.end)
    return write_outputs(cfg, path, stats, built, calendar_name(tables, cfg), t0, extra)


def write_outputs(cfg: DictConfig, path: Path, stats: DatasetStats, built: BuiltFrame, calendar: str, t0: float,
                  extra: dict[str, Any]) -> BuildResult:
    """Beside the written dataset `path`: the `latest` copy, and for both the metadata (plus `extra`), the feature
    manifest and the coverage table, each written atomically; log the coverage table."""
    if stats.rows == 0:
        raise DataError(f"{cfg.paths.raw_dir}: the build produced no rows")
    latest = Path(cfg.paths.dataset)
    horizons, entry_lag = [int(h) for h in cfg.labels.horizons], int(cfg.labels.entry_lag)
    manifest = FeatureManifest.from_frame(pl.DataFrame(schema=stats.schema), built.groups, horizons, entry_lag,
                                          built.skipped, calendar, lookback=group_lookbacks(_plain(cfg.features)),
                                          source=str(cfg.data.source), notes=built.notes)
    cov = coverage_of(built.groups, stats.nulls, stats.rows)
    seconds = time.perf_counter() - t0
    meta = {
        "rows": stats.rows, "stocks": stats.stocks, "dates": stats.dates,
        "start": stats.start.isoformat(), "end": stats.end.isoformat(), "n_features": len(manifest.names),
        "groups": cov, "skipped": built.skipped, "notes": built.notes, "horizons": horizons, "entry_lag": entry_lag,
        "targets": manifest.targets, "manifest_fingerprint": manifest.fingerprint,
        "build_seconds": round(seconds, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
        "raw_dir": str(cfg.paths.raw_dir), "generator": "gogooku3.features.builder", **extra,
    }
    if latest.resolve() != path.resolve():
        with atomic_path(latest) as tmp:
            _link_or_copy(path, tmp)
    for p in dict.fromkeys([path, latest]):
        write_json(metadata_path(p), {**meta, "path": str(p)})
        manifest.save(manifest_path(p))
        write_text(coverage_path(p), coverage_text(meta))
    log.info("%s", _coverage_table(meta))
    log.info("coverage table written to %s", coverage_path(path))
    log.info("wrote %s (%d rows x %d features) in %.1fs, peak RSS %.0f MiB", path, stats.rows, meta["n_features"],
             seconds, meta["peak_rss_mb"])
    return BuildResult(path, latest, stats.rows, meta["n_features"], {g: e["features"] for g, e in cov.items()},
                       built.skipped, seconds, meta["peak_rss_mb"], meta)
