"""The point-in-time ML dataset builder: raw tables → features, ids and labels (one row per Code, Date).

`build_features` is pure (tables in, frame out): every group is a set of Polars expressions applied lazily to the
(Code, Date)-sorted daily frame and collected once. The other tables are attached first, while the frame is still
narrow (market and flows by binary-search look-up, statements and margin by as-of join); then the blocks run in
order, each followed by dropping the helper columns no later block reads. Price and volume levels (Close, SMAs,
volume MAs, MACD, ATR, ...) are put into the day's own share basis at the end (`common.day_basis`), so no level
reflects a split after its date; the dataset's `Close` is the day-t price as traded on day t (what a price filter
such as the backtest's `min_price` needs). `build_dataset` reads and validates the raw tables, builds, and writes the
dataset, its `latest` copy, the metadata, the feature manifest and the coverage table (`<dataset>.coverage.txt`)
atomically.

A block whose inputs are missing is skipped and listed with the reason (`BuiltFrame.skipped`, the manifest's
`skipped_groups`, the coverage table), never written as null columns; `drop_all_null` is the safety net behind that
(a feature with no value at all is dropped, with the reason). Without a topix table the market block runs on a
proxy index of the universe (`market.proxy_index`), noted in `BuiltFrame.notes` and the manifest's `notes`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from omegaconf import DictConfig, OmegaConf

from gogooku3 import columns as C
from gogooku3.calendar import TradingCalendar
from gogooku3.errors import DataError, SchemaError, rows_hint
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
from gogooku3.io import atomic_path, peak_rss_mb, write_json, write_parquet, write_text
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


def build_features(tables: Tables, calendar: TradingCalendar, features_cfg: Any, labels_cfg: Any) -> BuiltFrame:
    """Build every enabled feature group, the ids and the labels from raw tables (pure; nothing is written)."""
    f, lab = _plain(features_cfg), _plain(labels_cfg)
    on = {g: bool(v) for g, v in (f.get("groups") or {}).items()}
    horizons, entry_lag = [int(h) for h in lab["horizons"]], int(lab["entry_lag"])
    if "daily_quotes" not in tables or tables["daily_quotes"] is None:
        raise DataError("raw tables: daily_quotes is required")
    lf, users = base_frame(_lazy(tables["daily_quotes"]))
    lf = add_targets(lf, calendar, horizons, entry_lag)
    lf = lf.with_columns(list(price.core_columns().values()))
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
        lf, mkt_block = _attach_market(lf, tables.get("topix"), f["market"], note, notes)
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

    feats = list(groups)
    targets = [C.target(h) for h in horizons]
    meta = [m for m in META_COLUMNS if m in avail]

    lf = apply_blocks(lf, blocks, {*meta, *feats, *targets, *levels, "_kp", "_kv"})
    lf = lf.with_columns(day_basis(levels))
    out = lf.select(*meta, *feats, *targets).collect()  # features are typed by Block.apply and day_basis
    return BuiltFrame(out, groups, skipped, notes)


def _attach_market(lf: pl.LazyFrame, topix: pl.DataFrame | pl.LazyFrame | None, m: dict, note, notes: dict
                   ) -> tuple[pl.LazyFrame, Block | None]:
    """Join the mkt_* columns: from the topix table, else from a proxy index of the universe (`market.proxy`)."""
    if topix is not None:
        idx = _lazy(topix)
    else:
        mode = str(m.get("proxy", "auto"))
        if mode == "off":
            note("market", "no topix table (and features.market.proxy=off)")
            return lf, None
        have = set(lf.collect_schema().names())
        weights = None
        if "_shout" in have:  # statements with shares outstanding: weight by market cap
            src = statements.shares_block(have).apply(lf)
            weights = c("market_cap")
        else:
            src = lf
        idx, desc = proxy_index(src, mode, weights)
        notes["market"] = desc
        log.info("market: %s", desc)
    mkt, block = market_frame(idx, m)
    mkt = narrow(mkt.collect().unique("Date", keep="last"), block.features)
    return lookup(lf, mkt, c("Date"), "Date", [x for x in mkt.columns if x != "Date"]), block


def drop_all_null(built: BuiltFrame) -> BuiltFrame:
    """The safety net behind the blocks' own input checks: a feature column with no value at all is dropped from
    the frame (and so from the manifest), and its group's entry in `skipped` says so."""
    df = built.df
    if not built.groups or df.height == 0:
        return built
    counts = df.select(pl.col(list(built.groups)).null_count()).row(0, named=True)
    dead = [n for n, k in counts.items() if k == df.height]
    if not dead:
        return built
    skipped = dict(built.skipped)
    by_group: dict[str, list[str]] = {}
    for n in dead:
        by_group.setdefault(built.groups[n], []).append(n)
    for g, names in by_group.items():
        why = f"dropped {len(names)} all-null column(s): {', '.join(names)}"
        skipped[g] = f"{skipped[g]}; {why}" if g in skipped else why
    log.warning("dropping %d all-null feature column(s) from the dataset: %s", len(dead), ", ".join(dead))
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
    out: dict[str, dict[str, float]] = {}
    for n, g in built.groups.items():
        e = out.setdefault(g, {"features": 0, "null_share": 0.0})
        e["features"] += 1
        e["null_share"] += nulls[n] / max(df.height, 1)
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


