"""Writing a built dataset: one parquet file per month of Date (`DatasetWriter`, `PARQUET` settings; piece by piece
in a chunked build) into a staging folder, beside it the metadata, the feature manifest and the coverage table, then
the folder published as one version that the dated name and `paths.dataset` point at (`write_outputs`; the layout:
`features.published`); `export_dataset` writes a dataset as one file sorted by (Code, Date)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import DataError
from gogooku3.core.io import file_fingerprint, peak_rss_mb, record_digests, to_json
from gogooku3.features.build import BuiltFrame
from gogooku3.features.coverage import (
    coverage_of,
    coverage_path,
    coverage_table,
    coverage_text,
)
from gogooku3.features.lookback import group_lookbacks
from gogooku3.features.manifest import FeatureManifest, manifest_path, metadata_path
from gogooku3.features.plan import plain_config
from gogooku3.features.published import DATA, GENERATOR, clean_versions, dataset_files, publish

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)

ROW_GROUP = 262_144  # rows per parquet row group of a chunked write


@dataclass
class BuildResult:
    """What a build (full or incremental) wrote, and the metadata it wrote beside it."""

    path: Path
    latest_path: Path
    rows: int
    n_features: int
    group_counts: dict[str, int]
    skipped: dict[str, str]
    seconds: float
    peak_rss_mb: float
    metadata: dict[str, Any]


# lz4: the float32 features hardly compress (zstd saves ~15 % of the size), and lz4 writes ~30 % and reads ~35 %
# faster; column statistics stay on for the date filters pushed down by the readers
PARQUET: dict[str, Any] = {"compression": "lz4", "statistics": True}


# the sidecars of a version's data.parquet, and the suffixes of the links to them beside each published name
SIDECARS = {
    ".metadata.json": metadata_path(DATA).name,
    ".manifest.json": manifest_path(DATA).name,
    ".coverage.txt": coverage_path(DATA).name,
}


def dataset_path(cfg: Settings, start: Any, end: Any) -> Path:
    """The dated name of a build spanning `start`..`end` in `cfg.paths.output_dir` (a link to its version)."""
    return Path(cfg.paths.output_dir) / f"ml_dataset_{start:%Y%m%d}_{end:%Y%m%d}.parquet"


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


def partition_of(date: Any) -> str:
    """The partition file holding the rows of `date`: `<YYYY-MM>.parquet` (one per month)."""
    return f"{date:%Y-%m}.parquet"


def _parquet_writer(path: Path, schema: Any) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    strings = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    sink = pa.OSFile(str(path), "wb")  # our own handle: closed by `_close` even when the writer's close fails
    w = pq.ParquetWriter(
        sink,
        schema,
        compression=PARQUET["compression"],
        write_statistics=PARQUET["statistics"],
        use_dictionary=strings,  # dictionary pages pay only for labels
    )
    w.sink_ = sink
    return w


def _close(w: Any) -> None:
    """Close a `_parquet_writer` and its file (the descriptor is released even when the footer cannot be written,
    e.g. on a full disk, so nothing holds the disk afterwards)."""
    try:
        w.close()
    finally:
        w.sink_.close()


class DatasetWriter:
    """Writes the dataset piece by piece into a folder of one parquet file per month of Date (`partition_of`), and
    gathers its `DatasetStats`. Each piece holds whole stocks in (Code, Date) order: its rows of a month are appended
    to that month's file as row groups, so each file is sorted by (Code, Date) and its row groups follow the pieces
    (the same pieces, the same bytes). A piece is encoded on a background thread while the caller computes the next
    one (at most one piece waits)."""

    def __init__(self, folder: str | Path) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.path = Path(folder)
        self.path.mkdir(parents=True, exist_ok=True)
        self._writers: dict[str, Any] = {}
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
        self._stocks += df[C.CODE].n_unique()
        self._dates.append(df[C.DATE].unique())

    def _write(self, df: pl.DataFrame) -> None:
        import numpy as np

        d = df[C.DATE]
        key = (d.dt.year().cast(pl.Int32) * 100 + d.dt.month().cast(pl.Int32)).to_numpy()
        order = np.argsort(key, kind="stable")  # by month; (Code, Date) within each, as given
        cuts = [0, *(np.flatnonzero(np.diff(key[order])) + 1).tolist(), len(order)]
        # the piece made contiguous first: its columns arrive in many chunks (blocks of stocks), and a month's gather
        # from chunked columns costs ~5x the one from contiguous ones
        src = df.rechunk()
        for a, b in itertools.pairwise(cuts):  # one month's copy at a time, not the piece's
            k = int(key[order[a]])
            name = f"{k // 100:04d}-{k % 100:02d}.parquet"
            table = src[order[a:b]].to_arrow(compat_level=pl.CompatLevel.oldest())
            if name not in self._writers:
                self._writers[name] = _parquet_writer(self.path / name, table.schema)
            self._writers[name].write_table(table, row_group_size=ROW_GROUP)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()  # re-raises a failed write here

    def _close_files(self) -> None:
        """Close every month's file (each releases its descriptor even when another's close fails, e.g. a full
        disk); the first error is raised after."""
        err: Exception | None = None
        for w in self._writers.values():
            try:
                _close(w)
            except Exception as e:  # re-raised below, once every file is closed
                err = err or e
        if err is not None:
            raise err

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:  # an error on the way: stop the background write, leave the files to the caller
            self._closed = True
            self._pool.shutdown(wait=True, cancel_futures=True)
            with contextlib.suppress(Exception):  # the error on the way is the one to report
                self._close_files()

    def close(self) -> DatasetStats:
        self._closed = True
        try:
            self._wait()
        finally:
            self._pool.shutdown()
            self._close_files()
        if not self._writers:
            raise DataError(f"{self.path}: the build produced no rows")
        assert self._schema is not None  # set with the writer, by the first frame written
        dates = pl.concat(self._dates).unique()
        return DatasetStats(self._schema, self._rows, self._stocks, dates.len(), dates.min(), dates.max(), self._nulls)


def file_nulls(path: Path) -> tuple[int, dict[str, int]]:
    """Rows and null count per column of a parquet file `DatasetWriter` wrote, from its footer's statistics."""
    import pyarrow.parquet as pq

    meta = pq.read_metadata(path)
    nulls = dict.fromkeys(meta.schema.names, 0)
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        for i in range(rg.num_columns):
            col = rg.column(i)
            if col.statistics is None or not col.statistics.has_null_count:
                raise DataError(f"{path}: column {col.path_in_schema} has no null count in its statistics")
            nulls[col.path_in_schema] += col.statistics.null_count
    return meta.num_rows, nulls


