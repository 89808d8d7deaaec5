"""A built dataset is one unit (issue 20): one version folder published by one rename, names that are links swapped
whole, a content fingerprint every reader checks, one build at a time, a run pinned to the version it started on,
and a failed write that leaves nothing."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from gogooku3.config.compose import load_config
from gogooku3.core.errors import DataError
from gogooku3.core.io import file_fingerprint, read_json
from gogooku3.features import published
from gogooku3.features.builder import build_dataset
from gogooku3.features.manifest import FeatureManifest, manifest_path, metadata_path
from gogooku3.features.published import dataset_files, pin, resolve, unpin_all
from gogooku3.sources.schema import write_table


@pytest.fixture(scope="module")
def raw(mini_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    for name, df in mini_factory(n_stocks=4, n_days=100).items():
        write_table(df, root, name)
    return root


@pytest.fixture(autouse=True)
def _no_pins():
    yield
    unpin_all()


def _cfg(raw, out, *extra):
    return load_config(
        [f"paths.raw_dir={raw}", f"paths.output_dir={out}", f"paths.dataset={out}/ml_dataset_latest.parquet", *extra]
    )


def _versions(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "datasets").iterdir())


def test_a_build_is_one_version_the_names_point_at(raw, tmp_path):
    out = tmp_path / "out"
    res = build_dataset(_cfg(raw, out))
    (version,) = _versions(out)
    folder = out / "datasets" / version
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["data.parquet", "data.parquet.digests.json", "data.metadata.json", "data.manifest.json", "data.coverage.txt"]
    )
    assert (folder / "data.parquet").is_dir()  # one file per month of the span
    for name in (res.path, res.latest_path):  # relative links, so the output folder can move
        assert name.is_symlink() and os.readlink(name) == f"datasets/{version}/data.parquet"
        assert resolve(name) == folder / "data.parquet"
        for side in (manifest_path(name), metadata_path(name)):
            assert side.is_symlink() and side.resolve().parent == folder
    fp = file_fingerprint(folder / "data.parquet")
    assert version.endswith("-" + fp[:8])
    assert FeatureManifest.for_dataset(res.latest_path).dataset_fingerprint == fp
    assert read_json(folder / "data.metadata.json")["dataset_fingerprint"] == fp
    assert not [p for p in out.rglob(".*") if p.name != ".build.lock"]  # no temp folder, no link left half made
    assert not (out / ".build.lock").exists()


def test_every_reader_checks_the_content_fingerprint(raw, tmp_path):
    from gogooku3.data.dataset import load_dataset

    out = tmp_path / "out"
    cfg = _cfg(raw, out)
    build_dataset(cfg)
    data = resolve(cfg.paths.dataset)
    other = pl.read_parquet(data).with_columns(pl.col("target_1d") * 2)
    part = dataset_files(data)[0]  # a month's file changed under its manifest (a hand edit, a torn copy)
    pl.read_parquet(part).with_columns(pl.col("target_1d") * 2).write_parquet(part)
    with pytest.raises(DataError) as e:
        load_dataset(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "data.parquet" in msg and "rebuild with `gogooku3 data build`" in msg
    # a plain file beside its sidecars (a copy, an older layout) is checked the same way ...
    plain = tmp_path / "mine" / "ds.parquet"
    plain.parent.mkdir()
    other.write_parquet(plain)
    shutil.copyfile(manifest_path(data), manifest_path(plain))
    with pytest.raises(DataError, match="is not the data its manifest"):
        FeatureManifest.for_dataset(plain)
    # ... and one whose manifest records no fingerprint (a user's own dataset) is read as before
    m = FeatureManifest.load(manifest_path(plain))
    m.dataset_fingerprint = ""
    m.save(manifest_path(plain))
    assert FeatureManifest.for_dataset(plain).names == m.names


def test_a_run_keeps_the_version_it_started_on(raw, tmp_path, monkeypatch):
    """`train` (and tune, safe, predict, backtest, report) resolve `paths.dataset` once: a rebuild meanwhile, with
    other labels, changes neither what they read nor the fingerprint they record (nor what the DDP ranks Lightning
    starts later read), and the cleaner leaves it."""
    from gogooku3.data.dataset import PINNED_ENV, load_dataset

    monkeypatch.delenv(PINNED_ENV, raising=False)

    out = tmp_path / "out"
    lag1, lag2 = (
        _cfg(raw, out, "labels.horizons=[1,5]", f"labels.entry_lag={k}", "paths.keep_datasets=1") for k in (1, 2)
    )
    latest = build_dataset(lag1).latest_path
    dataset, manifest, ref = load_dataset(lag1)  # pinned
    before = pl.read_parquet(dataset)
    build_dataset(lag2)
    assert resolve(latest) != dataset  # the name moved on ...
    assert pl.read_parquet(dataset).equals(before)  # ... the run's data did not
    assert FeatureManifest.for_dataset(dataset).entry_lag == manifest.entry_lag == 1
    assert ref.fingerprint == file_fingerprint(dataset) == manifest.dataset_fingerprint
    assert ref.path == str(dataset)
    assert load_dataset(lag1, ddp_child=True)[0] == dataset  # a rank started after the rebuild
    assert len(_versions(out)) == 2  # keep_datasets=1, but the pinned version stays
    unpin_all()  # the run ended
    build_dataset(lag2)
    assert _versions(out) == [resolve(latest).parent.name]
    assert not dataset.exists()


def test_a_build_never_writes_into_a_version(raw, tmp_path):
    """`paths.dataset` may name a version's own file to train on it, but a build publishes to a name."""
    from gogooku3.core.errors import ConfigError

    out = tmp_path / "out"
    data = resolve(build_dataset(_cfg(raw, out)).latest_path)
    before = file_fingerprint(data)
    cfg = load_config([f"paths.raw_dir={raw}", f"paths.output_dir={out}", f"paths.dataset={data}"])
    with pytest.raises(ConfigError, match="is the file of a built version"):
        build_dataset(cfg)
    assert not data.is_symlink() and file_fingerprint(data) == before


