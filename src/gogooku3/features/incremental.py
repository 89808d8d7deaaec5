"""Daily incremental update of the ML dataset (`gogooku3 data build --incremental`): after new sessions are appended
to the raw tables, recompute only the rows whose values can have changed and keep the existing dataset's others.

Which rows change. Every feature of row t reads only data published by t (the point-in-time contract), so rows up to
the old end keep their features; only labels look ahead: a row whose t + entry_lag + max(horizons) session lies
past the old end may gain a label. The rows recomputed are therefore those from R = the (entry_lag +
max(horizons))-th last session of the old dataset on, plus the new sessions.

How they are recomputed, equal to a full rebuild:
- the market table (topix or the proxy index) is a per-day table built over the whole history, as in a full build;
- statements, flows and margin are joined from the whole tables (their own windows run over those, not the quotes);
- per-stock columns of unbounded memory (EWMs: ema_*, MACD, RSI/ATR/ADX Wilder smoothing; the cumulative split factor
  and its as-of carry behind shares_outstanding; the stock's row counter behind the maturity flags) are found in the
  blocks' expressions (`unbounded`) and computed over each stock's whole history, a few narrow columns, chunk by
  chunk; the frame is never held whole;
- everything else has a finite look-back of at most `finite_window` rows of the stock, so it is computed on a warm-up
  slice of the quotes: all rows from the session S on, S chosen so that every stock has that many rows before R, twice
  over (the per-day cross-sections the quality block windows again must themselves be complete and exact).

What is written: the months from R's on (the dataset is a folder of monthly files, `features.published`), from the
old rows before R and the recomputed rows; every earlier month is a hard link to the previous version's file.

Safety. The metadata of every build stores fingerprints of the features/labels config and of the raw rows up to its
end date (`features.fingerprints`: per table and column, independent of row order). An update is refused, with one line
saying why, when there is no dataset, when it was built with another config or manifest, or when raw rows up to its
end changed (a correction, a back-filled row); `--fallback-full` turns a refusal into a full build. The adjusted
columns Adj{O,H,L,C,Vo} are left out of the raw fingerprint where the raw prices and AdjFactor are present: a split
restates the whole adjusted history, and the features are scale-free in it (levels are put back into the day's
basis), so the kept rows still equal a full rebuild's to float rounding (see docs/scale.md).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import DataError
from gogooku3.core.io import read_json
from gogooku3.core.scalars import as_date
from gogooku3.features.build import BuiltFrame, chunk_tables, code_chunks, note_dropped
from gogooku3.features.builder import build_dataset
from gogooku3.features.common import Block, c
from gogooku3.features.fingerprints import (
    build_fingerprints,
    config_fingerprints,
    raw_fingerprint,
)
from gogooku3.features.manifest import FeatureManifest, metadata_path
from gogooku3.features.plan import (
    Plan,
    apply_blocks,
    plain_config,
    plan_features,
    same_plan,
)
from gogooku3.features.published import DATA, build_lock, check_name, dataset_files, link_or_copy, resolve, staging
from gogooku3.features.raw_tables import calendar_name, load_tables
from gogooku3.features.writer import (
    BuildResult,
    DatasetStats,
    DatasetWriter,
    dataset_path,
    file_nulls,
    partition_of,
    write_outputs,
)
from gogooku3.sources.schema import table_path

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)

# expressions whose value at t depends on the stock's whole history: smoothers, cumulative ops, fills, row counters
UNBOUNDED = re.compile(r"ewm_|cum_|fill_null_with_strategy|int_range")


class Refused(DataError):
    """The existing dataset cannot be updated incrementally (the message says why)."""


# ---------------------------------------------------------------------------------------------- warm-up
def finite_window(f: dict) -> int:
    """The longest chain of finite per-stock windows any feature reads, in rows of the stock (a bound: windows,
    shifts and the windows over them, e.g. beta_stability_60d = std over 20 rows of a 60-row beta of lagged returns)."""
    w, t, x, q, m = f["windows"], f["technicals"], f["cross"], f["quality"], f["margin"]
    return 1 + max(
        max(w["returns"]),
        max(w["log_returns"]),
        max(w["sma"]),
        max(w["volatility"]) + 1,
        w["parkinson"],
        max(w["volume_ma"]),
        60,  # price_to_sma60
        t["stoch"] + 1,
        t["bb_window"],
        int(x["beta_window"]) + int(x["beta_lag"]) + int(x["stability_window"]) + 1,
        int(m["adv_window"]),
        int(q["vol_window"]) + 1 + max(int(h) for h in q["sharpe_horizons"]) + 5,
    )


def _positions(dq: pl.DataFrame) -> pl.DataFrame:
    """Code, Date and the row's number within its stock (0-based), sorted by Code, Date."""
    return (
        dq.select(C.CODE, C.DATE)
        .sort(C.CODE, C.DATE)
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int32).over(C.CODE).alias("_i"))
    )


