"""Writing a built dataset: the parquet (`PARQUET`; piece by piece with `DatasetWriter` in a chunked build) into a
staging folder, beside it the metadata, the feature manifest and the coverage table, then the folder published as one
version that the dated name and `paths.dataset` point at (`write_outputs`; the layout: `features.published`)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import DataError
from gogooku3.core.io import file_fingerprint, peak_rss_mb, to_json
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
from gogooku3.features.published import DATA, GENERATOR, clean_versions, publish

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

    @classmethod
    def of(cls, df: pl.DataFrame) -> DatasetStats:
        return cls(
            df.schema,
            df.height,
            df[C.CODE].n_unique(),
            df[C.DATE].n_unique(),
            df[C.DATE].min(),
            df[C.DATE].max(),
            df.null_count().row(0, named=True),
        )


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
        self._stocks += df[C.CODE].n_unique()
        self._dates.append(df[C.DATE].unique())

    def _write(self, df: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = df.to_arrow(compat_level=pl.CompatLevel.oldest())
        if self._writer is None:
            strings = [n for n, d in df.schema.items() if d == pl.Utf8]  # dictionary pages pay only for labels
            self._writer = pq.ParquetWriter(
                self.path,
                table.schema,
                compression=PARQUET["compression"],
                write_statistics=PARQUET["statistics"],
                use_dictionary=strings,
            )
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
        assert self._schema is not None  # set with the writer, by the first frame written
        dates = pl.concat(self._dates).unique()
        return DatasetStats(self._schema, self._rows, self._stocks, dates.len(), dates.min(), dates.max(), self._nulls)


def drop_columns(path: Path, cols: list[str]) -> None:
    """Rewrite the parquet at `path` (in a staging folder) without `cols` (streamed; the rare path of all-null
    features in a chunked build, which are known only once every chunk is written)."""
    tmp = path.with_name(path.name + ".dropped")
    try:
        pl.scan_parquet(path).drop(cols).sink_parquet(tmp, **PARQUET)
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
    manifest.dataset_fingerprint = file_fingerprint(tmp / DATA)
    cov = coverage_of(built.groups, stats.nulls, stats.rows)
    seconds = time.perf_counter() - t0
    meta = {
        "rows": stats.rows,
        "stocks": stats.stocks,
        "dates": stats.dates,
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
