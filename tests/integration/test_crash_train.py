"""Issue 20 (9): `gogooku3 train` killed (SIGKILL) at each of its publishing steps in turn never leaves a broken
product: runs/last points at the previous run or at the new, whole one, `predict --run runs/last` works, and
`predict` on the killed run either works or says in one line that the run is incomplete.

The steps come from a run with GOGOOKU3_CRASH_LOG (only the main process's: member workers may log their own);
each kill is GOGOOKU3_CRASH_AT=<n> on a fresh copy of a project that holds one finished run and a cold cache, so
every copy takes the same steps in the same order. Run with -s to see the steps and the states they leave."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_faults import TINY  # tests/integration is on sys.path (rootdir-relative imports)
from typer.testing import CliRunner

from gogooku3.cli import app

pytestmark = pytest.mark.slow
FAST = [*TINY, "train.max_epochs=1", "train.limit_train_batches=2"]


def train(root: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gogooku3.cli", "train", *FAST],
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def predict(root: Path, run: str) -> tuple[int, list[str]]:
    cwd = Path.cwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(app, ["predict", "--run", run])
    finally:
        os.chdir(cwd)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stderr.splitlines()


@pytest.fixture(scope="module")
def base(tmp_path_factory, planted_dataset) -> tuple[Path, str, list[str]]:
    """A project with one finished run and no cache, that run's name, and the main process's publishing steps."""
    top = tmp_path_factory.mktemp("crash")
    root = top / "base"
    planted_dataset(root)
    log = top / "steps.log"
    first = train(root, GOGOOKU3_CRASH_LOG=str(log))  # the previous run; a cold cache, as every copy below
    assert first.returncode == 0, first.stderr[-2000:]
    previous = os.readlink(root / "runs" / "last")
    shutil.rmtree(root / "data" / "cache")
    rows = [line.split("\t") for line in log.read_text().splitlines()]
    main_pid = next(pid for pid, _, name in rows if name == "point runs/last")  # the main process's steps
    steps = [name for pid, _, name in rows if pid == main_pid]
    at = steps.index("point runs/last")
    # after runs/last moves, only the run's own record (provenance.json: status, end time) is rewritten
    assert "publish bundle" in steps[:at] and set(steps[at + 1 :]) <= {"replace provenance.json"}
    return root, previous, steps


def test_train_killed_at_each_publishing_step_leaves_a_whole_product(base, tmp_path):
    root, previous, steps = base
    seen = []
    for n, step in enumerate(steps, start=1):
        work = tmp_path / f"kill{n:02d}"
        shutil.copytree(root, work, symlinks=True)
        killed = train(work, GOGOOKU3_CRASH_AT=str(n))
        assert killed.returncode == -signal.SIGKILL, (step, killed.returncode, killed.stderr[-1000:])
        last = work / "runs" / "last"
        assert last.is_symlink(), step
        target = os.readlink(last)
        new = [p.name for p in (work / "runs").iterdir() if p.name not in (previous, "last") and p.is_dir()]
        state = "previous" if target == previous else "new"
        if state == "new":
            assert new == [target] and (last / "metrics.json").is_file() and (last / "bundle" / "bundle.json").is_file()
        code, lines = predict(work, "runs/last")
        assert code == 0, (step, lines)
        killed_run = "none"  # killed before its run folder was made
        for name in new:  # the killed run itself: served whole, or refused in one line
            bundle = work / "runs" / name / "bundle"
            assert not bundle.exists() or {"bundle.json", "model.safetensors"} <= {p.name for p in bundle.iterdir()}
            code, lines = predict(work, f"runs/{name}")
            assert code == 0 or (code == 2 and len(lines) == 1 and "the run is incomplete" in lines[0]), (step, lines)
            killed_run = "whole" if code == 0 else "incomplete"
        seen.append((n, step, state, killed_run))
        shutil.rmtree(work)
    states = {s for _, _, s, _ in seen}
    print("\n".join(f"{n:2d} {step:<32} runs/last={s:<8} killed run: {k}" for n, step, s, k in seen))
    assert states == {"previous", "new"}
    at = steps.index("point runs/last")  # every step before runs/last moves keeps the old run, every later the new
    assert [s for *_, s, _ in seen] == ["previous"] * at + ["new"] * (len(steps) - at)