def back_from(pos: pl.DataFrame, start: dt.date, rows: int) -> dt.date:
    """The earliest date S such that every stock with a row on or after `start` has `rows` rows before its first
    such row on or after S (or all its rows)."""
    first = pos.filter(c(C.DATE) >= start).group_by(C.CODE).agg(c("_i").min().alias("_f"))
    need = first.with_columns((c("_f") - rows).clip(lower_bound=0).alias("_need"))
    return as_date(pos.join(need, on=C.CODE).filter(c("_i") == c("_need"))[C.DATE].min())


def unbounded(p: Plan) -> list[str]:
    """Columns of the per-stock blocks (and the core helpers) whose value depends on the stock's whole history."""
    names = [n for n, e in p.core.items() if UNBOUNDED.search(str(e))]
    names += [n for b in p.blocks for st in b.stages for n, e in st.items() if UNBOUNDED.search(str(e))]
    return list(dict.fromkeys(names))


def _given(b: Block, names: set[str]) -> Block:
    """A copy of `b` whose columns in `names` are taken as given (already in the frame) instead of computed."""
    stages = [{n: (c(n) if n in names else e) for n, e in st.items()} for st in b.stages]
    return Block(b.group, stages, set(b.flags), dict(b.levels), b.skipped, cross_sectional=b.cross_sectional)


# ---------------------------------------------------------------------------------------------- the update
def _refuse(why: str, fallback_full: bool, cfg: Settings) -> BuildResult:
    if not fallback_full:
        raise Refused(f"incremental build refused: {why}; run a full `gogooku3 data build` (or pass --fallback-full)")
    log.warning("incremental build not possible (%s): building in full", why)
    return build_dataset(cfg)


def _check_existing(cfg: Settings, latest: Path) -> tuple[dict, FeatureManifest] | str:
    """The existing dataset's metadata and manifest (`latest`: resolved to its version), or why it cannot be
    updated."""
    meta_p = metadata_path(latest)
    if not latest.exists() or not meta_p.exists():
        return f"no existing dataset at {cfg.paths.dataset} (with its metadata)"
    meta = read_json(meta_p)
    if "raw_fingerprint" not in meta or "config_fingerprint" not in meta:
        return f"{meta_p} has no raw/config fingerprints (the dataset predates incremental builds)"
    now = config_fingerprints(cfg)
    diff = [k for k in ("features", "labels") if meta["config_fingerprint"].get(k) != now[k]]
    if diff:
        return f"{cfg.paths.dataset} was built with another {' and '.join(diff)} config"
    try:
        manifest = FeatureManifest.for_dataset(latest)
    except DataError as e:
        return str(e)
    if manifest.fingerprint != meta.get("manifest_fingerprint") or manifest.dataset_fingerprint != meta.get(
        "dataset_fingerprint", ""
    ):
        return f"{latest}: its feature manifest does not match its metadata"
    return meta, manifest


def _raw_changes(meta: dict, tables: dict[str, pl.DataFrame], raw_dir: Path, through: dt.date) -> str | None:
    """Why the raw rows up to `through` are not those the dataset was built from (None: they are)."""
    old = meta["raw_fingerprint"]["tables"]
    now = raw_fingerprint(tables, through)
    for name in sorted(set(old) | set(now)):
        if name not in now:
            return f"{table_path(raw_dir, name)}: table gone since the dataset was built"
        if name not in old:
            return f"{table_path(raw_dir, name)}: table new since the dataset was built"
        cols = [k for k in sorted(set(old[name]) | set(now[name])) if old[name].get(k) != now[name].get(k)]
        if cols:
            what = "the row set" if "_rows" in cols else f"column(s) {', '.join(k for k in cols if k != '_rows')}"
            return (
                f"{table_path(raw_dir, name)}: rows up to {through} changed since the dataset was built ({what} differ)"
            )
    return None


