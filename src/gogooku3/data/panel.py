"""PanelStore (dataset -> dense day × stock × feature arrays), day batches, and the Lightning DataModule.

A training sample is stock i's window `features[d-L+1 : d+1, i, :]`; a batch is one trading day (all stocks with
a valid window that day, capped by sampling). Conversion is vectorised (index maps + one scatter per batch of rows)
and, from a dataset file, chunked by blocks of days with memory bounded by the block, not the dataset.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gogooku3.core import columns as C
from gogooku3.core.errors import DataError
from gogooku3.core.io import STALE_TMP_NO_OWNER_S, fingerprint, read_json, write_json
from gogooku3.core.stores import (
    LEFTOVER,
    MARKER,
    check_files,
    clean_leftovers,
    file_records,
    new_owned_dir,
    owned,
    publish_dir,
    temp_dir_for,
)
from gogooku3.data.normalize import CrossSectionalNormalizer, DenseNormalization, _Workspace

log = logging.getLogger(__name__)

PANEL_VERSION = 3  # 2: chunked conversion, dense normalisation kernels, (Date, Code) order; 3: marker, checksums
CONVERT_BLOCK_MB = 256  # raw features normalised at a time by `PanelStore.convert` (a block of days)
CONVERT_BATCH_ROWS = 1 << 18  # dataset rows read and scattered at a time by `PanelStore.convert` (the
# builder's row group)
ARRAYS = ("features", "mask", "targets", "returns", "sector", "segment")


@dataclass
class PanelStore:
    features: np.ndarray  # [D, N, F] float32, normalised per day, nulls -> 0
    mask: np.ndarray  # [D, N] bool, row exists
    targets: np.ndarray  # [D, N, H] float32, NaN where missing
    returns: np.ndarray  # [D, N] float32 raw (un-normalised) 1-day returns, NaN where missing
    sector: np.ndarray  # [D, N] int16 S33 id (0 = unknown)
    segment: np.ndarray  # [D, N] int16 Section id (0 = unknown)
    codes: list[str]
    dates: list[dt.date]
    feature_names: list[str]
    horizons: list[int]
    sector_vocab: list[str] = field(default_factory=list)  # id k+1 <-> sector_vocab[k]
    segment_vocab: list[str] = field(default_factory=list)
    normalizer: dict = field(default_factory=dict)
    fingerprint: str = ""
    root: Path | None = None  # the folder it was saved to / loaded from (None: in memory only)

    # ---- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_frame(
        cls,
        df: pl.DataFrame | pl.LazyFrame,
        features: Sequence[str],
        horizons: Sequence[int] = (),
        normalizer: CrossSectionalNormalizer | dict | None = None,
        returns_col: str = C.RETURNS_1D,
        sector_vocab: Sequence[str] | None = None,
        segment_vocab: Sequence[str] | None = None,
        fingerprint_: str = "",
        exprs: Mapping[str, pl.Expr] | None = None,
    ) -> PanelStore:
        """Direct mode: an in-memory frame (Code, Date, [Section, S33], features, targets) -> dense panel.

        The same steps as `convert` on one block holding every day (identical arrays), for frames that fit in
        memory (prediction windows, tests). `exprs`: features computed from the frame's columns (`convert`)."""
        lf = df.lazy()
        schema = lf.collect_schema()
        features = list(features)
        _check_columns(schema, features, exprs)
        norm = (
            normalizer
            if isinstance(normalizer, CrossSectionalNormalizer)
            else CrossSectionalNormalizer.from_dict(normalizer or {})
        )
        raw = _raw_dtype(schema, features, exprs)
        base = lf.select(_columns(schema, features, horizons, returns_col, raw, exprs)).collect()
        if base.height == 0:
            raise DataError("panel: the dataset has no rows")
        codes = base.get_column(C.CODE).unique().sort()
        dates = base.get_column(C.DATE).unique().sort().to_list()
        sec_vocab = (
            list(sector_vocab)
            if sector_vocab is not None
            else base.get_column("__sec").drop_nulls().unique().sort().to_list()
        )
        seg_vocab = (
            list(segment_vocab)
            if segment_vocab is not None
            else base.get_column("__seg").drop_nulls().unique().sort().to_list()
        )
        blk = _scatter([base], codes, dates, features, len(horizons), raw, sec_vocab, seg_vocab)
        del base
        # Per-day statistics only (the pooled fallback scale is used only where a day's MAD and std are both 0,
        # i.e. where every value equals the median and z = 0), so fitting on the whole panel is leak-free. The fit
        # also finds the day-level features: a property of how a column is made (one value per day), not a value;
        # their day_level=time_z scores use trailing sessions only.
        dn = DenseNormalization(norm, features)
        try:
            if dn.needs_day_level:
                dn.set_day_level(dn.spread(blk.y))
            feats = np.empty((len(dates), codes.len(), len(features)), dtype=np.float32)
            for s, out in dn.block(blk.y, blk.mask):
                feats[s : s + len(out)] = out
            for d, k, v in dn.finish((dates[0], dates[-1])):
                feats[d, :, k] = v
        finally:
            dn.close()
        _log_day_level(dn)
        return cls(
            feats,
            blk.mask,
            blk.targets,
            blk.returns,
            blk.sector,
            blk.segment,
            codes.to_list(),
            dates,
            features,
            list(horizons),
            sec_vocab,
            seg_vocab,
            norm.to_dict(),
            fingerprint_,
        )

    @classmethod
    def convert(
        cls,
        dataset: str | Path,
        root: str | Path,
        features: Sequence[str],
        horizons: Sequence[int] = (),
        normalizer: dict | None = None,
        returns_col: str = C.RETURNS_1D,
        fingerprint_: str = "",
        block_mb: float = CONVERT_BLOCK_MB,
        batch_rows: int = CONVERT_BATCH_ROWS,
        exprs: Mapping[str, pl.Expr] | None = None,
    ) -> PanelStore:
        """File mode: the dataset parquet -> `root` (.npy files), then loaded memory-mapped.

        Two passes, memory bounded by a batch of rows and a block of days, not by the dataset:
        1. the file is read once, streamed in batches in file order (it is sorted by code, so no date range can be
           read alone), and each batch's rows are scattered, raw, into the date-major .npy files (float32 features
           in place when the dataset's feature columns convert exactly, as the built dataset's do; else a float64
           scratch file);
        2. the features are read back `block_mb` of days at a time (contiguous, from the page cache), normalised
           per day (`DenseNormalization`) and written over the raw values.
        All in `.<root>.<host>-<pid>.tmp/`, renamed onto `root` at the end. Deterministic, and any block or batch
        size gives the same bytes as `from_frame` on the whole frame (repeated (Code, Date) rows: the last wins).

        `exprs`: {feature: expression over the dataset's columns} for features that are not columns (the raw input
        channels, `data.raw_inputs`). Row-local expressions only: a batch holds part of a stock's history, so a
        window over rows (shift, rolling, over) would be cut at the batch's edges."""
        t0 = time.perf_counter()
        root = Path(root)
        scan = pl.scan_parquet(dataset)
        schema = scan.collect_schema()
        features = list(features)
        _check_columns(schema, features, exprs)
        norm = CrossSectionalNormalizer.from_dict(dict(normalizer or {}))
        raw = _raw_dtype(schema, features, exprs)
        cols = _columns(schema, features, horizons, returns_col, raw, exprs)
        lf = scan.select(cols)

        def distinct(col: str) -> list:
            return lf.select(pl.col(col).drop_nulls().unique()).collect(engine="streaming").to_series().sort().to_list()

        codes, dates = pl.Series(C.CODE, distinct(C.CODE), pl.Utf8), distinct(C.DATE)
        if not dates:
            raise DataError(f"panel: the dataset {dataset} has no rows")
        sec_vocab, seg_vocab = distinct("__sec"), distinct("__seg")
        D, N, F, H = len(dates), codes.len(), len(features), len(horizons)
        dn = DenseNormalization(norm, features)
        tmp = _temp_dir(root)
        files: dict[str, _NpyFile] = {}
        try:
            files = {
                "features": _NpyFile(tmp / "features.npy", (D, N, F), np.float32),
                "mask": _NpyFile(tmp / "mask.npy", (D, N), np.bool_),
                "targets": _NpyFile(tmp / "targets.npy", (D, N, H), np.float32, fill=np.nan),
                "returns": _NpyFile(tmp / "returns.npy", (D, N), np.float32, fill=np.nan),
                "sector": _NpyFile(tmp / "sector.npy", (D, N), np.int16),
                "segment": _NpyFile(tmp / "segment.npy", (D, N), np.int16),
            }
            if raw != np.float32:
                files["raw"] = _NpyFile(tmp / "raw.npy", (D, N, F), raw)
            scratch = files.get("raw", files["features"])
            # pass 1: every row once, raw, into the date-major files
            first = _Pass1((pl.Series(dates, dtype=pl.Date), codes), features, H, sec_vocab, seg_vocab, scratch, files)
            for batch in _file_batches(dataset, [c for c in schema if c in _source_columns(cols)], batch_rows):
                first.add(batch.select(cols))
            del first
            # pass 2: blocks of days, normalised in place
            step = max(1, min(D, int(block_mb * 2**20 // (N * F * raw.itemsize))))
            blocks = [(s, min(s + step, D)) for s in range(0, D, step)]
            buf, mbuf = np.empty((step, N, F), raw), np.empty((step, N), np.bool_)

            def read(s: int, e: int) -> tuple[np.ndarray, np.ndarray]:
                blk, present = scratch.read_days(s, e, buf), files["mask"].read_days(s, e, mbuf)
                blk[~present] = np.nan  # no row that day: not a value
                return blk.transpose(2, 0, 1), present  # [F, b, N] view

            if dn.needs_day_level:
                dn.set_day_level(np.concatenate([dn.spread(read(s, e)[0]) for s, e in blocks]))
            for s, e in blocks:
                y, present = read(s, e)
                for off, out in dn.block(y, present):
                    files["features"].write_days(s + off, out)
            for d, k, v in dn.finish((dates[0], dates[-1])):  # values that needed the pooled fallback std
                files["features"].write_at(d, k, v)
            for f in files.values():
                f.close()
            if "raw" in files:
                files["raw"].path.unlink()
            write_json(
                tmp / "panel.json",
                _metadata(
                    codes.to_list(),
                    dates,
                    features,
                    list(horizons),
                    sec_vocab,
                    seg_vocab,
                    norm.to_dict(),
                    fingerprint_,
                    (D, N, F),
                    file_records(tmp, _npy_names()),
                ),
            )
            _publish(tmp, root)
        finally:
            dn.close()
            for f in files.values():
                f.close()
            shutil.rmtree(tmp, ignore_errors=True)
        _log_day_level(dn)
        log.info(
            "panel: converted %s -> %s (%d days x %d stocks x %d features) in %.1f s, %d block(s) of <= %d days",
            dataset,
            root,
            D,
            N,
            F,
            time.perf_counter() - t0,
            len(blocks),
            step,
        )
        return cls.load(root)

    @classmethod
    def build(
        cls,
        dataset: str | Path,
        features: Sequence[str],
        horizons: Sequence[int],
        cache_dir: str | Path,
        normalizer: dict,
        manifest_fingerprint: str,
        dataset_fingerprint: str,
        returns_col: str = C.RETURNS_1D,
        force: bool = False,
        block_mb: float = CONVERT_BLOCK_MB,
        exprs: Mapping[str, pl.Expr] | None = None,
    ) -> PanelStore:
        """File mode: convert once into `<cache_dir>/panels/<fingerprint>/` (memory-mapped .npy), reuse after.
        `exprs` (computed features, `convert`) enter the fingerprint by their text, so each input mode and channel
        spec has its own panel in the same cache."""
        fp = fingerprint(
            PANEL_VERSION,
            dataset_fingerprint,
            manifest_fingerprint,
            normalizer,
            list(features),
            list(horizons),
            returns_col,
            *([{n: str(e) for n, e in exprs.items()}] if exprs else []),
        )
        root = Path(cache_dir) / "panels" / fp
        clean_leftovers(root.parent, _complete, "panel cache")  # puts back a panel a killed replacement set aside
        if root.joinpath("panel.json").exists() and not force:
            try:
                panel = cls.load(root, verify=True)
            except DataError as e:
                if not owned(root):
                    raise
                log.warning("panel: %s; converting the dataset again", " ".join(str(e).split()))
            else:
                log.info("panel: reusing %s", root)
                return panel
        return cls.convert(dataset, root, features, horizons, dict(normalizer), returns_col, fp, block_mb, exprs=exprs)

    # ---- persistence ----------------------------------------------------------------------------------
    def save(self, root: str | Path) -> Path:
        """Write the arrays into `.<root>.<host>-<pid>.tmp/`, then rename it onto `root` (replacing an old one)."""
        root = Path(root)
        tmp = _temp_dir(root)
        try:
            for name in ARRAYS:
                np.save(tmp / f"{name}.npy", getattr(self, name))
            write_json(tmp / "panel.json", {**self.metadata(), "files": file_records(tmp, _npy_names())})
            _publish(tmp, root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.root = root
        return root

    def metadata(self) -> dict[str, Any]:
        return _metadata(
            self.codes,
            self.dates,
            self.feature_names,
            self.horizons,
            self.sector_vocab,
            self.segment_vocab,
            self.normalizer,
            self.fingerprint,
            self.features.shape,
        )

    @classmethod
    def load(cls, root: str | Path, mmap: bool = True, verify: bool = False) -> PanelStore:
        """The panel saved in `root`; `verify`: every array's size and checksum checked against panel.json first (a
        DataError naming the file when one differs; `build` verifies the panel it reuses)."""
        root = Path(root)
        meta = read_json(root / "panel.json")
        if verify:
            if not isinstance(meta.get("files"), dict):
                raise DataError(f"{root / 'panel.json'}: no checksums (written by another version)")
            problem = check_files(root, meta["files"])
            if problem is not None:
                raise DataError(f"panel cache {root}: {problem}")
        arrs = {n: _load_array(root / f"{n}.npy", mmap) for n in ARRAYS}
        return cls(
            **arrs,
            codes=meta["codes"],
            dates=[dt.date.fromisoformat(d) for d in meta["dates"]],
            feature_names=meta["feature_names"],
            horizons=meta["horizons"],
            sector_vocab=meta["sector_vocab"],
            segment_vocab=meta["segment_vocab"],
            normalizer=meta["normalizer"],
            fingerprint=meta["fingerprint"],
            root=root,
        )

    # ---- queries --------------------------------------------------------------------------------------
    @property
    def n_days(self) -> int:
        return self.features.shape[0]

    def day_index(self, dates: Sequence[dt.date]) -> np.ndarray:
        pos = {d: k for k, d in enumerate(self.dates)}
        return np.array(sorted(pos[d] for d in dates if d in pos), dtype=np.int64)

    def window_valid(self, window: int, min_window_frac: float) -> np.ndarray:
        """[D, N] bool: row present on d, d >= L-1, and >= ceil(frac·L) rows present in [d-L+1, d]."""
        m = np.asarray(self.mask)
        cs = np.concatenate([np.zeros((1, m.shape[1]), np.int32), np.cumsum(m, axis=0, dtype=np.int32)])
        count = np.zeros_like(cs[1:])
        count[window - 1 :] = cs[window:] - cs[:-window] if window <= m.shape[0] else 0
        need = math.ceil(min_window_frac * window)
        ok = m & (count >= need)
        ok[: window - 1] = False
        return ok

    def label_valid(self, horizon_pos: int = 0) -> np.ndarray:
        return (
            np.isfinite(np.asarray(self.targets[..., horizon_pos]))
            if self.targets.shape[-1]
            else np.zeros(self.mask.shape, bool)
        )


_EXACT_F32 = (pl.Float32, pl.Int8, pl.Int16, pl.UInt8, pl.UInt16, pl.Boolean, pl.Null)


def _check_columns(schema: pl.Schema, features: Sequence[str], exprs: Mapping[str, pl.Expr] | None = None) -> None:
    exprs = exprs or {}
    read = [c for f in features for c in (exprs[f].meta.root_names() if f in exprs else [f])]
    missing = [c for c in dict.fromkeys([C.CODE, C.DATE, *read]) if c not in schema]
    if missing:
        raise DataError(f"panel: dataset lacks {len(missing)} column(s), e.g. {', '.join(missing[:5])}")


def _raw_dtype(schema: pl.Schema, features: Sequence[str], exprs: Mapping[str, pl.Expr] | None = None) -> np.dtype:
    """float32 when every feature converts to it exactly (the built dataset: Float32 and Int8; a computed feature
    by the dtype of its expression), else float64: the normaliser sees the dataset's own values either way."""
    exprs = exprs or {}
    computed = pl.LazyFrame(schema=schema).select(exprs[f].alias(f) for f in features if f in exprs).collect_schema()
    exact = all(any((computed[f] if f in exprs else schema[f]) == t for t in _EXACT_F32) for f in features)
    return np.dtype(np.float32 if exact else np.float64)


def _columns(
    schema: pl.Schema,
    features: Sequence[str],
    horizons: Sequence[int],
    returns_col: str,
    raw: np.dtype,
    exprs: Mapping[str, pl.Expr] | None = None,
) -> list[pl.Expr]:
    """The panel's columns of a dataset frame: Code, Date, the features (as `raw`; `exprs`' computed from their
    expressions), targets, __ret, __seg, __sec."""
    exprs = exprs or {}
    fdt = pl.Float32 if raw == np.float32 else pl.Float64
    tcols = [
        pl.col(t).cast(pl.Float32) if t in schema else pl.lit(None, pl.Float32).alias(t)
        for t in (C.target(h) for h in horizons)
    ]
    ret = pl.col(returns_col).cast(pl.Float32) if returns_col in schema else pl.lit(None, pl.Float32)
    seg = pl.col(C.SECTION).cast(pl.Utf8) if C.SECTION in schema else pl.lit(None, pl.Utf8)
    sec = pl.col(C.S33).cast(pl.Utf8) if C.S33 in schema else pl.lit(None, pl.Utf8)
    return [
        pl.col(C.CODE).cast(pl.Utf8),
        pl.col(C.DATE).cast(pl.Date),
        *[(exprs[f] if f in exprs else pl.col(f)).cast(fdt).alias(f) for f in features],
        *tcols,
        ret.alias("__ret"),
        seg.alias("__seg"),
        sec.alias("__sec"),
    ]


def _source_columns(exprs: Sequence[pl.Expr]) -> set[str]:
    """The dataset columns a `_columns` selection reads."""
    return {c for e in exprs for c in e.meta.root_names()}


def _file_batches(path: str | Path, columns: Sequence[str], rows: int) -> Iterator[pl.DataFrame]:
    """The file's rows in file order, a row group (or a `rows` slice of a larger one) at a time, read when asked
    for (Polars' streaming batches run ahead of a slow consumer and end up holding most of the file)."""
    import pyarrow.parquet as pq

    from gogooku3.features.published import dataset_files

    files = dataset_files(path)  # a dataset partitioned by date: its files' row groups in turn
    lf = pl.scan_parquet(files).select(list(columns))
    slices, start = [], 0
    for g in (m.row_group(i) for m in map(pq.read_metadata, files) for i in range(m.num_row_groups)):
        n = g.num_rows
        parts = max(1, math.ceil(n / max(1, rows)))
        slices += [(start + n * k // parts, n * (k + 1) // parts - n * k // parts) for k in range(parts)]
        start += n
    slices = [(a, n) for a, n in slices if n > 0]
    with ThreadPoolExecutor(1, thread_name_prefix="panel-read") as pool:  # decode the next slice meanwhile
        nxt = pool.submit(lf.slice(*slices[0]).collect) if slices else None
        for k in range(len(slices)):
            assert nxt is not None  # submitted for every slice
            df = nxt.result()
            nxt = pool.submit(lf.slice(*slices[k + 1]).collect) if k + 1 < len(slices) else None
            yield df


@dataclass
class _Block:
    y: np.ndarray  # [F, b, N] raw features (NaN: null or no row)
    mask: np.ndarray  # [b, N]
    targets: np.ndarray  # [b, N, H]
    returns: np.ndarray  # [b, N]
    sector: np.ndarray  # [b, N]
    segment: np.ndarray  # [b, N]


def _cells(
    df: pl.DataFrame, day_of: pl.Series, codes: pl.Series, sec_vocab: Sequence[str], seg_vocab: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, pl.DataFrame]:
    """Day and stock index of each row of a frame of `_columns`, and the frame with __sec / __seg as ids."""
    idx = df.select(
        pl.col(C.DATE).replace_strict(day_of, pl.Series(np.arange(len(day_of))), return_dtype=pl.Int64).alias("d"),
        pl.col(C.CODE).replace_strict(codes, pl.Series(np.arange(codes.len())), return_dtype=pl.Int64).alias("i"),
        _vocab_id("__sec", sec_vocab),
        _vocab_id("__seg", seg_vocab),
    )
    return idx["d"].to_numpy(), idx["i"].to_numpy(), df.with_columns(idx.select("__sec", "__seg"))


def _in_cell_order(df: pl.DataFrame, flat: np.ndarray) -> tuple[pl.DataFrame, np.ndarray]:
    """Rows ordered by cell (day·N + stock), ascending. Where a cell repeats the last row wins, as
    `unique(keep="last")` would (later frames overwrite earlier ones the same way)."""
    order = np.argsort(flat, kind="stable")  # equal cells keep their file order: the last is last
    flat = flat[order]
    last = np.ones(len(flat), bool)
    last[:-1] = flat[1:] != flat[:-1]
    if not last.all():
        order, flat = order[last], flat[last]
    if not (len(order) == df.height and np.array_equal(order, np.arange(df.height))):
        df = df.select(pl.all().gather(order))
    return df, flat


def _scatter(
    frames: Iterable[pl.DataFrame],
    codes: pl.Series,
    dates: Sequence[dt.date],
    features: Sequence[str],
    n_targets: int,
    raw: np.dtype,
    sec_vocab: Sequence[str],
    seg_vocab: Sequence[str],
) -> _Block:
    """Rows of `dates` (frames of `_columns`, in source order) -> dense in-memory arrays."""
    b, N, F = len(dates), codes.len(), len(features)
    blk = _Block(
        np.full((F, b, N), np.nan, raw),
        np.zeros((b, N), bool),
        np.full((b, N, n_targets), np.nan, np.float32),
        np.full((b, N), np.nan, np.float32),
        np.zeros((b, N), np.int16),
        np.zeros((b, N), np.int16),
    )
    day_of = pl.Series(list(dates), dtype=pl.Date)
    y = blk.y.reshape(F, b * N)
    for df in frames:
        if df.height == 0:
            continue
        d, i, df = _cells(df, day_of, codes, sec_vocab, seg_vocab)
        df, flat = _in_cell_order(df, d * N + i)
        for k, f in enumerate(features):  # one feature at a time: contiguous writes, no frame copy
            y[k][flat] = df.get_column(f).to_numpy()
        blk.mask.reshape(-1)[flat] = True
        if n_targets:
            blk.targets.reshape(b * N, n_targets)[flat] = df.select(df.columns[2 + F : 2 + F + n_targets]).to_numpy()
        blk.returns.reshape(-1)[flat] = df.get_column("__ret").to_numpy()
        blk.sector.reshape(-1)[flat] = df.get_column("__sec").to_numpy()
        blk.segment.reshape(-1)[flat] = df.get_column("__seg").to_numpy()
    return blk


class _Pass1:
    """State of the conversion's first pass: the date-major files, the highest stock written on each day, and
    work arrays reused across batches."""

    def __init__(
        self,
        keys: tuple[pl.Series, pl.Series],
        features: Sequence[str],
        n_targets: int,
        sec_vocab: Sequence[str],
        seg_vocab: Sequence[str],
        scratch: _NpyFile,
        files: dict[str, _NpyFile],
    ) -> None:
        self.day_of, self.codes = keys
        self.features, self.n_targets, self.vocabs = list(features), n_targets, (sec_vocab, seg_vocab)
        self.scratch, self.files = scratch, files
        self.high = np.full(len(self.day_of), -1, np.int64)
        self.ws = _Workspace()

    def add(self, df: pl.DataFrame) -> None:
        """One batch of rows (a frame of `_columns`) -> its cells of the date-major files (raw features into the
        scratch). A day's rows in the batch are written as one span of the day's stocks, gaps included, when no
        earlier batch wrote inside that span (always, for a code-sorted file): gap cells then hold no row yet,
        so their filler (mask False, NaN, id 0; features masked in pass 2) is what the file had. Otherwise (an
        unsorted file, repeated rows) each run of adjacent cells is written alone."""
        if df.height == 0:
            return
        D, N, F, H = len(self.day_of), self.codes.len(), len(self.features), self.n_targets
        d, i, df = _cells(df, self.day_of, self.codes, *self.vocabs)
        lo, hi = np.full(D, N, np.int64), np.full(D, -1, np.int64)
        np.minimum.at(lo, d, i)
        np.maximum.at(hi, d, i)
        days = np.flatnonzero(hi >= 0)
        width = hi[days] - lo[days] + 1
        base = np.zeros(D, np.int64)
        base[days] = np.cumsum(width) - width
        pos = base[d] + i - lo[d]
        total = int(width.sum())
        if (lo[days] > self.high[days]).all() and np.bincount(pos, minlength=total).max() <= 1:
            feats = self.ws.get("features", (total, F), self.scratch.dtype)
            feats[pos] = df.select(self.features).to_numpy(order="c")
            cols = [(self.scratch, feats)]
            for name, dtype, fill, src in (
                ("mask", np.bool_, False, True),
                ("returns", np.float32, np.nan, df.get_column("__ret")),
                ("sector", np.int16, 0, df.get_column("__sec")),
                ("segment", np.int16, 0, df.get_column("__seg")),
                ("targets", np.float32, np.nan, df.select(df.columns[2 + F : 2 + F + H])),
            ):
                shape = (total, H) if name == "targets" else (total,)
                if name == "targets" and not H:
                    continue
                buf = self.ws.get(name, shape, dtype)
                buf.fill(fill)
                buf[pos] = src if isinstance(src, bool) else src.to_numpy()
                cols.append((self.files[name], buf))
            for k, day in enumerate(days):
                a, b = int(base[day]), int(base[day] + width[k])
                for f, values in cols:
                    f.write_cells(int(day * N + lo[day]), values[a:b])
        else:
            df, flat = _in_cell_order(df, d * N + i)
            cols = [
                (self.scratch, df.select(self.features).to_numpy(order="c")),
                (self.files["mask"], np.ones(len(flat), np.bool_)),
                (self.files["returns"], df.get_column("__ret").to_numpy()),
                (self.files["sector"], df.get_column("__sec").to_numpy()),
                (self.files["segment"], df.get_column("__seg").to_numpy()),
            ]
            if H:
                cols.append((self.files["targets"], df.select(df.columns[2 + F : 2 + F + H]).to_numpy(order="c")))
            starts = np.flatnonzero(np.diff(flat, prepend=-2) != 1)
            for r0, r1 in zip(starts, [*starts[1:], len(flat)], strict=True):
                for f, values in cols:
                    f.write_cells(int(flat[r0]), values[r0:r1])
        np.maximum.at(self.high, d, i)


class _NpyFile:
    """An .npy file of fixed shape [D, N, ...] built in place with positioned I/O (no mapping, so no resident pages
    in this process): created sparse (zeros) or filled, then written by runs of cells ([day, stock] items) or by
    whole days, read back by whole days."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any, fill: float | None = None) -> None:
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.cell = int(np.prod(self.shape[2:])) * self.dtype.itemsize  # bytes per [day, stock] cell
        self.day = self.shape[1] * self.cell
        self.nbytes = self.shape[0] * self.day
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
            )
            self.offset = f.tell()
            if fill is None or not self.nbytes:
                f.truncate(self.offset + self.nbytes)
            else:
                chunk = np.full(min(self.nbytes // self.dtype.itemsize, 1 << 22), fill, self.dtype)
                left = self.nbytes
                while left:
                    k = min(left, chunk.nbytes)
                    f.write(chunk.data.cast("B")[:k])
                    left -= k
        self.fd = os.open(path, os.O_RDWR)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _write(self, pos: int, a: np.ndarray) -> None:
        mv, done = np.ascontiguousarray(a, self.dtype).data.cast("B"), 0
        while done < len(mv):
            done += os.pwrite(self.fd, mv[done:], self.offset + pos + done)

    def write_cells(self, start: int, a: np.ndarray) -> None:
        """Adjacent cells from cell `start` (= day·N + stock) on."""
        if self.cell:
            self._write(start * self.cell, a)

    def write_days(self, s: int, a: np.ndarray) -> None:
        """Whole days from day s on (a [b, N, ...])."""
        self._write(s * self.day, a)

    def read_days(self, s: int, e: int, buf: np.ndarray) -> np.ndarray:
        """Days [s, e) into the front of `buf` (C-contiguous, this dtype) -> that view [e - s, N, ...]."""
        out = buf.reshape(-1)[: (e - s) * self.day // self.dtype.itemsize].reshape((e - s, *self.shape[1:]))
        mv, done = out.data.cast("B"), 0
        while done < len(mv):
            k = os.preadv(self.fd, [mv[done:]], self.offset + s * self.day + done)
            if k <= 0:
                raise OSError(f"{self.path}: short read")
            done += k
        return out

    def write_at(self, d: int, k: int, v: np.ndarray) -> None:
        """One feature column of one day ([D, N, F] files): the patches, few."""
        m = np.memmap(self.path, self.dtype, "r+", self.offset, self.shape)
        m[d, :, k] = v
        m.flush()
        del m


def _temp_dir(root: Path) -> Path:
    """`.<root>.<host>-<pid>.tmp/`, the project's marker written first."""
    return new_owned_dir(temp_dir_for(root), "panel")


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as e:  # missing, truncated, a damaged header
        raise DataError(f"panel cache: {path} is unreadable ({type(e).__name__}: {e})") from e


def _npy_names() -> list[str]:
    return [f"{n}.npy" for n in ARRAYS]


def _publish(tmp: Path, root: Path) -> None:
    """Publish the finished temp folder as `root` atomically (replacing an old one of ours; a concurrent writer's
    copy is kept)."""
    if not publish_dir(tmp, root, f"publish panel {root.name}"):
        log.info("panel: %s was written by another process meanwhile; keeping it", root)


def _metadata(
    codes: list[str],
    dates: Sequence[dt.date],
    features: list[str],
    horizons: list[int],
    sector_vocab: list[str],
    segment_vocab: list[str],
    normalizer: dict,
    fingerprint_: str,
    shape: Sequence[int],
    files: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "version": PANEL_VERSION,
        "codes": codes,
        "dates": [d.isoformat() for d in dates],
        "feature_names": features,
        "horizons": horizons,
        "sector_vocab": sector_vocab,
        "segment_vocab": segment_vocab,
        "normalizer": normalizer,
        "fingerprint": fingerprint_,
        "shape": list(shape),
        **({"files": files} if files is not None else {}),
    }


def _log_day_level(dn: DenseNormalization) -> None:
    norm = dn.norm
    if dn.fitting and norm.day_level_:
        log.info(
            "panel: %d day-level feature(s) (one value per day, e.g. %s) %s",
            len(norm.day_level_),
            ", ".join(norm.day_level_[:3]),
            "as trailing time z-scores"
            if norm.day_level == "time_z"
            else "normalise to 0 across stocks, so the model does not see them (day_level=zero)",
        )


def clean_cache(
    cache_dir: str | Path, keep: int | None, protect: Sequence[str] = (), verify: bool = False
) -> list[Path]:
    """Bound `<cache_dir>/panels/`: remove the temp folders of killed conversions, incomplete, truncated (and, with
    `verify`, corrupted: checksums read) panels, and all but the `keep` newest complete panels (None: keep every
    panel; `protect`: fingerprints never removed, such as the panel in use). Only folders with the project's marker
    are removed; the others are logged and left. Returns the removed folders."""
    panels = Path(cache_dir) / "panels"
    if not panels.is_dir():
        return []
    removed = clean_leftovers(panels, _complete, "panel cache")
    now, complete, bad = time.time(), [], []
    for d in sorted(panels.iterdir()):
        if d.name in protect or LEFTOVER.fullmatch(d.name) or d.is_symlink() or not d.is_dir():
            continue
        if not owned(d):
            log.info("panel cache: left %s alone: not created by gogooku3 (no %s marker)", d, MARKER)
            continue
        problem = _panel_problem(d, verify)
        if problem is None:
            complete.append(d)
        elif (d / "panel.json").exists() or now - d.stat().st_mtime > STALE_TMP_NO_OWNER_S:
            log.warning("panel cache: removing %s: %s", d, problem)
            bad.append(d)
    if keep is not None:
        complete.sort(key=lambda d: (d / "panel.json").stat().st_mtime, reverse=True)
        kept = sum((panels / fp / "panel.json").is_file() for fp in set(protect))
        bad += complete[max(0, int(keep) - kept) :]
    for d in bad:
        shutil.rmtree(d, ignore_errors=True)
        log.info("panel cache: removed %s", d)
    return removed + bad


def _complete(d: Path) -> bool:
    return _panel_problem(d, False) is None


def _panel_problem(d: Path, digests: bool) -> str | None:
    """What makes the panel folder `d` unusable (no or unreadable panel.json, no checksums, a missing, truncated or,
    with `digests`, corrupted array), or None."""
    try:
        meta = read_json(d / "panel.json")
    except DataError as e:
        return str(e)
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        return "panel.json lists no checksums (written by another version)"
    return check_files(d, meta["files"], digests)


class DayBatchSampler(Sampler):
    """Yields (day, stock indices): one batch per trading day with >= min_stocks valid stocks.

    Days are shuffled each epoch (seed + epoch), sharded across ranks (equal count per rank), and a day with
    more than `max_stocks` valid stocks is subsampled.
    """

    def __init__(
        self,
        valid: np.ndarray,
        days: Sequence[int] | np.ndarray,
        max_stocks: int = 2048,
        shuffle: bool = True,
        seed: int = 0,
        min_stocks: int = 2,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.valid = valid
        self.days = [int(d) for d in days if int(valid[d].sum()) >= min_stocks]
        self.max_stocks, self.shuffle, self.seed = int(max_stocks), shuffle, int(seed)
        self.rank, self.world_size, self.epoch = rank, max(1, world_size), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.days) // self.world_size if self.world_size > 1 else len(self.days)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        order = np.array(self.days, dtype=np.int64)
        if self.shuffle:
            order = rng.permutation(order)
        if self.world_size > 1:
            order = order[: len(self) * self.world_size][self.rank :: self.world_size]
        for d in order:
            idx = np.flatnonzero(self.valid[d])
            if len(idx) > self.max_stocks:
                idx = np.sort(rng.choice(idx, self.max_stocks, replace=False))
            yield int(d), idx


class PanelDayDataset(Dataset):
    """Gathers one day batch by tensor indexing: x = features[d-L+1:d+1, idx, :] -> [n, L, F]; with `extra`
    ([D, N, S], e.g. the stacked LightGBM inputs of `model.stack`) appended along the feature axis -> [n, L, F + S]."""

    def __init__(self, panel: PanelStore, window: int, extra: np.ndarray | None = None):
        self.panel, self.window, self.extra = panel, window, extra
        if extra is not None and tuple(extra.shape[:2]) != tuple(panel.features.shape[:2]):
            raise DataError(
                f"panel: extra inputs of shape {tuple(extra.shape)} do not fit the panel's days × stocks "
                f"{tuple(panel.features.shape[:2])}"
            )
        self.tensors: dict[str, torch.Tensor] | None = None  # set by to_device (GPU-resident panel)

    def to_device(self, device: torch.device) -> None:
        p = self.panel
        self.tensors = {n: torch.as_tensor(np.asarray(getattr(p, n))).to(device) for n in ARRAYS}
        if self.extra is not None:
            self.tensors["extra"] = torch.as_tensor(np.asarray(self.extra)).to(device)

    def __len__(self) -> int:
        return self.panel.n_days

    def __getitem__(self, item: tuple[int, np.ndarray]) -> dict[str, Any]:
        d, idx = item
        lo = d - self.window + 1
        if self.tensors is not None:
            t = self.tensors
            ii = torch.as_tensor(idx, device=t["features"].device)
            x, m = t["features"][lo : d + 1, ii], t["mask"][lo : d + 1, ii]
            if "extra" in t:
                x = torch.cat([x, t["extra"][lo : d + 1, ii]], dim=-1)
            r, y = t["returns"][lo : d + 1, ii], t["targets"][d, ii]
            sec, seg = t["sector"][d, ii], t["segment"][d, ii]
        else:
            p = self.panel
            x = torch.from_numpy(np.ascontiguousarray(p.features[lo : d + 1][:, idx]))
            if self.extra is not None:
                x = torch.cat([x, torch.from_numpy(np.ascontiguousarray(self.extra[lo : d + 1][:, idx]))], dim=-1)
            m = torch.from_numpy(np.ascontiguousarray(p.mask[lo : d + 1][:, idx]))
            r = torch.from_numpy(np.ascontiguousarray(p.returns[lo : d + 1][:, idx]))
            y = torch.from_numpy(np.ascontiguousarray(p.targets[d][idx]))
            sec = torch.from_numpy(np.ascontiguousarray(p.sector[d][idx]))
            seg = torch.from_numpy(np.ascontiguousarray(p.segment[d][idx]))
        r_ok = m & torch.isfinite(r)
        return {
            "x": x.permute(1, 0, 2),
            "returns": torch.where(r_ok, r, torch.zeros_like(r)).T,
            "returns_valid": r_ok.T,
            "y": y,
            "sector": sec.long(),
            "segment": seg.long(),
            "day": torch.tensor(d),
            "idx": torch.as_tensor(idx).long(),
        }


class PanelDataModule(L.LightningDataModule):
    """Train / val / test day batches from one PanelStore and the shared splitter's dates."""

    def __init__(
        self,
        panel: PanelStore,
        fit_dates: Sequence[dt.date],
        val_dates: Sequence[dt.date],
        test_dates: Sequence[dt.date] = (),
        *,
        window: int,
        max_stocks: int,
        min_window_frac: float,
        min_stocks: int,
        seed: int,
        extra: np.ndarray | None = None,
    ):
        """`window` (model.window), `max_stocks`, `min_window_frac`, `min_stocks` (train.max_stocks_per_day,
        train.min_window_frac, train.min_stocks_per_day) and `seed` come from the config
        (`training.fit.data_module`)."""
        super().__init__()
        self.panel, self.window, self.max_stocks, self.min_stocks, self.seed = (
            panel,
            window,
            max_stocks,
            min_stocks,
            seed,
        )
        self.fit_days = panel.day_index(fit_dates)
        self.val_days = panel.day_index(val_dates)
        self.test_days = panel.day_index(test_dates)
        self.window_ok = panel.window_valid(window, min_window_frac)
        self.labelled = self.window_ok & panel.label_valid(0)
        self.dataset = PanelDayDataset(panel, window, extra)

    def _rank(self) -> tuple[int, int]:
        t = getattr(self, "trainer", None)
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, valid: np.ndarray, days: np.ndarray, shuffle: bool, cap: int | None) -> DataLoader:
        rank, world = self._rank()
        sampler = DayBatchSampler(valid, days, cap or valid.shape[1], shuffle, self.seed, self.min_stocks, rank, world)
        return DataLoader(self.dataset, sampler=sampler, batch_size=None, num_workers=0)

    def train_dataloader(self) -> DataLoader:
        if not len(self.fit_days):
            raise DataError("panel: no training days in the panel for this split")
        return self._loader(self.labelled, self.fit_days, True, self.max_stocks)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.labelled, self.val_days, False, None)

    def predict_loader(self, days: np.ndarray) -> DataLoader:
        """All stocks with a valid window (label or not), one batch per day, single process."""
        sampler = DayBatchSampler(self.window_ok, days, self.window_ok.shape[1], False, 0, 1)
        return DataLoader(self.dataset, sampler=sampler, batch_size=None, num_workers=0)


def _vocab_id(col: str, vocab: Sequence[str]) -> pl.Expr:
    mapping = {v: k + 1 for k, v in enumerate(vocab)}
    return pl.col(col).replace_strict(mapping, default=0, return_dtype=pl.Int16).fill_null(0).alias(col)
