"""`gogooku3 bench bench=quick` on a tiny synthetic market (it has an oracle): one training run per seed, one table
whose figures are each seed run's own comparison.json / backtest figures and their mean ± sd, the seed-averaged paired
tests, the LightGBM fit reused from its store, and the report's view of it; the refusals before any training."""

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from conftest import TINY_FIT, TINY_NET, TINY_SPLIT  # tests/ is on sys.path (rootdir conftest)
from gogooku3.config.compose import load_config
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.evaluation import bench as B
from gogooku3.evaluation import report_html as H
from gogooku3.pipelines.bench import run_bench, run_overrides

torch.set_num_threads(1)
OVERRIDES = [*TINY_NET, *TINY_SPLIT, *TINY_FIT, "bench=quick", "data.n_stocks=30", "data.n_days=300"]


@pytest.fixture(scope="module")
def benched(tmp_path_factory):
    from gogooku3.features.builder import build_dataset
    from gogooku3.sources.synthetic import synthesize

    root = tmp_path_factory.mktemp("bench")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        cfg = load_config(OVERRIDES)
        synthesize(cfg)
        build_dataset(cfg)
        out = run_bench(cfg, OVERRIDES)
    finally:
        mp.undo()
    return root, out  # out's paths (and bench.json's) are relative to root, the working folder of the bench


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _same(a, b) -> bool:
    """Equal, NaN equal to NaN (the t of two identical series: the blend all on one of its parts)."""
    return a == b or (math.isnan(a) and math.isnan(b))


