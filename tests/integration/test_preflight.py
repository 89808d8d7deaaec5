"""Issue 20 (8, 9): a command that would write into a read-only folder, or replace a real folder at runs/last, is
refused at its start in one line (exit 2) and leaves nothing behind, instead of failing after the training.

As root (as in CI containers) permissions do not stop writes: a folder is made read-only with a read-only bind mount,
which needs the capability to mount (else the test is skipped and says why); other users get `chmod a-w`."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_faults import TINY, snapshot  # tests/integration is on sys.path (rootdir-relative imports)
from typer.testing import CliRunner

from gogooku3.cli import app


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` read-only for this process while the block runs."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    if shutil.which("mount") is None:
        pytest.skip("running as root without `mount`: cannot make a folder read-only for root")
    bind = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True, check=False)
    if bind.returncode != 0:
        pytest.skip(f"running as root without the capability to mount: {bind.stderr.strip()}")
    try:
        ro = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True, text=True, check=False
        )
        if ro.returncode != 0:
            pytest.skip(f"cannot remount read-only: {ro.stderr.strip()}")
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory, planted_dataset) -> Path:
    root = tmp_path_factory.mktemp("preflight") / "project"
    planted_dataset(root)
    (root / "runs").mkdir()
    (root / "data" / "cache").mkdir(parents=True)
    return root


def run_cli(root: Path, argv: list[str]) -> tuple[int, list[str], float]:
    cwd = Path.cwd()
    os.chdir(root)
    try:
        t0 = time.perf_counter()
        result = CliRunner().invoke(app, argv)
        took = time.perf_counter() - t0
    finally:
        os.chdir(cwd)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.stderr.splitlines(), took


CASES = [
    ("train_runs", ["train", *TINY], "runs", r"^error: runs: cannot write there .*paths\.runs_dir="),
    ("train_cache", ["train", *TINY], "data/cache", r"^error: data/cache: cannot write there .*paths\.cache_dir="),
    (
        "train_output_baseline",
        ["train", *TINY, "baseline.enabled=true"],
        "output",
        r"^error: output/baselines: cannot write there .* in output\).*paths\.output_dir=",
    ),
    ("predict_output", ["predict"], "output", r"^error: output/predictions: cannot write there .*paths\.output_dir="),
    ("build_output", ["data", "build"], "output", r"^error: output: cannot write there .*paths\.(dataset|output_dir)="),
    ("tune_output", ["tune", *TINY], "output", r"^error: output/optuna/.*: cannot write there .*paths\.output_dir="),
    ("safe_output", ["safe", *TINY], "output", r"^error: output/experiments: cannot write there"),
    ("bench_output", ["bench", *TINY], "output", r"^error: output/bench: cannot write there .*paths\.bench_dir="),
]


@pytest.mark.parametrize("argv,folder,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_read_only_folder_is_refused_at_the_start(project, argv, folder, message):
    import re

    with read_only(project / folder):
        before = snapshot(project)
        code, lines, _ = run_cli(project, argv)
        assert code == 2 and len(lines) == 1 and re.search(message, lines[0]), lines
        assert snapshot(project) == before  # nothing written, nothing changed


def test_a_real_folder_at_runs_last_is_refused_and_kept(project):
    last = project / "runs" / "last"
    last.mkdir()
    (last / "copied.txt").write_text("a copy of a run")
    try:
        before = snapshot(project)
        code, lines, _ = run_cli(project, ["train", *TINY])
        assert code == 2 and len(lines) == 1, lines
        assert lines[0].startswith("error: runs/last: is a real folder, not the link to the latest run; rename it")
        assert snapshot(project) == before and (last / "copied.txt").read_text() == "a copy of a run"
    finally:
        shutil.rmtree(last)


def test_preflight_leaves_a_writable_folder_as_it_was(tmp_path):
    from gogooku3.core.preflight import check_writable

    (tmp_path / "out").mkdir()
    os.utime(tmp_path / "out", ns=(1_000_000_000, 2_000_000_000))
    before = snapshot(tmp_path)
    check_writable(tmp_path / "out", "paths.output_dir")
    check_writable(tmp_path / "out" / "not" / "yet", "paths.output_dir")  # probed in its nearest existing parent
    assert snapshot(tmp_path) == before
    (tmp_path / "file").write_text("x")
    from gogooku3.core.errors import DataError

    with pytest.raises(DataError, match="is not a folder"):
        check_writable(tmp_path / "file" / "sub", "paths.output_dir")
