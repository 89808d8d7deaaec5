"""No leftovers: a killed write's temp file goes with the next write, the panel cache is keyed by content and
bounded (`gogooku3 cache clean`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import polars as pl
from typer.testing import CliRunner

from gogooku3.cli import app
from gogooku3.config.compose import load_config
from gogooku3.core.io import _HOST, file_fingerprint, temp_owner, write_parquet
from gogooku3.core.stores import mark
from gogooku3.data.panel import clean_cache

TINY = ["labels.horizons=[1,5]", "model.window=10"]


def test_a_killed_writes_temp_file_goes_with_the_next_write(tmp_path):
    target = tmp_path / "ml_dataset_latest.parquet"
    code = (
        "import os, signal, sys\nfrom gogooku3.core.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as t:\n    t.write_bytes(b'')\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(target)], timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL
    left = list(tmp_path.glob(".ml_dataset_latest.parquet.*.tmp"))
    assert len(left) == 1 and left[0].stat().st_size == 0 and not target.exists()
    untagged = tmp_path / ".ml_dataset_latest.parquet.k2j3h4g5.tmp"  # an older version's, an hour old
    untagged.write_bytes(b"")
    os.utime(untagged, (time.time() - 3600,) * 2)
    live = tmp_path / f".ml_dataset_latest.parquet.{temp_owner()}.abc123.tmp"  # a write of this process
    live.write_bytes(b"")
    other = tmp_path / ".ml_dataset_latest.parquet.manifest.json.q1w2e3.tmp"  # another file's temp
    other.write_bytes(b"")
    write_parquet(pl.DataFrame({"a": [1]}), target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name])


def test_identical_rebuild_keeps_one_panel(tmp_path, monkeypatch, planted_dataset):
    from gogooku3.data.dataset import load_dataset, load_panel

    ds = planted_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(TINY)
    fp = file_fingerprint(ds)
    load_panel(cfg, *load_dataset(cfg))
    data = ds.read_bytes()
    ds.unlink()
    ds.write_bytes(data)  # rebuilt byte for byte: new inode, new mtime
    os.utime(ds, ns=(time.time_ns() + 10**9,) * 2)
    assert file_fingerprint(ds) == fp
    load_panel(cfg, *load_dataset(cfg))
    assert len(list((tmp_path / "data" / "cache" / "panels").iterdir())) == 1
    ds.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one byte differs: another fingerprint
    assert file_fingerprint(ds) != fp


def test_panel_cache_is_bounded(tmp_path, monkeypatch):
    panels = tmp_path / "data" / "cache" / "panels"
    for i, fp in enumerate(["aaa1", "bbb2", "ccc3", "ddd4"]):
        (panels / fp).mkdir(parents=True)
        mark(panels / fp, "panel")  # made by the project: only such folders are ever removed
        (panels / fp / "panel.json").write_text('{"files": {}}')
        os.utime(panels / fp / "panel.json", (1000 + i, 1000 + i))
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    killed = panels / f".eee5.{_HOST}-{int(gone.stdout)}.tmp"  # a conversion whose process is gone
    live = panels / f".fff6.{temp_owner()}.tmp"  # one in progress (this process)
    half = panels / "ggg7"  # an older version's half-written panel
    for d in (killed, live, half):
        d.mkdir()
        mark(d, "panel")
    os.utime(half, (1000, 1000))
    removed = clean_cache(tmp_path / "data" / "cache", keep=2, protect=["aaa1"])
    assert sorted(p.name for p in panels.iterdir()) == sorted(["aaa1", "ddd4", live.name])
    assert sorted(p.name for p in removed) == sorted(["bbb2", "ccc3", killed.name, "ggg7"])
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["cache", "clean", "--keep", "1"])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in panels.iterdir()) == sorted(["ddd4", live.name])