def update_dataset(cfg: Settings, fallback_full: bool = False) -> BuildResult:
    """Append the raw tables' new sessions to the existing dataset (`cfg.paths.dataset`), recomputing only the rows
    whose values can change; published (a new version: dataset, metadata, manifest, coverage) as a full build
    publishes one, under the same build lock."""
    check_name(cfg.paths.dataset)
    with build_lock(cfg.paths.output_dir):
        return _update(cfg, fallback_full)


def _update(cfg: Settings, fallback_full: bool) -> BuildResult:
    t0 = time.perf_counter()
    name = Path(cfg.paths.dataset)
    latest = resolve(name)  # read once: every read below is of this version
    got = _check_existing(cfg, latest)
    if isinstance(got, str):
        return _refuse(got, fallback_full, cfg)
    meta, manifest = got
    phases = {"check": time.perf_counter() - t0}
    raw_dir, tables, cal = load_tables(cfg)
    phases["read_raw"] = time.perf_counter() - t0 - sum(phases.values())
    through = dt.date.fromisoformat(meta["raw_fingerprint"]["through"])
    why = _raw_changes(meta, tables, raw_dir, through)
    phases["raw_fingerprint"] = time.perf_counter() - t0 - sum(phases.values())
    if why:
        return _refuse(why, fallback_full, cfg)
    dq = tables["daily_quotes"]
    end = as_date(dq[C.DATE].max())
    if end < through:
        return _refuse(
            f"{table_path(raw_dir, 'daily_quotes')} ends on {end}, before the dataset ({through})", fallback_full, cfg
        )
    if end == through:
        log.info("%s already ends on %s: nothing to add", name, end)
        return BuildResult(
            name,
            name,
            meta["rows"],
            meta["n_features"],
            {g: e["features"] for g, e in meta["groups"].items()},
            meta["skipped"],
            0.0,
            0.0,
            meta,
        )
    f, lab = plain_config(cfg.features), plain_config(cfg.labels)
    lag = manifest.label_gap  # the labels config is the dataset's (its fingerprint matched above)
    sessions = cal.sessions
    at = int(sessions.search_sorted(through))
    redo = sessions[max(at - lag + 1, 0)]
    pos = _positions(dq)
    width = finite_window(f)
    warm = back_from(pos, back_from(pos, redo, width), width)
    del pos
    log.info(
        "incremental build: %s..%s new; rows from %s recomputed, from a warm-up slice starting %s",
        sessions[at + 1] if at + 1 < len(sessions) else end,
        end,
        redo,
        warm,
    )

    full = plan_features(tables, cal, f, lab)  # the market table, over the whole history
    tail = _recompute(tables, cal, f, lab, full, warm, redo, cfg.features.chunk_rows)
    phases["recompute"] = time.perf_counter() - t0 - sum(phases.values())
    old_schema = pl.Schema(pl.read_parquet_schema(latest))
    dead = [n for n in full.groups if n not in old_schema]
    alive = [n for n in dead if tail[n].null_count() < tail.height]
    if alive:
        return _refuse(
            f"feature(s) {', '.join(alive[:5])} had no value in {name} but have values in the new rows "
            "(the feature set changes)",
            fallback_full,
            cfg,
        )
    tail = tail.drop(dead)
    if dict(tail.schema) != dict(old_schema):
        bad = [n for n in set(tail.schema) | set(old_schema) if tail.schema.get(n) != old_schema.get(n)]
        return _refuse(
            f"{name}: columns differ from what the build makes now ({', '.join(sorted(bad)[:5])})", fallback_full, cfg
        )
    groups = {n: g for n, g in full.groups.items() if n not in dead}
    built = BuiltFrame(pl.DataFrame(), groups, note_dropped(full.skipped, full.groups, dead), full.notes)
    calendar = calendar_name(tables, cfg)
    check = FeatureManifest.from_frame(tail, groups, [int(h) for h in lab["horizons"]], int(lab["entry_lag"]))
    if check.fingerprint != manifest.fingerprint:
        return _refuse(f"{name}: its feature manifest differs from what the build makes now", fallback_full, cfg)

    start = dt.date.fromisoformat(meta["start"])
    path = dataset_path(cfg, start, end)
    chunks = [codes for codes, _, _ in code_chunks(dq, cfg.features.chunk_rows or dq.height)]
    with staging(cfg.paths.output_dir, path.name.removesuffix(".parquet")) as tmp:
        data = tmp / DATA
        linked = _write(latest, data, tail, redo, chunks, old_schema)
        phases["write"] = time.perf_counter() - t0 - sum(phases.values())
        rows, nulls = 0, dict.fromkeys(old_schema, 0)
        for part in dataset_files(data):
            n, k = file_nulls(part)
            rows += n
            nulls = {col: nulls[col] + k[col] for col in nulls}
        if rows != dq.height:
            raise DataError(f"incremental build: wrote {rows} rows for {dq.height} quote rows (internal error)")
        dates = dq[C.DATE].unique()
        stats = DatasetStats(old_schema, rows, dq[C.CODE].n_unique(), dates.len(), start, end, nulls)
        extra = build_fingerprints(cfg, tables, end)
        phases["new_raw_fingerprint"] = time.perf_counter() - t0 - sum(phases.values())
        extra["incremental"] = {
            "from": dataset_path(cfg, start, through).name,
            "recomputed_from": redo.isoformat(),
            "warmup_from": warm.isoformat(),
            "recomputed_rows": tail.height,
            "partitions_linked": linked,
            "phase_seconds": {k: round(v, 2) for k, v in phases.items()},  # before the metadata and publishing
        }
        return write_outputs(cfg, path, tmp, stats, built, calendar, t0, extra)


