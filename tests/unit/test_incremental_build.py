"""`gogooku3 data build --incremental`: the updated dataset equals a full rebuild, and every unsafe update is refused.

The "old" raw tables are the synthetic market as a vendor would have published it 3 sessions before its end
(`truncate`, as in tests/property/test_point_in_time.py: adjusted columns as known then, so the splits after the cut
restate the adjusted history of the "new" tables); the update reads the full tables. Tolerance: none. Every column,
features included, must be bit-identical to the full rebuild on this market. (docs/scale.md states the tolerance
needed at scale: windows of zero variance, e.g. a stock pinned at a price floor for months, where Polars' running-sum
rolling windows carry rounding of the stock's earlier history; benchmarks/bench_incremental.py checks it.)
"""

from __future__ import annotations

import re
import shutil

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

from gogooku3.cli import app
from gogooku3.config.compose import load_config
from gogooku3.core.io import read_json
from gogooku3.features import incremental
from gogooku3.features.builder import build_dataset
from gogooku3.features.coverage import coverage_path
from gogooku3.features.incremental import Refused, update_dataset
from gogooku3.features.manifest import manifest_path, metadata_path
from gogooku3.features.published import resolve
from gogooku3.sources.schema import write_table

NEW_SESSIONS = 3
# keys that differ with how a dataset was built; the parquet's bytes (`dataset_fingerprint`) differ with its row groups
TIMING = ("build_seconds", "peak_rss_mb", "path", "raw_dir", "incremental", "dataset_fingerprint")


@pytest.fixture(scope="module")
def market():
    from gogooku3.sources.synthetic import SynthParams, simulate_market

    t = simulate_market(SynthParams(n_stocks=24, n_days=400, seed=11, split_share=0.3, ipo_share=0.2))
    return {k: v for k, v in t.items() if k != "oracle"}


def truncate(tables: dict, t) -> dict:
    """The raw tables as published at t: rows up to t, adjusted quotes with only the splits known at t."""
    keep = {
        "topix": "Date",
        "listed_info": "Date",
        "statements": "DiscDate",
        "investor_types": "PubDate",
        "margin_interest": "PubDate",
    }
    out = {k: (v.filter(pl.col(keep[k]) <= t) if k in keep else v) for k, v in tables.items()}
    dq = tables["daily_quotes"].filter(pl.col("Date") <= t).sort("Code", "Date")
    after = (pl.col("AdjFactor").reverse().cum_prod().reverse().shift(-1).fill_null(1.0)).over("Code")
    dq = dq.with_columns(after.alias("_p"))
    out["daily_quotes"] = dq.with_columns(
        *[(pl.col(x) * pl.col("_p")).alias(f"Adj{x}") for x in ("O", "H", "L", "C")],
        (pl.col("Vo") / pl.col("_p")).alias("AdjVo"),
    ).drop("_p")
    return out


def _write(tables: dict, raw) -> None:
    shutil.rmtree(raw, ignore_errors=True)
    for name, df in tables.items():
        write_table(df, raw, name)


def _cfg(raw, out, *extra):
    return load_config(
        [f"paths.raw_dir={raw}", f"paths.output_dir={out}", f"paths.dataset={out}/ml_dataset_latest.parquet", *extra]
    )


def _cut(market: dict) -> dict:
    dates = market["daily_quotes"]["Date"].unique().sort()
    return truncate(market, dates[-1 - NEW_SESSIONS])


@pytest.fixture(scope="module")
def rebuilt(market, tmp_path_factory):
    """The full build of the new tables, topix and proxy index variants: {variant: (tables, BuildResult)}."""
    root = tmp_path_factory.mktemp("full")
    out = {}
    for variant, tables in (("topix", market), ("proxy", {k: v for k, v in market.items() if k != "topix"})):
        _write(tables, root / variant / "raw")
        out[variant] = tables, build_dataset(_cfg(root / variant / "raw", root / variant / "out"))
    return out


def _update(tables: dict, tmp_path, *extra) -> tuple:
    _write(_cut(tables), tmp_path / "old")
    old = build_dataset(_cfg(tmp_path / "old", tmp_path / "out", *extra))
    _write(tables, tmp_path / "new")
    return old, update_dataset(_cfg(tmp_path / "new", tmp_path / "out", *extra))


@pytest.mark.parametrize("variant,chunk_rows", [("topix", 1_000_000), ("proxy", 1_000_000), ("topix", 1500)])
def test_update_equals_full_rebuild(variant, chunk_rows, rebuilt, tmp_path):
    tables, full = rebuilt[variant]
    old, res = _update(tables, tmp_path, f"features.chunk_rows={chunk_rows}")
    assert old.rows < res.rows == full.rows
    a, b = pl.read_parquet(res.path), pl.read_parquet(full.path)
    assert res.path.name == full.path.name and pl.read_parquet(res.latest_path).equals(a)
    assert a.select("Code", "Date").equals(b.select("Code", "Date"))
    assert_frame_equal(a, b, check_exact=True)  # ids, dates, labels and every feature, bit for bit
    inc = res.metadata["incremental"]
    assert inc["warmup_from"] > b["Date"].min().isoformat()  # a slice, not the whole history
    assert inc["recomputed_rows"] < res.rows / 10
    ma, mb = read_json(metadata_path(res.path)), read_json(metadata_path(full.path))
    assert {k: v for k, v in ma.items() if k not in TIMING} == {k: v for k, v in mb.items() if k not in TIMING}
    ra, rb = read_json(manifest_path(res.path)), read_json(manifest_path(full.path))
    ra.pop("dataset_fingerprint"), rb.pop("dataset_fingerprint")
    assert ra == rb
    assert coverage_path(res.path).read_text() == coverage_path(full.path).read_text()


