"""Crash consistency (issue 20): `gogooku3 safe` and a forced panel conversion killed at each of their publishing
steps in turn (`core.io.crash_point`, GOGOOKU3_CRASH_AT=<n>): the readers (the baseline store lookup, the panel cache)
find the old state or the new one, whole, and the next normal run succeeds and leaves no leftover."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gogooku3.core.io import CRASH_AT_ENV, CRASH_LOG_ENV
from gogooku3.data.panel import PanelStore
from gogooku3.predictors.lightgbm import BaselineRun, load_or_fit

pytestmark = pytest.mark.slow
SAFE = [
    "safe",
    "labels.horizons=[1,5]",
    "safe.validation.min_features=5",
    "baseline.num_boost_round=40",
    "baseline.early_stopping_rounds=10",
    "baseline.params.num_threads=1",
    "split.min_train_days=60",
    "split.n_splits=2",
    "split.val_days=12",
    "safe.graph.n_nodes=20",
]
FEATS = ["returns_1d", "f_signal", "f_noise1", "f_noise2", "f_noise3"]  # conftest.write_planted_dataset


def _cli(cwd: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).with_name("gogooku3")), *args],
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _steps(log_file: Path) -> list[str]:
    return [line.split("\t")[2] for line in log_file.read_text().splitlines()]


def _refit_refused(missing: list[int]) -> BaselineRun:
    raise AssertionError(f"the stored baseline was lost: fold(s) {missing} would be refitted")


def _baseline_state(store: Path) -> list[int]:
    """The folds the store lookup finds (no refit), every file read and checked against its checksum."""
    (root,) = [p for p in store.iterdir() if not p.name.startswith(".")]
    run = load_or_fit(root, root.name, [1], _refit_refused)
    full = BaselineRun.load(root)
    for k in full.fold_indices:
        for h in full.horizons:
            assert full.booster(k, h).num_trees() > 0
    assert run.reused
    return full.fold_indices


def _reports_whole(out: Path) -> int:
    reports = sorted((out / "experiments").glob("*.json"))
    for r in reports:
        json.loads(r.read_text())
    return len(reports)


def test_safe_killed_at_each_step(tmp_path, planted_dataset):
    """Fold 1 stored by a first `safe`; `safe safe.baseline_folds=all` (fits fold 0, merges, republishes the store,
    writes its report, points the store at it) killed at each step: the store holds fold 1 or folds 0 and 1."""
    planted_dataset(tmp_path)
    out = tmp_path / "output"
    first = _cli(tmp_path, SAFE)
    assert first.returncode == 0, first.stderr[-2000:]
    pristine = tmp_path / "pristine"
    shutil.copytree(out, pristine, symlinks=True)
    log_file = tmp_path / "steps.log"
    full = _cli(tmp_path, [*SAFE, "safe.baseline_folds=all"], **{CRASH_LOG_ENV: str(log_file)})
    assert full.returncode == 0, full.stderr[-2000:]
    steps = _steps(log_file)
    assert any(s.startswith("publish baseline ") for s in steps) and any(s.startswith("replace safe_") for s in steps)
    seen, whole = [], 0
    for n in range(1, len(steps) + 1):
        shutil.rmtree(out)
        shutil.copytree(pristine, out, symlinks=True)
        n_reports = _reports_whole(out)
        killed = _cli(tmp_path, [*SAFE, "safe.baseline_folds=all"], **{CRASH_AT_ENV: str(n)})
        assert killed.returncode == -signal.SIGKILL, (n, steps[n - 1], killed.stderr[-2000:])
        seen.append(_baseline_state(out / "baselines"))
        assert _reports_whole(out) in (n_reports, n_reports + 1)
        whole += 1
        again = _cli(tmp_path, [*SAFE, "safe.baseline_folds=all"])
        assert again.returncode == 0, (n, again.stderr[-2000:])
        assert _baseline_state(out / "baselines") == [0, 1]
        left = [p for p in (out / "baselines").iterdir() if p.name.startswith(".")]
        left += list((out / "experiments").glob(".*"))
        assert not left, (n, steps[n - 1], left)
    first_new = next(k for k, s in enumerate(steps) if s.startswith("publish baseline "))
    assert seen == [[1]] * first_new + [[0, 1]] * (len(steps) - first_new)
    print(f"safe: {len(steps)} steps {steps}; states seen {seen}; whole {whole} of {len(steps)}")


PANEL = """
import os, sys
from gogooku3.core import stores
from gogooku3.data.panel import PanelStore
if os.environ.get("NO_EXCHANGE"):
    stores.exchange = lambda a, b: False
PanelStore.build(sys.argv[1], {feats}, [1, 5], sys.argv[2], {{"method": "robust_z"}}, "m", "d", force=True)
"""


@pytest.mark.parametrize("no_exchange", [False, True], ids=["exchange", "set-aside"])
def test_forced_panel_conversion_killed_at_each_step(tmp_path, planted_dataset, caplog, no_exchange):
    """A cached panel converted again (force) and killed at each step: the next lookup reuses a whole panel (the old
    one or the new one; no conversion), and leaves no leftover."""
    ds = planted_dataset(tmp_path)
    cache = tmp_path / "cache"
    kw = dict(features=FEATS, horizons=[1, 5], cache_dir=cache, normalizer={"method": "robust_z"})
    kw |= dict(manifest_fingerprint="m", dataset_fingerprint="d")
    ref = PanelStore.build(ds, **kw)
    script = tmp_path / "panel.py"
    script.write_text(PANEL.format(feats=FEATS))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_EXCHANGE": "1" if no_exchange else ""}

    def convert(**extra: str) -> subprocess.CompletedProcess:
        args = [sys.executable, str(script), str(ds), str(cache)]
        return subprocess.run(args, env={**env, **extra}, capture_output=True, text=True, timeout=300)

    log_file = tmp_path / "steps.log"
    assert convert(**{CRASH_LOG_ENV: str(log_file)}).returncode == 0
    steps = _steps(log_file)
    assert steps[-1] == f"publish panel {ref.fingerprint}"
    caplog.set_level(logging.INFO, logger="gogooku3.data.panel")
    for n in range(1, len(steps) + 1):
        assert convert(**{CRASH_AT_ENV: str(n)}).returncode == -signal.SIGKILL
        caplog.clear()
        got = PanelStore.build(ds, **kw)
        assert "reusing" in caplog.text and "converted" not in caplog.text, (n, steps[n - 1], caplog.text)
        assert (got.features == ref.features).all() and got.dates == ref.dates
        assert sorted(p.name for p in (cache / "panels").iterdir()) == [ref.fingerprint]
