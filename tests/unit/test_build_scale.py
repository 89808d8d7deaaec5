"""The chunked build (`features.chunk_rows`): runs of a few codes at a time, written piece by piece, give exactly the
dataset of the one-piece build, metadata, manifest and coverage included (tiny chunks force many pieces)."""

from __future__ import annotations

import re

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gogooku3.config.compose import load_config
from gogooku3.core.io import read_json
from gogooku3.features.build import build_features, build_in_chunks, code_chunks
from gogooku3.features.builder import build_dataset
from gogooku3.features.coverage import coverage_path
from gogooku3.features.manifest import manifest_path, metadata_path
from gogooku3.features.plan import plan_features

TIMING = ("build_seconds", "peak_rss_mb", "path", "raw_dir", "dataset_fingerprint")  # bytes differ by row group


def _chunked(tables, cal, cfg, rows):
    parts = []
    build_in_chunks(tables, cal, cfg.features, cfg.labels, rows, parts.append)
    return pl.concat(parts), len(parts)


@pytest.mark.parametrize("variant", ["topix", "proxy", "proxy_no_statements"])
def test_chunks_equal_the_one_piece_build(variant, synth_tables, synth_calendar, cfg):
    drop = {"topix": (), "proxy": ("topix",), "proxy_no_statements": ("topix", "statements")}[variant]
    tables = {k: v for k, v in synth_tables.items() if k not in drop}
    one = build_features(tables, synth_calendar, cfg.features, cfg.labels).df
    got, n = _chunked(tables, synth_calendar, cfg, 700)
    assert n >= 10
    assert_frame_equal(got, one, check_exact=True)


def test_chunks_of_the_hand_made_market(mini_tables, mini_calendar, mini_built, cfg):
    got, n = _chunked(mini_tables, mini_calendar, cfg, 1)  # one stock per chunk
    assert n == mini_built.df["Code"].n_unique()
    assert_frame_equal(got, mini_built.df, check_exact=True)


def test_a_stock_without_statements_or_margin_rows(mini_tables, mini_calendar, cfg):
    """A chunk whose per-code tables come out empty plans the same blocks and builds the same rows."""
    code = mini_tables["daily_quotes"]["Code"].unique().sort()[2]
    t = {**mini_tables, **{k: mini_tables[k].filter(pl.col("Code") != code) for k in ("statements", "margin_interest")}}
    got, _ = _chunked(t, mini_calendar, cfg, 1)
    assert_frame_equal(got, build_features(t, mini_calendar, cfg.features, cfg.labels).df, check_exact=True)


def test_cross_sectional_blocks_are_sector_and_quality(synth_tables, synth_calendar, cfg):
    p = plan_features(synth_tables, synth_calendar, cfg.features, cfg.labels)
    assert [b.group for b in p.blocks if b.cross_sectional] == ["sector", "quality"]


# a window in an expression's text: `.over([col("Date"), col("S33")])` or `.over(partition_by: [...], order_by: ...)`
_OVER = re.compile(r"\.over\((?:partition_by: )?\[([^\]]*)\]")


def _windows(b) -> set[tuple[str, ...]]:
    """The partitions of every window in the block's expressions (`("Code",)` for a per-stock window)."""
    return {
        tuple(re.findall(r'col\("([^"]+)"\)', part))
        for st in b.stages
        for e in st.values()
        for part in _OVER.findall(str(e))
    }


def test_blocks_declare_their_cross_sectional_windows(synth_tables, synth_calendar, mini_tables, mini_calendar, cfg):
    """Every block of the plan, with every table present, without topix (the proxy index) and on the hand-made
    market: a block with a window over anything but Code (Date, or Date and sector) reads the same day's other stocks
    and must say so (`Block.cross_sectional`), or the chunked build would compute it on a chunk of codes alone; a
    block that says so has such a window."""
    dq = synth_tables["daily_quotes"]
    variants = [
        (synth_tables, synth_calendar),
        ({k: v for k, v in synth_tables.items() if k != "topix"}, synth_calendar),
        ({**synth_tables, "daily_quotes": dq.with_columns(pl.col("AdjC").alias("x_signal"))}, synth_calendar),
        (mini_tables, mini_calendar),
    ]
    seen = set()
    for tables, cal in variants:
        p = plan_features(tables, cal, cfg.features, cfg.labels)
        for b in p.blocks:
            seen.add(b.group)
            other = sorted(w for w in _windows(b) if w != ("Code",))
            assert b.cross_sectional == bool(other), (
                f"block {b.group!r}: windows over {other or 'Code only'} but cross_sectional={b.cross_sectional}"
            )
    assert {"sector", "quality", "market", "user"} <= seen


def test_code_chunks_cover_every_row_once(synth_tables):
    dq = synth_tables["daily_quotes"]
    chunks = code_chunks(dq, 1000)
    assert sum(n for _, _, n in chunks) == dq.height
    assert [o for _, o, _ in chunks] == [sum(n for _, _, n in chunks[:i]) for i in range(len(chunks))]
    codes = [c for cs, _, _ in chunks for c in cs]
    assert codes == sorted(dq["Code"].unique().to_list())


def test_build_dataset_in_chunks_writes_the_same_files(mini_factory, tmp_path):
    """On a 100-session market (22 all-null features dropped after the chunks are written) and a longer one."""
    for n_days in (100, 300):
        tables = mini_factory(n_stocks=5, n_days=n_days)
        raw = tmp_path / f"raw{n_days}"
        raw.mkdir()
        for name, df in tables.items():
            df.write_parquet(raw / f"{name}.parquet")
        res = {}
        for rows in (0, 250):
            out = tmp_path / f"out{n_days}_{rows}"
            res[rows] = build_dataset(
                load_config(
                    [
                        f"paths.raw_dir={raw}",
                        f"paths.output_dir={out}",
                        f"paths.dataset={out}/ml_dataset_latest.parquet",
                        f"features.chunk_rows={rows}",
                    ]
                )
            )
        one, chunked = res[0], res[250]
        assert_frame_equal(pl.read_parquet(chunked.path), pl.read_parquet(one.path), check_exact=True)
        assert pl.read_parquet(chunked.latest_path).equals(pl.read_parquet(one.path))
        ma, mb = read_json(metadata_path(chunked.path)), read_json(metadata_path(one.path))
        assert {k: v for k, v in ma.items() if k not in TIMING} == {k: v for k, v in mb.items() if k not in TIMING}
        ra, rb = read_json(manifest_path(chunked.path)), read_json(manifest_path(one.path))
        ra.pop("dataset_fingerprint"), rb.pop("dataset_fingerprint")
        assert ra == rb
        assert coverage_path(chunked.path).read_text() == coverage_path(one.path).read_text()
        assert not list(chunked.path.parent.glob(".*.tmp"))
        if n_days == 100:
            assert "dropped" in ma["skipped"]["returns"]
