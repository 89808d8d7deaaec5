"""Stores the project writes (issue 20): the panel cache and the baseline store are published atomically, checked
when reused (checksums), cleaned of killed writers' leftovers, and nothing without the project's marker is deleted."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from gogooku3.core import columns as C
from gogooku3.core import stores
from gogooku3.core.errors import DataError
from gogooku3.core.io import _HOST, CRASH_AT_ENV, CRASH_LOG_ENV, temp_owner, write_parquet
from gogooku3.core.stores import MARKER, mark, owned
from gogooku3.data.panel import PanelStore, clean_cache
from gogooku3.predictors.lightgbm import RUN_FILE, BaselineRun, clean_store, load_or_fit, model_file

FEATS = ["f1", "f2", C.RETURNS_1D]
FP = "0123456789abcdef"


def _dead_pid() -> int:
    """The id of a process that has finished (a killed writer's)."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


# ---- the panel cache ------------------------------------------------------------------------------------------
def _frame(n_days: int = 30, n_stocks: int = 6, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    dates = [dt.date(2024, 1, 1) + dt.timedelta(days=k) for k in range(n_days)]
    n = n_days * n_stocks
    return pl.DataFrame(
        {
            C.CODE: [f"{1300 + i}0" for i in range(n_stocks) for _ in dates],
            C.DATE: dates * n_stocks,
            C.SECTION: ["TSEPrime"] * n,
            C.S33: [str(i % 3) for i in range(n_stocks) for _ in dates],
            **{f: rng.normal(size=n) for f in FEATS},
            C.target(1): rng.normal(size=n),
        }
    )


@pytest.fixture
def panel_kw(tmp_path):
    ds = tmp_path / "ds.parquet"
    write_parquet(_frame(), ds)
    return {
        "dataset": ds,
        "features": FEATS,
        "horizons": [1],
        "cache_dir": tmp_path / "cache",
        "normalizer": {"method": "robust_z"},
        "manifest_fingerprint": "m1",
        "dataset_fingerprint": "d1",
    }


def _panel_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "gogooku3.data.panel"]


def test_panel_folders_carry_the_marker_and_checksums(panel_kw):
    p = PanelStore.build(**panel_kw)
    assert owned(p.root) and json.loads((p.root / MARKER).read_text())["project"] == "gogooku3"
    meta = json.loads((p.root / "panel.json").read_text())
    assert sorted(meta["files"]) == sorted(
        f"{n}.npy" for n in ("features", "mask", "targets", "returns", "sector", "segment")
    )
    assert meta["files"]["mask.npy"]["bytes"] == (p.root / "mask.npy").stat().st_size
    saved = PanelStore.from_frame(_frame(), FEATS, [1], {"method": "robust_z"}).save(panel_kw["cache_dir"] / "x")
    assert owned(saved) and "files" in json.loads((saved / "panel.json").read_text())


def test_corrupted_panel_is_rebuilt_with_one_warning(panel_kw, caplog):
    good = PanelStore.build(**panel_kw)
    want = np.array(good.features)
    f = good.root / "features.npy"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x40  # one bit of the last value: same size, another number
    f.write_bytes(bytes(data))
    caplog.set_level(logging.INFO)
    again = PanelStore.build(**panel_kw)
    warnings = _panel_warnings(caplog)
    assert len(warnings) == 1 and "features.npy does not match its checksum" in warnings[0], warnings
    assert "reusing" not in caplog.text and np.array_equal(np.asarray(again.features), want)


def test_truncated_panel_is_rebuilt_with_one_warning(panel_kw, caplog):
    good = PanelStore.build(**panel_kw)
    want = np.array(good.targets)
    t = good.root / "targets.npy"
    os.truncate(t, t.stat().st_size - 24)
    with pytest.raises(DataError, match=r"targets\.npy"):  # a plain load: one line, not numpy's traceback
        PanelStore.load(good.root)
    caplog.set_level(logging.INFO)
    again = PanelStore.build(**panel_kw)
    warnings = _panel_warnings(caplog)
    assert len(warnings) == 1 and "targets.npy has" in warnings[0] and "truncated" in warnings[0], warnings
    assert np.array_equal(np.asarray(again.targets), want, equal_nan=True)


def test_a_corrupted_panel_the_project_did_not_make_is_an_error(panel_kw):
    good = PanelStore.build(**panel_kw)
    (good.root / MARKER).unlink()  # as if someone had put the folder there
    f = good.root / "features.npy"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0x40
    f.write_bytes(bytes(data))
    with pytest.raises(DataError, match="does not match its checksum"):
        PanelStore.build(**panel_kw)
    assert f.read_bytes() == bytes(data)  # left as it was


def test_cache_clean_removes_only_what_the_project_made(panel_kw, caplog):
    panels = panel_kw["cache_dir"] / "panels"
    good = PanelStore.build(**panel_kw).root
    corrupt = PanelStore.build(**{**panel_kw, "manifest_fingerprint": "m2"}).root
    truncated = PanelStore.build(**{**panel_kw, "manifest_fingerprint": "m3"}).root
    b = bytearray((corrupt / "returns.npy").read_bytes())
    b[-1] ^= 1
    (corrupt / "returns.npy").write_bytes(bytes(b))
    os.truncate(truncated / "mask.npy", 10)
    pid = _dead_pid()
    foreign = [panels / "results_2024", panels / ".abc123.tmp", panels / f".dead1.{_HOST}-{pid}.tmp"]
    for d in foreign:  # a user's folder, an older version's temp folder, one a killed writer of no marker left
        d.mkdir()
        (d / "notes.txt").write_text("mine")
        _age(d, 3600)
    half = panels / "feed01"  # marked, no panel.json, an hour old
    killed = panels / f".feed02.{_HOST}-{pid}.tmp"  # marked, its writer gone
    live = panels / f".feed03.{temp_owner()}.tmp"  # marked, this process's write in progress
    for d in (half, killed, live):
        d.mkdir()
        mark(d, "panel")
    _age(half, 3600)
    caplog.set_level(logging.INFO)
    removed = clean_cache(panel_kw["cache_dir"], keep=None)  # what `train` runs: sizes only
    assert sorted(removed) == sorted([half, killed, truncated])
    assert corrupt.exists()
    removed = clean_cache(panel_kw["cache_dir"], keep=None, verify=True)  # what `cache clean` runs: checksums read
    assert removed == [corrupt]
    assert sorted(panels.iterdir()) == sorted([good, live, *foreign])
    assert all((d / "notes.txt").read_text() == "mine" for d in foreign)
    skipped = [m for m in caplog.messages if "left" in m and "alone" in m]
    assert len(skipped) >= 3 and all("no .gogooku3 marker" in m for m in skipped)


# ---- the baseline store ---------------------------------------------------------------------------------------
def _run(folds: list[int], seed: int = 0) -> BaselineRun:
    """A tiny baseline run (two features, 1d horizon, small boosters) of the given folds."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 2))
    y = x[:, 0] + 0.1 * rng.normal(size=200)
    params = {"verbosity": -1, "num_threads": 1, "min_data_in_leaf": 5}
    models = {(k, 1): lgb.train(params, lgb.Dataset(x, y + k), num_boost_round=5) for k in folds}
    preds = pl.DataFrame(
        {
            "fold": pl.Series(folds, dtype=pl.Int32),
            C.DATE: [dt.date(2024, 1, 2)] * len(folds),
            C.CODE: ["13010"] * len(folds),
            C.pred(1): pl.Series([0.1 * (k + 1) for k in folds], dtype=pl.Float32),
            C.target(1): [0.2] * len(folds),
        }
    )
    per_fold = [{"fold": k, "feature_importance": {"a": 1.0, "b": 0.5}} for k in folds]
    imp = {"a": float(len(folds)), "b": 0.5 * len(folds)}
    return BaselineRun(FP, [1], ["a", "b"], preds, preds, per_fold, imp, models=models)


def _whole(root: Path) -> list[int]:
    """The folds of the run stored at root, after reading every file it lists (checksums verified)."""
    run = BaselineRun.load(root)
    for k in run.fold_indices:
        assert run.booster(k, 1).num_trees() == 5
    return run.fold_indices


def _refit_refused(missing: list[int]) -> BaselineRun:
    raise AssertionError(f"the stored run was lost: fold(s) {missing} refitted")


SAVE = """
import os, sys
from gogooku3.core import stores
from gogooku3.predictors.lightgbm import BaselineRun
if os.environ.get("NO_EXCHANGE"):
    stores.exchange = lambda a, b: False
root, other = sys.argv[1], sys.argv[2]
new = BaselineRun.load(other)
new.booster(0, 1)  # in memory, as a freshly fitted run's
BaselineRun.load(root).merge(new).save(root)
"""


@pytest.mark.parametrize("no_exchange", [False, True], ids=["exchange", "set-aside"])
def test_a_killed_baseline_save_leaves_the_old_run_or_the_new_one(tmp_path, no_exchange):
    """The save (fold 1 stored, fold 0 merged in) killed at each of its steps in turn: the store lookup finds the
    old run (fold 1) or the new one (folds 0, 1), whole; the next save succeeds and no leftover remains."""
    store, other = tmp_path / "baselines", tmp_path / "other"
    root = store / FP
    env = {**os.environ, "NO_EXCHANGE": "1" if no_exchange else ""}
    script = tmp_path / "save.py"
    script.write_text(SAVE)
    _run([0], seed=1).save(other / FP)

    def save(**extra: str) -> subprocess.CompletedProcess:
        args = [sys.executable, str(script), str(root), str(other / FP)]
        return subprocess.run(args, env={**env, **extra}, capture_output=True, text=True, timeout=120)

    _run([1]).save(root)
    pristine = {p.name: p.read_bytes() for p in root.iterdir()}
    log_file = tmp_path / "steps.log"
    assert save(**{CRASH_LOG_ENV: str(log_file)}).returncode == 0
    steps = [line.split("\t")[2] for line in log_file.read_text().splitlines()]
    assert steps[-1] == f"publish baseline {FP}" and ("publish baseline" in steps[-2]) == no_exchange
    seen = []
    for n in range(1, len(steps) + 1):
        clean_store(store)
        for p in root.iterdir():  # back to the stored fold-1 run
            p.unlink()
        for name, data in pristine.items():
            (root / name).write_bytes(data)
        proc = save(**{CRASH_AT_ENV: str(n)})
        assert proc.returncode == -9, proc.stderr
        got = load_or_fit(root, FP, [1], _refit_refused)  # the store lookup
        assert got.reused, f"step {n} ({steps[n - 1]}): the stored run was lost"
        seen.append(_whole(root))
        assert not [p for p in store.iterdir() if p.name.startswith(".")]  # the lookup cleaned the leftovers
        assert save().returncode == 0 and _whole(root) == [0, 1]
    first_new = steps.index(f"publish baseline {FP}")  # killed before the last rename: the old run
    assert seen == [[1]] * first_new + [[0, 1]] * (len(steps) - first_new)


def test_store_leftovers_of_live_or_foreign_writers_stay(tmp_path, caplog):
    store = tmp_path / "baselines"
    _run([1]).save(store / FP)
    pid = _dead_pid()
    dead = store / f".{FP}.{_HOST}-{pid}.tmp"
    live = store / f".{FP}.{temp_owner()}.tmp"
    foreign = store / f".{FP}.{_HOST}-{pid}.old"  # no marker: not the project's
    legacy = store / f".{FP}.{pid}.tmp"  # an earlier version's name: not a leftover name this code knows
    for d in (dead, live, foreign, legacy):
        d.mkdir()
    mark(dead, "baseline")
    mark(live, "baseline")
    caplog.set_level(logging.INFO)
    assert clean_store(store) == [dead]
    assert sorted(p.name for p in store.iterdir()) == sorted([FP, live.name, foreign.name, legacy.name])
    assert any("left" in m and foreign.name in m and "no .gogooku3 marker" in m for m in caplog.messages)


def test_a_set_aside_run_is_put_back(tmp_path):
    """A save killed between setting the old run aside and renaming the new one in: the next lookup restores it."""
    store = tmp_path / "baselines"
    _run([1]).save(store / FP)
    aside = store / f".{FP}.{_HOST}-{_dead_pid()}.old"
    os.rename(store / FP, aside)
    assert not (store / FP).exists()
    got = load_or_fit(store / FP, FP, [1], _refit_refused)
    assert got.reused and _whole(store / FP) == [1] and not aside.exists()


def test_a_corrupted_booster_is_detected_and_refitted(tmp_path, caplog):
    root = tmp_path / "baselines" / FP
    _run([0, 1]).save(root)
    meta = json.loads((root / RUN_FILE).read_text())
    assert set(meta["files"]) == {
        model_file(0, 1),
        model_file(1, 1),
        "predictions_val.parquet",
        "predictions_test.parquet",
    }
    f = root / model_file(1, 1)
    text = f.read_text()
    f.write_text(text.replace("leaf_value=", "leaf_valuf=", 1))  # same size, another model
    with pytest.raises(DataError, match=r"fold1_1d\.txt does not match its checksum.*delete it to refit"):
        BaselineRun.load(root)
    caplog.set_level(logging.INFO)
    fitted: list[list[int]] = []
    run = load_or_fit(root, FP, [0, 1], lambda missing: fitted.append(missing) or _run(missing))
    assert fitted == [[0, 1]] and "does not match its checksum" in caplog.text and not run.reused
    assert _whole(root) == [0, 1]


def test_a_booster_changed_after_the_run_was_read_is_refused(tmp_path):
    root = tmp_path / "baselines" / FP
    _run([0]).save(root)
    run = BaselineRun.load(root)
    f = root / model_file(0, 1)
    f.write_bytes(f.read_bytes()[:-3] + b"xyz")
    with pytest.raises(DataError, match=r"fold0_1d\.txt does not match its checksum"):
        run.booster(0, 1)


def test_an_earlier_versions_store_is_replaced_but_a_foreign_folder_is_not(tmp_path):
    root = tmp_path / "baselines" / FP
    _run([1]).save(root)
    (root / MARKER).unlink()  # as an earlier version stored it (run.json of this fingerprint)
    BaselineRun.load(root).merge(_run([0])).save(root)
    assert owned(root) and _whole(root) == [0, 1]
    other = tmp_path / "baselines" / "fedcba9876543210"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not created by gogooku3"):
        _run([0]).save(other)
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
    assert not [p for p in other.parent.iterdir() if p.name.startswith(".")]


def test_publish_dir_falls_back_without_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(stores, "exchange", lambda a, b: False)
    root = tmp_path / "r"
    for v in ("a", "b"):
        tmp = stores.new_owned_dir(stores.temp_dir_for(root), "t")
        (tmp / "v").write_text(v)
        assert stores.publish_dir(tmp, root, "step")
        assert (root / "v").read_text() == v and sorted(p.name for p in tmp_path.iterdir()) == ["r"]