def test_the_history_columns_are_needed(rebuilt, tmp_path, monkeypatch):
    """Without the whole-history pass the EWMs start at the warm-up slice and differ: the equality test has teeth."""
    monkeypatch.setattr(incremental, "UNBOUNDED", re.compile(r"cum_|fill_null_with_strategy|int_range"))
    tables, full = rebuilt["topix"]
    _, res = _update(tables, tmp_path)
    a, b = pl.read_parquet(res.path), pl.read_parquet(full.path)
    assert a.select("Code", "Date").equals(b.select("Code", "Date"))
    assert not a["ema_200"].equals(b["ema_200"])


def test_nothing_new_leaves_the_dataset(rebuilt, tmp_path):
    tables, _ = rebuilt["topix"]
    _write(tables, tmp_path / "raw")
    cfg = _cfg(tmp_path / "raw", tmp_path / "out")
    first = build_dataset(cfg)
    again = update_dataset(cfg)
    assert again.rows == first.rows and again.metadata["end"] == first.metadata["end"]


def _refused(cfg, *words) -> str:
    with pytest.raises(Refused) as e:
        update_dataset(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "--fallback-full" in msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


def test_refusals(market, tmp_path):
    old, new = _cut(market), market
    _write(old, tmp_path / "old")
    _write(new, tmp_path / "new")
    out = tmp_path / "out"
    _refused(_cfg(tmp_path / "new", out), "no existing dataset")
    build_dataset(_cfg(tmp_path / "old", out))
    _refused(_cfg(tmp_path / "new", out, "features.windows.ema=[5,10,20,60,100]"), "another features config")
    _refused(_cfg(tmp_path / "new", out, "labels.horizons=[1,5]"), "another labels config")
    # a corrected close price inside the old span
    dq = new["daily_quotes"]
    fixed = dq.with_columns(
        pl.when(pl.int_range(pl.len()) == 10).then(pl.col("C") * 1.01).otherwise(pl.col("C")).alias("C")
    )
    _write({**new, "daily_quotes": fixed}, tmp_path / "fixed")
    _refused(_cfg(tmp_path / "fixed", out), "daily_quotes.parquet", "column(s) C differ")
    # a back-filled statement before the old end
    st = new["statements"]
    _write(
        {**new, "statements": pl.concat([st, st.head(1).with_columns(pl.col("DiscDate").dt.offset_by("-1d"))])},
        tmp_path / "backfill",
    )
    _refused(_cfg(tmp_path / "backfill", out), "statements.parquet", "the row set")
    # no margin table any more
    _write({k: v for k, v in new.items() if k != "margin_interest"}, tmp_path / "gone")
    _refused(_cfg(tmp_path / "gone", out), "margin_interest.parquet: table gone")
    # a build made before the fingerprints existed
    meta_p = metadata_path(resolve(tmp_path / "out" / "ml_dataset_latest.parquet"))  # the version's own
    meta = read_json(meta_p)
    from gogooku3.core.io import write_json

    write_json(meta_p, {k: v for k, v in meta.items() if k != "raw_fingerprint"})
    _refused(_cfg(tmp_path / "new", out), "predates incremental builds")
    write_json(meta_p, meta)
    # the fallback, where asked for, is a full build
    res = update_dataset(_cfg(tmp_path / "fixed", out), fallback_full=True)
    assert "incremental" not in res.metadata and res.rows == dq.height


def test_cli_incremental_refusal_is_one_line(tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    r = runner.invoke(
        app,
        [
            "data",
            "build",
            "--incremental",
            f"paths.raw_dir={tmp_path}/raw",
            f"paths.output_dir={out}",
            f"paths.dataset={out}/ml_dataset_latest.parquet",
        ],
    )
    assert r.exit_code == 2
    assert "error: incremental build refused: no existing dataset" in r.output
    r = runner.invoke(app, ["data", "build", "--fallback-full", f"paths.raw_dir={tmp_path}/raw"])
    assert r.exit_code == 2 and "--fallback-full: only with --incremental" in r.output


def test_raw_fingerprint_ignores_row_order_and_restated_adjusted_prices(market):
    from gogooku3.features.fingerprints import raw_fingerprint

    end = market["daily_quotes"]["Date"].max()
    base = raw_fingerprint(market, end)
    shuffled = {k: v.sample(fraction=1.0, shuffle=True, seed=3) for k, v in market.items()}
    assert raw_fingerprint(shuffled, end) == base
    dq = market["daily_quotes"]
    restated = dq.with_columns(pl.col("AdjC") * 0.5, pl.col("AdjVo") * 2.0)  # a later 1:2 split restates them
    assert raw_fingerprint({**market, "daily_quotes": restated}, end) == base
    fixed = dq.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(pl.col("Vo") + 1).otherwise(pl.col("Vo")))
    got = raw_fingerprint({**market, "daily_quotes": fixed}, end)["daily_quotes"]
    assert [k for k in got if got[k] != base["daily_quotes"][k]] == ["Vo"]
