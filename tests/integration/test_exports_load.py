"""Issue 22: the exports load as their own recipe says, in the real alphalens-reloaded and quantstats (test extra),
and every return is dated by the session it is realised on."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gogooku3.config.compose import load_config, to_yaml
from gogooku3.features.manifest import FeatureManifest, manifest_path

al = pytest.importorskip("alphalens")
qs = pytest.importorskip("quantstats")
pd = pytest.importorskip("pandas")

N_STOCKS, N_DAYS = 20, 70
DAYS = [d for d in (date(2024, 1, 1) + timedelta(days=i) for i in range(110)) if d.weekday() < 5][:N_DAYS]
RNG = np.random.default_rng(7)
R = RNG.normal(0.0, 0.01, size=(N_DAYS, N_STOCKS))  # R[k, j]: stock j's close-to-close return into session k
R[0] = 0.0
PX = 1000.0 * np.cumprod(1.0 + R, axis=0)


def _target(k: int, j: int, h: int) -> float | None:
    """target_{h}d of signal day k (entry lag 1): PX[k+1+h] / PX[k+1] - 1."""
    return float(PX[k + 1 + h, j] / PX[k + 1, j] - 1.0) if k + 1 + h < N_DAYS else None


def _make_run(tmp_path: Path) -> Path:
    """A dataset (Close, returns_1d, S33, targets), its manifest (entry lag 1), and a run whose product predictor
    ranks the stocks by code (pred = j) with its saved config: the ideal book, no costs, 4 long / 4 short."""
    rows = [
        {
            "Date": d,
            "Code": f"{1000 + j}",
            "Close": float(PX[k, j]),
            "returns_1d": float(R[k, j]),
            "S33": "A" if j % 2 else "B",
            "target_1d": _target(k, j, 1),
            "target_5d": _target(k, j, 5),
        }
        for k, d in enumerate(DAYS)
        for j in range(N_STOCKS)
    ]
    ds_frame = pl.DataFrame(rows)
    ds = tmp_path / "ds.parquet"
    ds_frame.write_parquet(ds)
    FeatureManifest.from_frame(ds_frame, {}, [1, 5], 1).save(manifest_path(ds))
    run = tmp_path / "runs" / "20240101_000000"
    (run / "predictions" / "atft").mkdir(parents=True)
    preds = ds_frame.filter(pl.col("target_5d").is_not_null()).select(
        "Date", "Code", "target_1d", "target_5d", pred_1d=pl.col("Code").cast(pl.Float64), pred_5d=pl.lit(0.0)
    )
    preds.write_parquet(run / "predictions" / "atft" / "test.parquet")
    cfg = load_config(
        [
            f"paths.output_dir={tmp_path / 'output'}",
            f"paths.dataset={ds}",
            f"paths.raw_dir={tmp_path / 'none'}",
            "portfolio.realism=ideal",
            "portfolio.cost_bps=0",
            "portfolio.long_fraction=0.2",
            "portfolio.short_fraction=0.2",
            "portfolio.horizon=1",
        ]
    )
    (run / "config.yaml").write_text(to_yaml(cfg))  # as `train` saves it; export must read this, not the defaults
    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from typer.testing import CliRunner

    from gogooku3.cli import app

    run = _make_run(tmp_path_factory.mktemp("exp"))
    for to in ("alphalens", "quantstats"):
        out = CliRunner().invoke(app, ["export", "--to", to, "--run", str(run)])
        assert out.exit_code == 0, out.output
    return run / "export"


def test_quantstats_returns_are_dated_by_their_realisation_session(exported):
    r = pd.read_parquet(exported / "quantstats_returns.parquet").set_index("date")
    assert isinstance(r.index, pd.DatetimeIndex) and r.index.tz is None
    # signal day k: entered at the close of k+1, marked at the close of k+2: long top 4 codes, short the bottom 4
    # (equal weight, each leg 1 in gross), no costs: R[k+2, 16:20].mean() - R[k+2, 0:4].mean(), dated DAYS[k+2]
    for k in (0, 10, 40):
        realised = pd.Timestamp(DAYS[k + 2])
        want = R[k + 2, 16:20].mean() - R[k + 2, 0:4].mean()
        assert r.loc[realised, "strategy"] == pytest.approx(want, abs=1e-12)
        assert r.loc[realised, "signal_date"] == pd.Timestamp(DAYS[k])
        assert r.loc[realised, "benchmark"] == pytest.approx(R[k + 2].mean(), abs=1e-12)


def test_quantstats_metrics_and_html(exported, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    r = pd.read_parquet(exported / "quantstats_returns.parquet").set_index("date")
    m = qs.reports.metrics(r["strategy"], r["benchmark"], display=False)
    assert "Sharpe" in m.index
    out = tmp_path / "qs.html"
    qs.reports.html(r["strategy"], r["benchmark"], output=str(out), title="export test")
    assert out.stat().st_size > 10_000
    c = pd.read_csv(exported / "quantstats_returns.csv", parse_dates=["date"], index_col="date")
    assert isinstance(c.index, pd.DatetimeIndex) and len(c) == len(r)


def test_alphalens_factor_loads_and_runs_the_full_tear_sheet(exported, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown: list[int] = []  # alphalens shows, then closes, each figure: count the figures with data
    monkeypatch.setattr(plt, "show", lambda *a, **k: shown.extend(n for n in plt.get_fignums() if plt.figure(n).axes))

    f = pd.read_parquet(exported / "alphalens_factor.parquet").set_index(["date", "asset"])
    px = pd.read_parquet(exported / "alphalens_prices.parquet").pivot(index="date", columns="asset", values="price")
    assert isinstance(px.index, pd.DatetimeIndex)
    fd = al.utils.get_clean_factor_and_forward_returns(
        f["factor"], px, groupby=f["group"], periods=(1, 5), quantiles=5, max_loss=0.5
    )
    # factor dated by its entry session: the 1D forward return from it is the label the run scored
    k, j = 10, 7
    e = pd.Timestamp(DAYS[k + 1])
    assert fd.loc[(e, f"{1000 + j}"), "1D"] == pytest.approx(_target(k, j, 1), rel=1e-9)
    assert f.loc[(e, f"{1000 + j}"), "1D"] == pytest.approx(_target(k, j, 1), rel=1e-9)
    ic = al.performance.factor_information_coefficient(fd)
    assert list(ic.columns) == ["1D", "5D"] and len(ic) > 30
    al.tears.create_full_tear_sheet(fd, long_short=True, group_neutral=False, by_group=True)
    assert len(shown) >= 3  # returns, information, turnover (+ event) sheets
    plt.close("all")


def test_export_reads_the_runs_saved_config_with_overrides_on_top(tmp_path):
    from gogooku3.core.errors import ConfigError
    from gogooku3.evaluation.export import run_config

    run = _make_run(tmp_path)
    cli = load_config([])  # the command line's defaults: realistic, 5 bps
    assert cli.portfolio.realism != "ideal"
    cfg = run_config(run, cli, ["portfolio.cost_bps=7"])
    assert (cfg.portfolio.realism, cfg.portfolio.cost_bps, cfg.portfolio.long_fraction) == ("ideal", 7.0, 0.2)
    with pytest.raises(ConfigError, match="key=value"):
        run_config(run, cli, ["model=full"])
    # the dataset version the run trained on, while it exists; the config's name (the current build) once it is gone
    version = tmp_path / "datasets" / "v1" / "data.parquet"
    version.parent.mkdir(parents=True)
    version.write_bytes(b"")
    (run / "dataset.json").write_text(json.dumps({"path": str(version)}))
    assert run_config(run, cli, []).paths.dataset == str(version)
    assert run_config(run, cli, ["paths.dataset=other.parquet"]).paths.dataset == "other.parquet"
    version.unlink()
    assert run_config(run, cli, []).paths.dataset == run_config(run, cli, ["portfolio.cost_bps=7"]).paths.dataset
    assert run_config(run, cli, []).paths.dataset != str(version)
    (run / "config.yaml").unlink()
    assert run_config(run, cli, []) is cli
