"""The public entry point of the dataset build (`gogooku3 data build`): `build_dataset` reads and validates the raw
tables (`features.raw_tables`), builds the point-in-time ML dataset (one row per Code, Date: ids, features, labels;
`features.plan` says which blocks run in what order, `features.build` runs them, in one piece or above
`features.chunk_rows` quote rows in runs of codes) and writes it with its metadata, feature manifest and coverage
table as one version that the dated name and `paths.dataset` point at (`features.writer`, `features.published`),
under the project's build lock. The dataset is a folder of monthly parquet files (`features.published`). The
daily incremental update is `features.incremental.update_dataset`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import polars as pl

from gogooku3.core import columns as C
from gogooku3.features.build import (
    BuiltFrame,
    build_features,
    build_in_chunks,
    dead_columns,
    drop_all_null,
    note_dropped,
)
from gogooku3.features.fingerprints import build_fingerprints
from gogooku3.features.published import DATA, build_lock, check_name, staging
from gogooku3.features.raw_tables import calendar_name, load_tables
from gogooku3.features.writer import (
    BuildResult,
    DatasetWriter,
    dataset_path,
    drop_columns,
    write_outputs,
)

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)


def build_dataset(cfg: Settings) -> BuildResult:
    """Read raw tables from `cfg.paths.raw_dir`, build, publish dataset + metadata + manifest + coverage as one
    version (another build of the same `paths.output_dir` running: one DataError line).

    More quote rows than `features.chunk_rows`: built in chunks of codes and written piece by piece
    (`build_in_chunks`), the same dataset with a fraction of the memory.
    """
    t0 = time.perf_counter()
    check_name(cfg.paths.dataset)
    with build_lock(cfg.paths.output_dir):
        raw_dir, tables, cal = load_tables(cfg)
        dq = tables["daily_quotes"]
        chunk_rows = cfg.features.chunk_rows
        log.info("building features from %s (%d quote rows)", raw_dir, dq.height)
        dated = dataset_path(cfg, dq[C.DATE].min(), dq[C.DATE].max())
        with staging(cfg.paths.output_dir, dated.name.removesuffix(".parquet")) as tmp:
            data = tmp / DATA
            if 0 < chunk_rows < dq.height:
                with DatasetWriter(data) as write:
                    plan = build_in_chunks(tables, cal, cfg.features, cfg.labels, chunk_rows, write)
                    stats = write.close()
                dead = dead_columns(plan.groups, stats.nulls, stats.rows)
                skipped = note_dropped(plan.skipped, plan.groups, dead)
                if dead:
                    drop_columns(data, dead)
                    stats.schema = pl.Schema({n: d for n, d in stats.schema.items() if n not in dead})
                groups = {n: g for n, g in plan.groups.items() if n not in dead}
                built = BuiltFrame(pl.DataFrame(), groups, skipped, plan.notes)
            else:
                built = drop_all_null(build_features(tables, cal, cfg.features, cfg.labels))
                with DatasetWriter(data) as write:
                    write(built.df)
                    stats = write.close()
            extra = build_fingerprints(cfg, tables, stats.end)
            return write_outputs(cfg, dated, tmp, stats, built, calendar_name(tables, cfg), t0, extra)
