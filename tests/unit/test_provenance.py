"""A run says what made it (RUN/provenance.json, RUN/run.log), plain console lines off a terminal, and the CLI's
answers to Hydra's own flags (`--cfg job`, `-m`) and to trainer=gpu without CUDA."""

from __future__ import annotations

import io
import json
import logging
import re
import sys

import pytest
import torch
from typer.testing import CliRunner

from gogooku3.cli import app
from gogooku3.config.compose import load_config
from gogooku3.core import logs
from gogooku3.core.provenance import LOG_NAME, PROVENANCE_NAME, git_info, provenance, recorded_run, redact_argv

runner = CliRunner()
log = logging.getLogger("gogooku3.test_provenance")
API_KEY = "jq-SECRET-4f9a1c7e"
DB_PASSWORD = "Pa55-SECRET-w0rd"
LONG = "long line " + "x" * 190  # 200 characters: wrapped at 80 columns before


@pytest.fixture(autouse=True)
def _info_level():
    old = log.level
    log.setLevel(logging.INFO)  # records propagate to the root's handlers whatever the root's level
    yield
    log.setLevel(old)


def test_provenance_fields():
    cfg = load_config(["seed=7", "train.seed=11"])
    p = provenance(cfg, "2026-01-01T00:00:00", argv=["gogooku3", "train", "seed=7"])
    assert p["version"] and p["argv"] == ["gogooku3", "train", "seed=7"]
    assert p["seeds"] == {"seed": 7, "train.seed": 11}
    assert p["versions"]["python"] == sys.version.split()[0]
    for lib in ("torch", "lightgbm", "polars", "numpy"):
        assert p["versions"][lib], lib
    assert p["host"]["cpu_count"] >= 1 and p["start_time"] == "2026-01-01T00:00:00" and p["status"] == "running"
    g = p["git"]  # the package's checkout when it has one (not in an installed copy)
    assert g is None or (re.fullmatch(r"[0-9a-f]{40}", g["commit"]) and g["dirty"] in (True, False))


def test_git_absent_outside_a_checkout(tmp_path):
    assert git_info(tmp_path) is None


def test_argv_secrets_redacted():
    argv = [
        "gogooku3",
        "train",
        f"data.api_key={API_KEY}",
        f"hpo.storage=postgresql://alice:{DB_PASSWORD}@db.example:5432/optuna",
        "train.lr=0.1",
    ]
    out = redact_argv(argv)
    assert not any(API_KEY in a or DB_PASSWORD in a for a in out)
    assert out[2] == "data.api_key=***"
    assert out[3] == "hpo.storage=postgresql://alice:***@db.example:5432/optuna"
    assert out[:2] == argv[:2] and out[4] == "train.lr=0.1"


def test_run_log_and_provenance(tmp_path):
    cfg = load_config([])
    with recorded_run(cfg) as rec:
        log.info("before the run folder: %s", LONG)  # buffered, written at attach
        rec.attach(tmp_path)
        first = json.loads((tmp_path / PROVENANCE_NAME).read_text())
        assert first["status"] == "running" and first["end_time"] is None
        log.info(LONG)
        assert LONG in (tmp_path / LOG_NAME).read_text()  # written as the run goes
    lines = (tmp_path / LOG_NAME).read_text().splitlines()
    assert len(lines) == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO gogooku3\.test_provenance: " + LONG, lines[1])
    assert lines[0].endswith("before the run folder: " + LONG)
    end = json.loads((tmp_path / PROVENANCE_NAME).read_text())
    assert end["status"] == "ok" and end["end_time"] and end["run_dir"] == str(tmp_path)
    log.info("after the run")  # the handler is gone
    assert "after the run" not in (tmp_path / LOG_NAME).read_text()


def test_failed_run_recorded(tmp_path):
    cfg = load_config(["data=jquants", f"data.api_key={API_KEY}"])
    with pytest.raises(ValueError), recorded_run(cfg) as rec:
        rec.attach(tmp_path)
        log.info("a library that logs the key %s", API_KEY)
        with recorded_run(None) as inner:  # a nested run (train inside `gogooku3 run`) shares the record
            assert inner is rec
        raise ValueError(f"boom {API_KEY}")
    p = json.loads((tmp_path / PROVENANCE_NAME).read_text())
    assert p["status"] == "failed" and p["error"] == "ValueError: boom ***"
    text = (tmp_path / LOG_NAME).read_text()
    assert "run failed: ValueError: boom ***" in text and "Traceback" in text and "logs the key ***" in text
    assert API_KEY not in text


def test_console_plain_when_not_a_terminal(monkeypatch):
    out = io.StringIO()  # not a TTY
    monkeypatch.setattr(sys, "stdout", out)
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        logs.setup_logging("INFO")
        log.info(LONG)
    finally:
        for h in root.handlers:
            if h not in before:
                root.removeHandler(h)
        for h in before:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
    (line,) = [ln for ln in out.getvalue().splitlines() if "long line" in ln]
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] INFO " + LONG, line)  # one line, no wrap, no padding


def test_cfg_job_prints_the_config_redacted():
    r = runner.invoke(app, ["train", "--cfg", "job", "train.lr=0.0042", "data=jquants", f"data.api_key={API_KEY}"])
    assert r.exit_code == 0, r.output
    assert "lr: 0.0042" in r.output and API_KEY not in r.output and "api_key: '***'" in r.output
    r = runner.invoke(app, ["--cfg", "all", "train", "train.lr=0.0042"])  # before the command, as Hydra's apps
    assert r.exit_code == 0 and "lr: 0.0042" in r.output


def test_cfg_hydra_refused():
    r = runner.invoke(app, ["train", "--cfg", "hydra"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "gogooku3 config show" in r.output


def test_multirun_refused(tmp_path):
    r = runner.invoke(app, ["train", "-m", "train.lr=1e-3,3e-3", f"paths.runs_dir={tmp_path}/runs"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
    assert "gogooku3 tune" in r.output and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("override", ["trainer=gpu", "trainer.accelerator=cuda"])
def test_gpu_without_cuda_refused(monkeypatch, tmp_path, override):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = runner.invoke(app, ["train", override, f"paths.runs_dir={tmp_path}/runs"])
    assert r.exit_code == 2, r.output
    (line,) = r.output.strip().splitlines()
    assert line.startswith("error: trainer.accelerator=") and "--index-url https://download.pytorch.org/whl/" in line
    assert not (tmp_path / "runs").exists()
