"""The build plan: which feature blocks and columns the config asks for, in what order, on which joined frame.

`plan_features` turns the raw tables into the (Code, Date)-sorted daily frame (`base_frame`, lazy) and attaches the
other tables first, while the frame is still narrow (market and flows by binary-search look-up, statements and margin
by as-of join); then it queues the blocks in order. `Plan.output` applies them (`apply_blocks`: after each block the
helper columns no later block reads are dropped) and puts price and volume levels (Close, SMAs, volume MAs, MACD,
ATR, ...) into the day's own share basis at the end (`common.day_basis`), so no level reflects a split after its date;
the dataset's `Close` is the day-t price as traded on day t (what a price filter such as the backtest's `min_price`
needs). The one-piece and chunked builds (`features.build`) and the incremental update reuse the plan.

A block whose inputs are missing is skipped and listed with the reason (`Plan.skipped`, later the manifest's
`skipped_groups` and the coverage table), never written as null columns. Without a topix table the market block runs
on a proxy index of the universe (`market.proxy_index`, built once by `market_table`), noted in `Plan.notes`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, overload

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.calendar import TradingCalendar
from gogooku3.core.errors import DataError
from gogooku3.features import cross as cross_mod
from gogooku3.features import flows as flows_mod
from gogooku3.features import margin as margin_mod
from gogooku3.features import price, quality, sector, statements, technical
from gogooku3.features.common import Block, c, day_basis, lookup, narrow
from gogooku3.features.flags import flags as flag_block
from gogooku3.features.manifest import META_COLUMNS
from gogooku3.features.market import market_frame, proxy_index
from gogooku3.features.targets import add_targets
from gogooku3.features.user import user, user_columns

log = logging.getLogger(__name__)

Tables = Mapping[str, "pl.DataFrame | pl.LazyFrame"]  # read only, so a dict of DataFrames is one too


def plain_config(cfg: Any) -> dict:
    """A config node (a Settings dataclass such as `cfg.features`, or a mapping) as a plain dict."""
    return dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type) else dict(cfg)


def _lazy(t: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    return t.lazy() if isinstance(t, pl.DataFrame) else t


@overload
def eager(t: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame: ...
@overload
def eager(t: None) -> None: ...
def eager(t: pl.DataFrame | pl.LazyFrame | None) -> pl.DataFrame | None:
    """A table collected (a DataFrame or None as it is)."""
    return t.collect() if isinstance(t, pl.LazyFrame) else t


def base_frame(dq: pl.LazyFrame) -> tuple[pl.LazyFrame, list[str]]:
    """Daily quotes → Code, Date, adjusted Open..Volume, raw helpers, user columns; sorted by (Code, Date).

    Adjusted O/H/L/Vo missing but raw ones present (user files) are derived with the day's factor AdjC/C.
    """
    have = dq.collect_schema()
    cols = set(have.names())
    k = c("AdjC") / c("C") if "C" in cols else None
    sel = [c(C.CODE).cast(pl.Utf8), c(C.DATE).cast(pl.Date), c("AdjC").cast(pl.Float64).alias(C.CLOSE)]
    for adj, raw, out in (("AdjO", "O", C.OPEN), ("AdjH", "H", C.HIGH), ("AdjL", "L", C.LOW)):
        if adj in cols:
            sel.append(c(adj).cast(pl.Float64).alias(out))
        elif raw in cols and k is not None:
            sel.append((c(raw) * k).alias(out))
    if "AdjVo" in cols:
        sel.append(c("AdjVo").cast(pl.Float64).alias(C.VOLUME))
    elif "Vo" in cols and k is not None:
        sel.append((c("Vo") / k).alias(C.VOLUME))
    for raw, out in (("Va", C.TURNOVER_VALUE), ("C", "_RawC"), ("Vo", "_RawVo"), ("AdjFactor", "_AF")):
        if raw in cols:
            sel.append(c(raw).cast(pl.Float64).alias(out))
    users = user_columns(have)
    sel += [c(u) for u in users]
    lf = dq.select(sel)
    lf = lf.with_columns(day_scales(set(lf.collect_schema().names()))).sort(C.CODE, C.DATE)
    # sorted by Code first: flagging it lets every over("Code") window use contiguous slices
    return lf.with_columns(c(C.CODE).set_sorted()), users


def day_scales(cols: set[str]) -> list[pl.Expr]:
    """`_kp` = C/AdjC and `_kv` = Vo/AdjVo per row: the factors from the adjusted basis into the day's own basis.

    Either one gives the other (Vo/AdjVo = AdjC/C), so a row with a usable close or volume pair gets both. Without raw
    C and Vo (user files with AdjC only) both are 1: the levels stay adjusted, which is as point in time as the file.
    """
    kp = pl.when((c("_RawC") > 0) & (c(C.CLOSE) > 0)).then(c("_RawC") / c(C.CLOSE)) if "_RawC" in cols else None
    kv = (
        pl.when((c("_RawVo") > 0) & (c(C.VOLUME) > 0)).then(c("_RawVo") / c(C.VOLUME))
        if {"_RawVo", C.VOLUME} <= cols
        else None
    )
    if kp is None:
        if kv is None:
            return [pl.lit(1.0).alias("_kp"), pl.lit(1.0).alias("_kv")]
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

    def output(
        self, lf: pl.LazyFrame, blocks: list[Block] | None = None, leave: frozenset[str] = frozenset()
    ) -> pl.LazyFrame:
        """Apply `blocks` (default: all) to `lf`, put the levels into the day's basis and select the output columns
        less `leave` (the features of blocks left out)."""
        lf = apply_blocks(lf, self.blocks if blocks is None else blocks, self.final - leave)
        lf = lf.with_columns(day_basis({n: k for n, k in self.levels.items() if n not in leave}))
        return lf.select([n for n in self.columns if n not in leave])


def plan_features(
    tables: Tables, calendar: TradingCalendar, features_cfg: Any, labels_cfg: Any, market: MarketTable | None = None
) -> Plan:
    """The build as a plan: joins set up lazily, blocks queued, output names known. Nothing is computed but the
    market table (pass `market` to reuse one built over the whole history, as a chunk or a slice of quotes must)."""
    f, lab = plain_config(features_cfg), plain_config(labels_cfg)
    on = {g: bool(v) for g, v in f["groups"].items()}
    horizons, entry_lag = [int(h) for h in lab["horizons"]], int(lab["entry_lag"])
    if "daily_quotes" not in tables or tables["daily_quotes"] is None:
        raise DataError("raw tables: daily_quotes is required")
    lf, users = base_frame(_lazy(tables["daily_quotes"]))
    lf = add_targets(lf, calendar, horizons, entry_lag)
    core = price.core_columns()
    lf = lf.with_columns(list(core.values()))
    fallback = f["flows"]["fallback_section"]
    lf = sector.attach_listed(
        lf,
        _lazy(tables["listed_info"]) if tables.get("listed_info") is not None else None,
        {str(k): v for k, v in f["sections"].items()},
        fallback,
    )
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
    want = {
        g: not disabled(g)
        for g in (
            "ohlcv",
            "returns",
            "volatility",
            "moving_averages",
            "price_position",
            "volume",
            "technicals",
            "market",
        )
    }
    # every join runs first, on the still narrow frame: a join copies all columns of its left side
    mkt_block = stmt_block = flow_block = margin_block = None
    cross_on = not disabled("cross")
    stmt_on, vol_on = not disabled("statements"), want["volume"]
    if stmt_on or vol_on:
        lf, stmt_block = statements.attach(lf, eager(tables.get("statements")), calendar, f["statements"], stmt_on)
    if want["market"]:
        market = market or market_table(lf, tables.get("topix"), f["market"])
        if market.skip:
            note("market", market.skip)
        if market.note:
            notes["market"] = market.note
        if market.frame is not None:
            mkt = market.frame
            lf = lookup(lf, mkt, c(C.DATE), C.DATE, [x for x in mkt.columns if x != C.DATE])
            mkt_block = market.block
    if not disabled("flows"):
        lf, flow_block = flows_mod.attach(lf, eager(tables.get("investor_types")), calendar, f["flows"])
    if not disabled("margin"):
        lf, margin_block = margin_mod.attach(lf, eager(tables.get("margin_interest")), calendar, f["margin"], avail)
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
        why = sector.missing_sectors(eager(tables.get("listed_info")))
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
        mode = str(m["proxy"])
        if mode == "off":
            return MarketTable(None, None, skip="no topix table (and features.market.proxy=off)")
        have = set(lf.collect_schema().names())
        weights = None
        if "_shout" in have:  # statements with shares outstanding: weight by market cap
            src = statements.shares_block(have).apply(lf)
            weights = c(C.MARKET_CAP)
        else:
            src = lf
        idx, note = proxy_index(src, mode, weights)
        log.info("market: %s", note)
    mkt, block = market_frame(idx, m)
    return MarketTable(narrow(mkt.collect().unique(C.DATE, keep="last"), block.features), block, note)


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


def same_plan(p: Plan, full: Plan) -> None:
    """Raise unless `p` (the plan of a chunk or slice of the quotes) plans the columns and blocks of `full`."""
    if p.columns != full.columns or [b.group for b in p.blocks] != [b.group for b in full.blocks]:
        raise DataError(
            "chunked build: a chunk of codes planned other columns than the whole universe "
            f"({len(p.columns)} vs {len(full.columns)}); build it in one piece (features.chunk_rows=0)"
        )
