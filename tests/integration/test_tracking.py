"""MLflow tracking: one store, one MLflow run per training run (curated params, every predictor's test scores, tags),
enriched by the report, and a store that `mlflow server` opens and serves over localhost."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from conftest import TINY_FIT, TINY_NET, TINY_SPLIT  # tests/ is on sys.path (rootdir conftest)
from gogooku3.config.compose import load_config
from gogooku3.evaluation.report import build_report
from gogooku3.evaluation.tracking import params
from gogooku3.pipelines.atft import CompleteATFTTrainingPipeline

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("flask")  # the UI server: the `tracking` extra installs the full mlflow, not the skinny client

TINY = [  # as tests/integration/test_faults.py
    *TINY_NET,
    *TINY_SPLIT,
    *TINY_FIT,
    "baseline.enabled=false",
]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, planted_dataset):
    """A tiny training run and its report, tracked into `<tmp>/runs/mlflow.db`: (cfg, run dir, MLflow run)."""
    tmp = tmp_path_factory.mktemp("tracking")
    planted_dataset(tmp)
    mp = pytest.MonkeyPatch()
    mp.chdir(tmp)
    try:
        cfg = load_config([*TINY, "baseline.enabled=true", "train.mlflow=true"])  # baseline: blend, paired tests
        run = (tmp / CompleteATFTTrainingPipeline(cfg).run()["run_dir"]).resolve()
        build_report(cfg, run)
    finally:
        mp.undo()
    store = f"sqlite:///{(tmp / 'runs' / 'mlflow.db').resolve()}"
    mlflow.set_tracking_uri(store)
    (found,) = mlflow.search_runs(experiment_names=["gogooku3"], output_format="list")
    return cfg, run, found, store


def test_one_run_with_curated_params_every_predictor_and_tags(tracked):
    cfg, run, found, _ = tracked
    m = json.loads((run / "metrics.json").read_text())
    # params: the composed config flattened once, one param per leaf, nothing else
    assert found.data.params == params(cfg)
    assert found.data.params["train.max_epochs"] == "2" and found.data.params["model.hidden"] == "16"
    assert found.data.params["labels.horizons"] == "[1, 5]"
    # every predictor's pooled test scores, named once each
    assert {"atft", "lightgbm", "ridge", "blend"} <= set(m["predictors"]) and m["comparison"]["reference"]
    for name in m["predictors"]:
        for h in ("1", "5"):
            ev = m["comparison"]["pooled"][name][h]
            assert found.data.metrics[f"test/{name}/rank_ic_{h}d"] == pytest.approx(ev["rank_ic_mean"])
            assert found.data.metrics[f"test/{name}/rank_ic_tstat_{h}d"] == pytest.approx(ev["rank_ic_tstat"])
    ref = m["comparison"]["reference"]
    for pair, by_h in m["comparison"]["paired"].items():
        key = f"test/{pair}/rank_ic_diff_1d"
        assert (key in found.data.metrics) == pair.endswith(f"_vs_{ref}")
        if pair.endswith(f"_vs_{ref}"):
            assert found.data.metrics[key] == pytest.approx(by_h["1"]["mean_diff"])
    assert not [k for k in found.data.metrics if k.startswith("test.")]  # the old duplicated names are gone
    # tags
    t = found.data.tags
    assert t["product"] == m["product"] and t["run_dir"] == str(run.resolve())
    assert t["dataset_fingerprint"] == m["dataset"]["fingerprint"]
    assert t["data_source"] and t["git_commit"]
    # curves: one point per epoch; the report's backtest and tear sheet in the same run
    curve = mlflow.MlflowClient().get_metric_history(found.info.run_id, "curve/member0/val_rank_ic_1d")
    assert sorted(p.step for p in curve) == [0, 1]
    assert f"backtest/{m['product']}/sharpe" in found.data.metrics
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(found.info.run_id)}
    assert {"metrics.json", "report.html"} <= arts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def test_mlflow_server_opens_the_store_and_serves_the_run(tracked):
    _, _, found, store = tracked
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    mlflow_cli = [sys.executable, "-m", "mlflow"]
    server = subprocess.Popen(
        [*mlflow_cli, "server", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if _get(f"{base}/health")[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                os.killpg(server.pid, signal.SIGKILL)
                pytest.fail(f"mlflow server did not start: {server.communicate()[1].decode()[-2000:]}")
            time.sleep(1)
        status, body = _get(f"{base}/api/2.0/mlflow/runs/get?run_id={found.info.run_id}")
        assert status == 200
        got = json.loads(body)["run"]
        metrics = {m["key"]: m["value"] for m in got["data"]["metrics"]}
        assert metrics == pytest.approx(found.data.metrics)
        assert {p["key"] for p in got["data"]["params"]} == set(found.data.params)
        status, page = _get(f"{base}/#/experiments/{found.info.experiment_id}/runs/{found.info.run_id}")
        assert status == 200 and b"<html" in page.lower()  # the UI's shell, which renders the run page
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers: its own session, started above
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