def _write(old: Path, data: Path, tail: pl.DataFrame, redo: dt.date, chunks: list[list[str]], schema: pl.Schema) -> int:
    """The updated dataset into the folder `data`: the months before `redo`'s hard-linked from the old version (the
    same bytes), the others written as a full build writes them (in the same runs of codes, so with the same row
    groups) from the old rows before `redo` and the recomputed `tail`. An old dataset in one file (an older build):
    every month written. Returns how many partitions were linked."""
    first = partition_of(redo)
    files = dataset_files(old)
    linked = [f for f in files if old.is_dir() and f.name < first]
    rest = [f for f in files if f not in linked]
    kept = pl.scan_parquet(rest).filter(c(C.DATE) < redo)
    with DatasetWriter(data) as write:
        for codes in chunks:
            lo, hi = codes[0], codes[-1]
            part = kept.filter((c(C.CODE) >= lo) & (c(C.CODE) <= hi)).collect()
            new = tail.filter((c(C.CODE) >= lo) & (c(C.CODE) <= hi))
            write(pl.concat([part, new]).sort(C.CODE, C.DATE).select(list(schema)))
        write.close()
    for f in linked:
        link_or_copy(f, data / f.name)
    if linked:
        log.info("incremental build: %d of %d monthly partitions linked unchanged", len(linked), len(files))
    return len(linked)


def _recompute(
    tables: dict[str, pl.DataFrame],
    cal: Any,
    f: dict,
    lab: dict,
    full: Plan,
    warm: dt.date,
    redo: dt.date,
    chunk_rows: int,
) -> pl.DataFrame:
    """The output rows from `redo` on: the unbounded per-stock columns over each stock's whole history (chunk by
    chunk), everything else on the quotes from `warm` on."""
    dq = tables["daily_quotes"]
    inf = unbounded(full)
    live = dq.filter(c(C.DATE) >= warm)
    parts = []
    chunks = code_chunks(dq.filter(c(C.CODE).is_in(live[C.CODE].unique().implode())), chunk_rows or dq.height)
    for codes, _, _ in chunks:
        p = plan_features(chunk_tables(tables, codes), cal, f, lab, market=full.market)
        same_plan(p, full)
        got = apply_blocks(p.lf, p.blocks, {C.CODE, C.DATE, *inf}).select(C.CODE, C.DATE, *inf).collect()
        parts.append(got.filter(c(C.DATE) >= warm))
    given = pl.concat(parts)
    del parts
    p = plan_features({**tables, "daily_quotes": live}, cal, f, lab, market=full.market)
    same_plan(p, full)
    rows = live.select(C.CODE, C.DATE).sort(C.CODE, C.DATE)
    if not rows.equals(given.select(C.CODE, C.DATE)):
        raise DataError("incremental build: the history columns do not line up with the warm-up slice")
    lf = p.lf.with_columns(given.drop(C.CODE, C.DATE).get_columns())
    blocks = [_given(b, set(inf)) for b in p.blocks]
    return p.output(lf, blocks).collect().filter(c(C.DATE) >= redo)
