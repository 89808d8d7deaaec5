"""MLflow tracking: one store, one MLflow run per training run, enriched by the report."""

import json
from pathlib import Path

import pytest

from gogooku3.config.compose import load_config
from gogooku3.evaluation.report import build_report
from gogooku3.pipelines.atft import CompleteATFTTrainingPipeline

mlflow = pytest.importorskip("mlflow")

OVERRIDES = [
    "labels.horizons=[1,5]",
    "model.window=10",
    "model.hidden=16",
    "model.head_hidden=8",
    "model.graph.window=10",
    "model.graph.min_obs=5",
    "train.max_epochs=2",
    "train.limit_train_batches=4",
    "train.warmup_steps=2",
    "split.min_train_days=60",
    "split.n_splits=2",
    "split.val_days=12",
    "trainer.progress_bar=false",
    "train.ensemble=1",
    "trainer.num_threads=1",
    "baseline.enabled=false",
    "train.mlflow=true",
]


def test_train_and_report_log_into_one_mlflow_run(tmp_path, monkeypatch, planted_dataset):
    planted_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(OVERRIDES)
    run = Path(CompleteATFTTrainingPipeline(cfg).run()["run_dir"])
    build_report(cfg, run)
    mlflow.set_tracking_uri(f"sqlite:///{(tmp_path / 'runs' / 'mlflow.db').resolve()}")
    (found,) = mlflow.search_runs(experiment_names=["gogooku3"], output_format="list")
    assert found.data.tags["run_dir"] == str(run.resolve())
    assert found.data.params["train.max_epochs"] == "2" and found.data.params["model.hidden"] == "16"
    m = json.loads((run / "metrics.json").read_text())
    assert found.data.metrics["test.1.rank_ic_mean"] == pytest.approx(m["test"]["1"]["rank_ic_mean"])  # the product
    assert found.data.tags["product"] == m["product"]
    for name in m["predictors"]:  # every predictor on the same rows
        assert found.data.metrics[f"test.{name}.1.rank_ic_mean"] == pytest.approx(
            m["comparison"]["pooled"][name]["1"]["rank_ic_mean"]
        )
    assert f"backtest.{m['product']}.summary.sharpe" in found.data.metrics  # added by the report
    curve = mlflow.MlflowClient().get_metric_history(found.info.run_id, "val_rank_ic_1d")
    assert sorted(p.step for p in curve) == [0, 1]  # one point per epoch
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(found.info.run_id)}
    assert {"metrics.json", "report.html"} <= arts
