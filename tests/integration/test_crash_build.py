"""Crash consistency of `gogooku3 data build` (issue 20): killed at each atomic publishing step in turn, every reader
afterwards sees either the old dataset or the new one, whole; the next build leaves nothing of the killed one.

The old dataset is built with labels.entry_lag=1, the new one with labels.entry_lag=2 (the issue's torn state: a
parquet of lag-2 labels under a manifest that says 1). `paths.keep_datasets=1`, so the new build also retires the
old version, and those steps are killed too. The steps are the ones the build itself reports
(`core.io.crash_point`, GOGOOKU3_CRASH_LOG); each kill is GOGOOKU3_CRASH_AT=<n> (SIGKILL at the n-th).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.io import CRASH_AT_ENV, CRASH_LOG_ENV, file_fingerprint, read_json
from gogooku3.data.dataset import load_dataset
from gogooku3.features.builder import build_dataset
from gogooku3.features.incremental import update_dataset
from gogooku3.features.manifest import FeatureManifest, metadata_path
from gogooku3.features.published import pin, unpin_all
from gogooku3.sources.schema import write_table

log = logging.getLogger(__name__)
LAGS = (1, 2)  # labels.entry_lag of the old and the new build
DATED = "ml_dataset_20230601_20231024.parquet"  # make_mini_tables' span


def _args(root: Path, out: str, lag: int) -> list[str]:
    return [
        f"paths.raw_dir={root / 'raw'}",
        f"paths.output_dir={root / out}",
        f"paths.dataset={root / out}/ml_dataset_latest.parquet",
        f"labels.entry_lag={lag}",
        "paths.keep_datasets=1",
    ]


def _build(root: Path, out: str, lag: int, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gogooku3.cli", "data", "build", *_args(root, out, lag)],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def project(mini_factory, tmp_path_factory):
    """Raw tables, the old dataset (built once, copied for each kill), both builds' frames (the reference of each
    state) and the new build's steps."""
    root = tmp_path_factory.mktemp("crash")
    for name, df in mini_factory(n_stocks=4, n_days=100).items():
        write_table(df, root / "raw", name)
    assert _build(root, "old", LAGS[0]).returncode == 0
    shutil.copytree(root / "old", root / "steps", symlinks=True)
    steps_log = root / "steps.log"
    assert _build(root, "steps", LAGS[1], **{CRASH_LOG_ENV: str(steps_log)}).returncode == 0
    frames = {lag: pl.read_parquet(root / out / "ml_dataset_latest.parquet") for lag, out in [(1, "old"), (2, "steps")]}
    assert not frames[1].equals(frames[2])
    steps = [line.split("\t")[2] for line in steps_log.read_text().splitlines()]
    return root, frames, steps


def _state(root: Path, out: str, frames: dict) -> tuple[tuple[int, ...], list[str]]:
    """The entry lag of the dataset each reader sees through each name (as `train`, `safe` and the incremental
    build read them), and what is not whole about it (nothing: [])."""
    torn, lags = [], []
    for name in (DATED, "ml_dataset_latest.parquet"):
        data = pin(root / out / name)
        manifest = FeatureManifest.for_dataset(data)  # raises if the parquet is not the manifest's
        meta = read_json(metadata_path(data))
        lag = manifest.entry_lag
        lags.append(lag)
        if meta["entry_lag"] != lag or meta["dataset_fingerprint"] != file_fingerprint(data):
            torn.append(f"{name}: metadata of another build")
        if not pl.read_parquet(data).equals(frames[lag]):
            torn.append(f"{name}: the parquet is not the lag-{lag} build its manifest says")
    cfg = load_config(_args(root, out, lags[-1]))  # paths.dataset: the latest name
    _, manifest, ref = load_dataset(cfg)  # what `train` and `tune` read
    if ref.fingerprint != manifest.dataset_fingerprint or manifest.entry_lag != lags[-1]:
        torn.append("load_dataset: another dataset or fingerprint than the manifest's")
    again = update_dataset(cfg)  # the incremental build's reading: the same raw tables, so nothing to add
    if again.seconds != 0.0 or again.metadata["entry_lag"] != lags[-1]:
        torn.append("the incremental build did not see a whole dataset")
    unpin_all()
    return tuple(lags), torn


def test_every_reader_sees_old_or_new_whole_after_a_kill_at_each_step(project):
    root, frames, steps = project
    assert steps[0] == "publish version" and "retire version" in steps
    assert sum(s.startswith("link ") for s in steps) == 8  # 2 names x (3 sidecars + the parquet)
    rows = []
    for n, step in enumerate(steps, start=1):
        out = f"kill{n}"
        shutil.copytree(root / "old", root / out, symlinks=True)
        proc = _build(root, out, LAGS[1], **{CRASH_AT_ENV: str(n)})
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        lags, torn = _state(root, out, frames)
        rows.append((n, step, lags, torn))
        # the next build recovers: published whole, nothing of the killed one left
        build_dataset(load_config(_args(root, out, LAGS[1])))
        left = list((root / out).rglob(".*"))
        assert not left, left
        assert _state(root, out, frames) == ((LAGS[1], LAGS[1]), [])
        shutil.rmtree(root / out)
    table = "\n".join(
        f"{n:2d} {step:48s} lag (dated, latest) {lags} {'whole' if not t else '; '.join(t)}"
        for n, step, lags, t in rows
    )
    seen = {lags for _, _, lags, _ in rows}
    whole = sum(not t for *_, t in rows)
    log.warning("steps %d x states seen %s x whole %d\n%s", len(rows), sorted(seen), whole, table)
    assert {lag for lags in seen for lag in lags} == set(LAGS)  # killed early: the old state; late: the new one
    assert whole == len(rows), table