def test_older_versions_go_and_links_to_them_with_them(raw, tmp_path):
    out = tmp_path / "out"
    cfg = _cfg(raw, out)  # keep_datasets: 2
    first = resolve(build_dataset(cfg).latest_path).parent
    stale = out / "ml_dataset_20230601_20230901.parquet"  # a dated name of an older span, pointing at the first
    stale.symlink_to(f"datasets/{first.name}/data.parquet")
    foreign = out / "datasets" / "mine"  # not the project's: never touched
    foreign.mkdir()
    build_dataset(cfg)
    assert first.exists() and stale.is_symlink()
    build_dataset(cfg)
    assert not first.exists() and not stale.is_symlink()
    assert len(_versions(out)) == 3 and "mine" in _versions(out)


def test_a_second_build_refuses_with_one_line(raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / ".build.lock", os.O_RDWR | os.O_CREAT)  # another build, pid 4242, holds the lock
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"4242\n")
        with pytest.raises(DataError) as e:
            build_dataset(_cfg(raw, out))
        msg = str(e.value)
        assert "\n" not in msg and "pid 4242" in msg and "wait for it to finish" in msg
        assert sorted(p.name for p in out.iterdir()) == [".build.lock"]
    finally:
        os.close(fd)
    build_dataset(_cfg(raw, out))  # released: the next build runs


def _fail_writes(monkeypatch, err: BaseException) -> None:
    def boom(self, *a, **k):
        raise err

    monkeypatch.setattr(pl.DataFrame, "write_parquet", boom)
    monkeypatch.setattr("gogooku3.features.writer._parquet_writer", boom)  # the dataset's month files


@pytest.mark.parametrize(
    "err,words",
    [
        (pl.exceptions.ComputeError("parquet: underlying IO error: No space left on device (os error 28)"), "space"),
        (OSError(30, "Read-only file system"), "Read-only file system"),
    ],
)
def test_a_failed_write_publishes_nothing_and_leaves_nothing(raw, tmp_path, monkeypatch, err, words):
    out = tmp_path / "out"
    cfg = _cfg(raw, out)
    before = build_dataset(cfg)
    kept = resolve(before.latest_path)
    _fail_writes(monkeypatch, err)
    with pytest.raises(DataError) as e:
        build_dataset(cfg)
    msg = str(e.value)
    assert "\n" not in msg and words in msg and "datasets/.ml_dataset_" in msg and "nothing was published" in msg
    assert resolve(before.latest_path) == kept and _versions(out) == [kept.parent.name]
    assert not [p for p in out.rglob(".*")]
    with pytest.raises(DataError):  # a failure on a fresh output folder leaves no folder at all
        build_dataset(_cfg(raw, tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists()


def test_other_errors_are_not_called_disk_errors(raw, tmp_path, monkeypatch):
    _fail_writes(monkeypatch, pl.exceptions.ComputeError("some bug"))
    with pytest.raises(pl.exceptions.ComputeError):
        build_dataset(_cfg(raw, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_pin_of_a_plain_or_missing_file_is_the_path_itself(tmp_path):
    assert pin(tmp_path / "nope.parquet") == tmp_path / "nope.parquet"
    p = tmp_path / "x.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(p)
    assert pin(p) == p and not published._PINS


def _small_tmpfs(path: Path, size: str) -> None:
    """A real full disk: a tmpfs of `size` at `path` (root with the capability to mount; else skipped)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs root and `mount` (a tmpfs); the simulated ENOSPC test above still runs")
    path.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")


def test_a_really_full_disk_publishes_nothing(raw, tmp_path):
    """A real 64 KiB tmpfs that the build fills: one DataError line saying so, and nothing left on the disk."""
    disk = tmp_path / "disk"
    _small_tmpfs(disk, "64k")
    try:
        with pytest.raises(DataError) as e:
            build_dataset(_cfg(raw, disk / "out"))
        assert "\n" not in str(e.value) and "No space left on device" in str(e.value)
        assert not list(disk.iterdir())  # no folder, no temp file, no lock
    finally:
        subprocess.run(["umount", str(disk)], check=True)