def build_dataset(cfg: DictConfig) -> BuildResult:
    """Read raw tables from `cfg.paths.raw_dir`, build, write dataset + latest copy + metadata + manifest."""
    t0 = time.perf_counter()
    raw_dir = Path(cfg.paths.raw_dir)
    tables = read_raw_tables(raw_dir)
    exchange = str(cfg.features.calendar_exchange)
    cal = make_calendar(tables, exchange)
    calendar = "trading_calendar table" if "trading_calendar" in tables else exchange
    validate_tables(tables, cal, raw_dir)
    log.info("building features from %s (%d quote rows)", raw_dir, tables["daily_quotes"].height)
    built = drop_all_null(build_features(tables, cal, cfg.features, cfg.labels))
    df = built.df
    if df.height == 0:
        raise DataError(f"{raw_dir}: the build produced no rows")
    start, end = df["Date"].min(), df["Date"].max()
    out_dir = Path(cfg.paths.output_dir)
    path = out_dir / f"ml_dataset_{start:%Y%m%d}_{end:%Y%m%d}.parquet"
    latest = Path(cfg.paths.dataset)
    horizons, entry_lag = [int(h) for h in cfg.labels.horizons], int(cfg.labels.entry_lag)
    manifest = FeatureManifest.from_frame(df, built.groups, horizons, entry_lag, built.skipped, calendar,
                                          lookback=group_lookbacks(_plain(cfg.features)), source=str(cfg.data.source),
                                          notes=built.notes)
    cov = coverage(built)
    seconds = time.perf_counter() - t0
    meta = {
        "rows": df.height, "stocks": df["Code"].n_unique(), "dates": df["Date"].n_unique(),
        "start": start.isoformat(), "end": end.isoformat(), "n_features": len(manifest.names),
        "groups": cov, "skipped": built.skipped, "notes": built.notes, "horizons": horizons, "entry_lag": entry_lag,
        "targets": manifest.targets, "manifest_fingerprint": manifest.fingerprint,
        "build_seconds": round(seconds, 2), "peak_rss_mb": round(peak_rss_mb(), 1), "raw_dir": str(raw_dir),
        "generator": "gogooku3.features.builder",
    }
    write_parquet(df, path, **PARQUET)
    if latest.resolve() != path.resolve():
        with atomic_path(latest) as tmp:
            _link_or_copy(path, tmp)
    for p in dict.fromkeys([path, latest]):
        write_json(metadata_path(p), {**meta, "path": str(p)})
        manifest.save(manifest_path(p))
        write_text(coverage_path(p), coverage_text(meta))
    log.info("%s", _coverage_table(meta))
    log.info("coverage table written to %s", coverage_path(path))
    log.info("wrote %s (%d rows x %d features) in %.1fs, peak RSS %.0f MiB", path, df.height, meta["n_features"],
             seconds, meta["peak_rss_mb"])
    return BuildResult(path, latest, df.height, meta["n_features"], {g: e["features"] for g, e in cov.items()},
                       built.skipped, seconds, meta["peak_rss_mb"], meta)
