"""The dataset partitioned by date (issue 24): a folder of monthly parquet files, each sorted by (Code, Date), whose
fingerprint is that of the set; an update links the months it does not change and writes the others as a full build
writes them; a one-file export and a user's own single parquet are read as before.

Market: 12 synthetic stocks × 300 sessions (about 14 months), cut 3 sessions before its end for the old dataset (as
in test_incremental_build, whose helpers this reuses).
"""

from __future__ import annotations

import hashlib
import os

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from test_incremental_build import _cfg, _write, truncate
from typer.testing import CliRunner

from gogooku3.cli import app
from gogooku3.core.io import file_fingerprint, read_json, sha256_file
from gogooku3.data.panel import _file_batches
from gogooku3.features.builder import build_dataset
from gogooku3.features.incremental import update_dataset
from gogooku3.features.manifest import metadata_path
from gogooku3.features.published import dataset_files, resolve, unpin_all
from gogooku3.features.writer import export_dataset, partition_of

NEW = 3


@pytest.fixture(scope="module")
def market():
    from gogooku3.sources.synthetic import SynthParams, simulate_market

    t = simulate_market(SynthParams(n_stocks=12, n_days=300, seed=5, split_share=0.3, ipo_share=0.2))
    return {k: v for k, v in t.items() if k != "oracle"}


@pytest.fixture(scope="module")
def built(market, tmp_path_factory):
    """The old dataset (cut tables), its update from the full tables and the full rebuild, for chunk_rows in
    {one piece, 700 rows}: {chunk_rows: (old version folder's data, update result, full result)}."""
    root = tmp_path_factory.mktemp("part")
    dates = market["daily_quotes"]["Date"].unique().sort()
    _write(truncate(market, dates[-1 - NEW]), root / "old_raw")
    _write(market, root / "raw")
    out = {}
    for chunk in (1_000_000, 700):
        extra = (f"features.chunk_rows={chunk}", "paths.keep_datasets=1")
        old = build_dataset(_cfg(root / "old_raw", root / f"out{chunk}", *extra))
        old_data = resolve(old.latest_path)
        old_inodes = {f.name: os.stat(f).st_ino for f in dataset_files(old_data)}
        upd = update_dataset(_cfg(root / "raw", root / f"out{chunk}", *extra))
        full = build_dataset(_cfg(root / "raw", root / f"full{chunk}", *extra))
        out[chunk] = old_inodes, upd, full
    unpin_all()
    return out


def test_a_build_is_a_folder_of_sorted_months_whose_fingerprint_is_the_sets(built):
    _, _, full = built[1_000_000]
    data = resolve(full.latest_path)
    files = dataset_files(data)
    df = pl.read_parquet(full.latest_path)  # Polars reads the folder as one frame, month after month
    months = sorted({partition_of(d) for d in df["Date"].unique().to_list()})
    assert data.is_dir() and [f.name for f in files] == months and len(files) >= 12
    parts = [pl.read_parquet(f) for f in files]
    for f, part in zip(files, parts, strict=True):
        assert {partition_of(d) for d in part["Date"].to_list()} == {f.name}
        assert part.equals(part.sort("Code", "Date"))  # each file in the order of the one-file dataset
    assert_frame_equal(pl.concat(parts), df, check_exact=True)
    lines = "".join(f"{f.name} {sha256_file(f)}\n" for f in files)  # the set's fingerprint, by hand
    fp = hashlib.sha256(lines.encode()).hexdigest()[:16]
    assert file_fingerprint(data) == fp == full.metadata["dataset_fingerprint"]
    assert full.metadata["partitions"] == len(files)