def test_bench_writes_one_table_of_every_model_over_three_seeds(benched):
    root, out = benched
    folder = root / out["dir"]
    bench = json.loads((folder / "bench.json").read_text())
    assert (root / "output" / "bench" / "last").resolve() == folder.resolve()
    assert (folder / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert bench["seeds"] == [42, 43, 44] and bench["horizons"] == [1, 5]
    assert bench["product"] == "blend" and bench["reference"] == "lightgbm" and bench["oracle"] == "oracle"
    assert set(bench["models"]) == {"atft", "lightgbm", "blend", "oracle"} and bench["absent"] == []
    headers, rows = B.table(bench)
    assert headers[:3] == ["model", "RankIC 1d", "RankIC 5d"] and len(headers) == 11
    assert [r[0] for r in rows] == ["blend", "lightgbm", "atft", "oracle"]  # the product and the reference first
    assert all(len(r) == len(headers) for r in rows)
    md = (folder / "bench.md").read_text()
    assert "| " + " | ".join(headers) + " |" in md and md.count("\n| blend |") == 3  # main, paired, per-seed tables
    for name, s in bench["summary"].items():
        assert s["seeds"] == 3
        for h in ("1", "5"):
            for k in ("rank_ic", "rank_icir", "rank_ic_tstat"):
                assert _finite(s[k][h]["mean"]) and _finite(s[k][h]["sd"]), (name, k, h)
            assert _finite(s["oracle_fraction"][h]["mean"])
        assert _finite(s["net_sharpe"]["mean"]) and _finite(s["net_sharpe"]["sd"]) and _finite(s["fit_seconds"]["mean"])
    assert bench["summary"]["atft"]["n_params"]["mean"] > 0
    # every model is paired with the reference, the product and the deep model (does ATFT-GAT-FAN beat it?)
    pairs = set(bench["seed_averaged"]["paired"])
    assert {"blend_vs_atft", "lightgbm_vs_atft", "oracle_vs_atft", "atft_vs_lightgbm", "atft_vs_blend"} <= pairs
    assert "atft_vs_atft" not in pairs
    p_headers, _ = B.paired_table(bench)
    assert p_headers[1:] == [f"vs {o} {h}d" for o in ("lightgbm", "blend", "atft") for h in (1, 5)]
    for pair, by_h in bench["seed_averaged"]["paired"].items():
        for h, p in by_h.items():  # undefined only for two identical series (the blend all on one of its parts)
            assert _finite(p["t_stat"]) or p["std_diff"] == 0, (pair, h)


def test_every_figure_is_the_seed_runs_own_and_their_mean_and_sd(benched):
    root, out = benched
    bench = out["bench"]
    for seed in bench["per_seed"]:
        run = root / seed["run_dir"]
        comp = json.loads((run / "comparison.json").read_text())
        for name, m in seed["models"].items():
            for h in ("1", "5"):
                assert m["rank_ic"][h] == comp["pooled"][name][h]["rank_ic_mean"]
                assert m["rank_icir"][h] == comp["pooled"][name][h]["rank_icir"]
                if name != "lightgbm":
                    assert _same(m["t_vs_reference"][h], comp["paired"][f"{name}_vs_lightgbm"][h]["t_stat"])
                if name != "blend":  # model − product: the stored blend − model, negated
                    assert _same(m["t_vs_product"][h], -comp["paired"][f"blend_vs_{name}"][h]["t_stat"])
                oracle = comp["pooled"]["oracle"][h]["rank_ic_mean"]
                assert m["oracle_fraction"][h] == pytest.approx(m["rank_ic"][h] / oracle)
            (report,) = (run / "portfolio").glob(f"report_{name}_*.json")
            assert m["net_sharpe"] == json.loads(report.read_text())["realistic"]["sharpe"]
    for name, s in bench["summary"].items():
        values = [p["models"][name]["rank_ic"]["1"] for p in bench["per_seed"]]
        assert s["rank_ic"]["1"]["mean"] == pytest.approx(statistics.mean(values))
        assert s["rank_ic"]["1"]["sd"] == pytest.approx(statistics.stdev(values))
        # every seed scores the same rows, so the seed-averaged daily series' mean is the mean of the seeds' means
        assert bench["seed_averaged"]["pooled"][name]["1"]["rank_ic_mean"] == pytest.approx(statistics.mean(values))
    assert bench["summary"]["oracle"]["oracle_fraction"]["1"]["mean"] == pytest.approx(1.0)
    # LightGBM does not read the run's seed: fitted by the first run into its store, the same fit for every seed
    assert len(bench["store_fingerprints"]["lightgbm"]) == 1 and bench["summary"]["lightgbm"]["rank_ic"]["1"]["sd"] == 0
    assert [p["models"]["lightgbm"]["reused_from_store"] for p in bench["per_seed"]][1:] == [[True], [True]]
    assert len({p["models"]["atft"]["rank_ic"]["1"] for p in bench["per_seed"]}) == 3  # the network does


def test_the_report_of_a_run_on_that_dataset_shows_the_bench(benched):
    root, out = benched
    fp = out["bench"]["dataset"]["fingerprint"]
    view = B.report_view(root / "output" / "bench", fp)
    assert view is not None and Path(view["dir"]) == root / out["dir"]
    assert (view["headers"], view["rows"]) == B.table(out["bench"])
    page = H.bench_view(view)
    assert page.count("<table") == 2 and "data:image/png;base64," in page
    assert B.report_view(root / "output" / "bench", "another-dataset") is None


def test_refused_before_any_training(benched, tmp_path, monkeypatch):
    root, _ = benched
    monkeypatch.chdir(root)
    with pytest.raises(ConfigError, match="must include blend"):
        run_bench(load_config([*OVERRIDES, "bench.models=[atft,lightgbm]"]))
    with pytest.raises(ConfigError, match=r"not in predictors\.zoo"):
        run_bench(load_config([*OVERRIDES, "bench.models=[atft,lightgbm,blend,xgb9]"]))
    with pytest.raises(ConfigError, match="set by the bench itself"):
        run_overrides(load_config([*OVERRIDES, "+bench.overrides.seed=3"]), 1, tmp_path, tmp_path)
    with pytest.raises(DataError, match="no built dataset"):
        run_bench(load_config([*OVERRIDES, f"paths.dataset={tmp_path}/none.parquet"]))
    assert len(list((root / "output" / "bench").iterdir())) == 2  # the one bench and its link: nothing new


def test_spread_and_cells():
    s = B.spread([1.0, 2.0, 3.0, None, float("nan")])
    assert (s["mean"], s["sd"], s["n"], s["min"], s["max"]) == (2.0, 1.0, 3, 1.0, 3.0)
    assert B.spread([0.5])["sd"] is None and B.spread([])["mean"] is None
    assert B.cell(s, 2) == "2.00 ± 1.00" and B.cell(B.spread([0.5]), 2) == "0.50" and B.cell(None) == "–"
    assert B.cell(B.spread([0.5, 0.7]), pct=True) == "60.0 ± 14.1 %"