def drop_columns(folder: Path, cols: list[str]) -> None:
    """Rewrite each partition file in `folder` (a staging folder) without `cols`, row group by row group, so its row
    groups stay those of the pieces (the rare path of all-null features in a chunked build, which are known only
    once every chunk is written)."""
    import pyarrow.parquet as pq

    for path in dataset_files(folder):
        tmp = path.with_name(path.name + ".dropped")
        try:
            src = pq.ParquetFile(path)
            keep = [n for n in src.schema_arrow.names if n not in cols]
            w = None
            for g in range(src.num_row_groups):
                t = src.read_row_group(g, columns=keep)
                w = w or _parquet_writer(tmp, t.schema)
                w.write_table(t, row_group_size=ROW_GROUP)
            if w is not None:
                _close(w)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def write_outputs(
    cfg: Settings,
    dated: Path,
    tmp: Path,
    stats: DatasetStats,
    built: BuiltFrame,
    calendar: str,
    t0: float,
    extra: dict[str, Any],
) -> BuildResult:
    """Beside `data.parquet` in the staging folder `tmp`: the metadata (plus `extra`), the feature manifest (both
    with the data's content fingerprint) and the coverage table; then publish the folder as one version, point the
    `dated` name and `paths.dataset` at it, retire older versions (`paths.keep_datasets`); log the coverage table."""
    if stats.rows == 0:
        raise DataError(f"{cfg.paths.raw_dir}: the build produced no rows")
    latest = Path(cfg.paths.dataset)
    horizons, entry_lag = list(cfg.labels.horizons), cfg.labels.entry_lag
    manifest = FeatureManifest.from_frame(
        pl.DataFrame(schema=stats.schema),
        built.groups,
        horizons,
        entry_lag,
        built.skipped,
        calendar,
        lookback=group_lookbacks(plain_config(cfg.features)),
        source=cfg.data.source,
        notes=built.notes,
    )
    record_digests(tmp / DATA)  # each partition's sha256, so readers and updates hash only files they have not seen
    manifest.dataset_fingerprint = file_fingerprint(tmp / DATA)
    cov = coverage_of(built.groups, stats.nulls, stats.rows)
    seconds = time.perf_counter() - t0
    meta = {
        "rows": stats.rows,
        "stocks": stats.stocks,
        "dates": stats.dates,
        "partitions": len(dataset_files(tmp / DATA)),
        "start": stats.start.isoformat(),
        "end": stats.end.isoformat(),
        "n_features": len(manifest.names),
        "groups": cov,
        "skipped": built.skipped,
        "notes": built.notes,
        "horizons": horizons,
        "entry_lag": entry_lag,
        "targets": manifest.targets,
        "manifest_fingerprint": manifest.fingerprint,
        "dataset_fingerprint": manifest.dataset_fingerprint,
        "build_seconds": round(seconds, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "raw_dir": cfg.paths.raw_dir,
        "generator": GENERATOR,
        "path": str(dated),
        **extra,
    }
    # plain writes: nothing in the staging folder is visible before `publish` renames it whole
    (tmp / SIDECARS[".metadata.json"]).write_text(to_json(meta) + "\n", encoding="utf-8")
    (tmp / SIDECARS[".manifest.json"]).write_text(to_json(manifest.to_dict()) + "\n", encoding="utf-8")
    (tmp / SIDECARS[".coverage.txt"]).write_text(coverage_text(meta), encoding="utf-8")
    version = publish(tmp, dated.name.removesuffix(".parquet"), [dated, latest], SIDECARS)
    clean_versions(cfg.paths.output_dir, cfg.paths.keep_datasets, [version])
    log.info("%s", coverage_table(meta))
    log.info("coverage table written to %s", version / SIDECARS[".coverage.txt"])
    log.info(
        "wrote %s -> %s (%d rows x %d features) in %.1fs, peak RSS %.0f MiB",
        dated,
        version.name,
        stats.rows,
        meta["n_features"],
        seconds,
        meta["peak_rss_mb"],
    )
    return BuildResult(
        dated,
        latest,
        stats.rows,
        meta["n_features"],
        {g: int(e["features"]) for g, e in cov.items()},  # an int count in the float-valued coverage entry
        built.skipped,
        seconds,
        meta["peak_rss_mb"],
        meta,
    )


def export_dataset(dataset: str | Path, to: str | Path, chunk_rows: int) -> Path:
    """The dataset at `dataset` (a published name, a version's folder, or a file) as one parquet file `to`, sorted by
    (Code, Date) like the one-file datasets before partitioning, written in runs of codes of about `chunk_rows` rows
    (0: one run) and renamed into place whole (`core.io.atomic_path`)."""
    from gogooku3.core.io import atomic_path
    from gogooku3.features.build import code_chunks
    from gogooku3.features.published import pin

    src = pin(dataset)
    if not src.exists():
        raise DataError(f"{dataset}: no dataset there; run `gogooku3 data build` first (or set paths.dataset)")
    lf = pl.scan_parquet(dataset_files(src))
    codes = lf.select(C.CODE).collect()
    if codes.height == 0:
        raise DataError(f"{src}: the dataset has no rows; nothing to export")
    runs = code_chunks(codes, chunk_rows or codes.height)
    del codes
    with atomic_path(to) as tmp:
        w = None
        try:
            for run, _, _ in runs:
                df = (
                    lf.filter(pl.col(C.CODE).is_between(pl.lit(run[0]), pl.lit(run[-1]))).collect().sort(C.CODE, C.DATE)
                )
                table = df.to_arrow(compat_level=pl.CompatLevel.oldest())
                w = w or _parquet_writer(tmp, table.schema)
                w.write_table(table, row_group_size=ROW_GROUP)
        finally:
            if w is not None:
                _close(w)
    log.info("exported %s (%d runs of codes) to %s", src, len(runs), to)
    return Path(to)