@pytest.mark.parametrize("chunk", [1_000_000, 700])
def test_an_update_links_the_months_it_keeps_and_equals_a_full_rebuild(built, chunk):
    old_inodes, upd, full = built[chunk]
    a, b = resolve(upd.latest_path), resolve(full.latest_path)
    assert_frame_equal(pl.read_parquet(a), pl.read_parquet(b), check_exact=True)  # bit for bit, every column
    redo = upd.metadata["incremental"]["recomputed_from"]
    first = partition_of(pl.Series([redo]).str.to_date()[0])
    names = [f.name for f in dataset_files(a)]
    assert names == [f.name for f in dataset_files(b)]
    kept = [n for n in names if n < first]
    assert kept and upd.metadata["incremental"]["partitions_linked"] == len(kept) < len(names)
    for n in names:
        st = os.stat(a / n)
        # the months before the recomputed rows are the old version's files (the same inode: no copy); the old version
        # itself was retired (paths.keep_datasets=1), which leaves the linked files whole
        assert (st.st_ino == old_inodes.get(n)) == (n < first), n
        if n >= first or chunk == 1_000_000:
            # written months: the bytes of the full rebuild's (the same runs of codes, so the same row groups); linked
            # months also in one piece (chunked, their row groups follow the old tables' runs of codes)
            assert sha256_file(a / n) == sha256_file(b / n), n
    assert len(list((a.parent.parent).iterdir())) == 1  # only the new version is left
    if chunk == 1_000_000:
        assert upd.metadata["dataset_fingerprint"] == full.metadata["dataset_fingerprint"]
    ma, mb = read_json(metadata_path(a)), read_json(metadata_path(b))
    same = ("rows", "stocks", "dates", "start", "end", "groups", "partitions", "n_features")
    assert {k: ma[k] for k in same} == {k: mb[k] for k in same}


def test_the_export_is_one_sorted_file_and_readers_take_it(built, tmp_path):
    _, _, full = built[700]
    one = export_dataset(full.latest_path, tmp_path / "one.parquet", 700)
    df = pl.read_parquet(one)
    assert_frame_equal(df, pl.read_parquet(full.latest_path).sort("Code", "Date"), check_exact=True)
    assert not list(tmp_path.glob(".*"))  # written whole, renamed into place
    assert dataset_files(one) == [one]
    # the panel conversion's batches: the folder's months in turn, or the file's row groups; the same rows
    cols = ["Code", "Date", "returns_1d"]
    via_folder = pl.concat(_file_batches(resolve(full.latest_path), cols, 500)).sort("Code", "Date")
    via_file = pl.concat(_file_batches(one, cols, 500))
    assert_frame_equal(via_folder, via_file, check_exact=True)
    # the CLI writes the same file
    r = CliRunner().invoke(
        app,
        ["data", "export", "--to", str(tmp_path / "cli.parquet"), f"paths.dataset={full.latest_path}"],
    )
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(tmp_path / "cli.parquet").equals(df)


def test_a_tampered_partition_is_caught(built, tmp_path):
    import shutil

    from gogooku3.core.errors import DataError
    from gogooku3.features.manifest import FeatureManifest

    _, _, full = built[1_000_000]
    src = resolve(full.latest_path).parent
    copy = tmp_path / "datasets" / src.name
    shutil.copytree(src, copy)  # new inodes: every digest is computed afresh
    FeatureManifest.for_dataset(copy / "data.parquet")
    f = dataset_files(copy / "data.parquet")[-1]
    pl.read_parquet(f).head(5).write_parquet(f)
    with pytest.raises(DataError, match="not the data its manifest"):
        FeatureManifest.for_dataset(copy / "data.parquet")


def test_a_link_falls_back_to_a_copy_across_filesystems(tmp_path, monkeypatch):
    import errno

    from gogooku3.features.published import link_or_copy

    src = tmp_path / "2024-01.parquet"
    pl.DataFrame({"a": [1, 2]}).write_parquet(src)
    assert link_or_copy(src, tmp_path / "linked.parquet")
    assert os.stat(tmp_path / "linked.parquet").st_ino == os.stat(src).st_ino

    def cross_device(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    assert not link_or_copy(src, tmp_path / "copied.parquet")
    copied = tmp_path / "copied.parquet"
    assert os.stat(copied).st_ino != os.stat(src).st_ino and copied.read_bytes() == src.read_bytes()
