"""`gogooku3 tune`: a 2-trial Optuna study on a tiny planted dataset, the best-params file as overrides, the pruning
callback against a MedianPruner, and the search-space / process checks."""

import json
import os
import sqlite3
from types import SimpleNamespace

import optuna
import pytest
import torch

from conftest import TINY_NET, TINY_SPLIT  # tests/ is on sys.path (rootdir conftest)
from gogooku3.config.compose import load_config, select
from gogooku3.core.errors import ConfigError
from gogooku3.pipelines.tune import (
    PruningCallback,
    Tuner,
    best_overrides,
    check_space,
    suggest,
    to_overrides,
    trial_config,
)

torch.set_num_threads(1)
FEATS = ["returns_1d", "f_signal", "f_noise1", "f_noise2"]  # conftest.write_planted_dataset(n_noise=2)
OVERRIDES = [
    *TINY_NET,
    *TINY_SPLIT,
    "baseline.enabled=false",
    "hpo.study_name=tiny",
    "hpo.n_trials=2",
    "hpo.max_epochs=1",
    "hpo.limit_train_batches=4",
    "hpo.n_startup_trials=1",
    "hpo.space.hidden.choices=[8,16]",
    "hpo.pruner.n_startup_trials=1",
]


@pytest.fixture(scope="module")
def studied(tmp_path_factory, planted_dataset):
    import gogooku3.pipelines.tune as tune_mod
    import gogooku3.training.ensemble as ensemble_mod

    root = tmp_path_factory.mktemp("tune")
    planted_dataset(root, n_days=140, n_noise=2)
    old = os.getcwd()
    os.chdir(root)
    fit, predict = tune_mod.fit_ensemble, ensemble_mod.predict_panel
    seen: list[dict] = []

    def fit_spy(*args, **kwargs):  # records which days each trial trains and validates on
        res = fit(*args, **kwargs)
        dm = res.dm
        seen.append({"fit": dm.fit_days, "val": dm.val_days, "test": dm.test_days})
        return res

    def predict_spy(model, panel, days, **kwargs):  # ... and which days it predicts
        seen[-1]["predicted"] = days
        return predict(model, panel, days, **kwargs)

    tune_mod.fit_ensemble, ensemble_mod.predict_panel = fit_spy, predict_spy
    try:
        tuner = Tuner(load_config(OVERRIDES))
        res = tuner.run()
        yield root, tuner, res, seen
    finally:
        tune_mod.fit_ensemble, ensemble_mod.predict_panel = fit, predict
        os.chdir(old)


def test_study_writes_storage_best_file_and_summary(studied):
    root, _tuner, res, _ = studied
    db = root / "output" / "optuna" / "tiny.db"
    assert db.exists() and res["storage"] == f"sqlite:///{db.resolve()}"
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from trials").fetchone()[0] == 2
    summary = json.loads((root / "output" / "optuna" / "tiny_trials.json").read_text())
    # trial 1 either completes or is pruned by the MedianPruner (n_startup_trials=1) after its first epoch
    assert summary["n_trials"] == 2 and summary["states"]["COMPLETE"] >= 1
    assert summary["states"]["COMPLETE"] + summary["states"]["PRUNED"] == 2
    assert summary["best"]["number"] == res["best_trial"]
    done = [t for t in summary["trials"] if t["state"] == "COMPLETE"]
    assert summary["best"]["value"] == max(t["value"] for t in done)
    for t in summary["trials"]:
        # the pruning callback was called by the Lightning trainer: one intermediate value per epoch
        assert list(t["intermediate_values"]) == ["0"]
        assert -1.0 <= t["intermediate_values"]["0"] <= 1.0
    for t in done:
        assert -1.0 <= t["value"] <= 1.0
        assert t["user_attrs"]["fold1"]["val_days_scored"] > 0
    assert set(res["best_params"]) == {
        "train.lr",
        "model.hidden",
        "model.dropout",
        "train.loss.lambda_q",
        "train.loss.lambda_ic",
        "train.loss.huber_delta",
        "model.graph.k",
        "model.graph.threshold",
    }
    assert not (root / "output" / "optuna" / "tiny").exists()  # trial folders are removed (keep_trial_dirs=false)
    assert not (root / "runs").exists()  # trials write no training run directory


def test_best_file_loads_as_overrides(studied):
    root, _, res, _ = studied
    best = root / "output" / "optuna" / "tiny_best.yaml"
    text = best.read_text()
    assert text.startswith("# @package _global_\n")
    ovr = best_overrides(best)
    assert ovr == res["best_overrides"] == to_overrides(res["best_params"])
    cfg = load_config(OVERRIDES + ovr)
    for key, value in res["best_params"].items():
        assert select(cfg, key) == pytest.approx(value), key
    assert cfg.model.hidden in (8, 16)


def test_experiment_file_reproduces_the_best_trial(studied):
    """`gogooku3 train experiment=tiny` composes the tuned config (the study's base overrides + the best trial's
    parameters); with the budget overrides of its header it retrains the best trial to the same score."""
    root, _, res, seen = studied
    n_seen = len(seen)
    exp = root / "output" / "optuna" / "experiment" / "tiny.yaml"
    assert (root / res["experiment_file"]).resolve() == exp.resolve()
    text = exp.read_text()
    assert text.startswith("# @package _global_\n")
    rerun = next(ln for ln in text.splitlines() if ln.startswith("# Rerun the trial:"))
    budget = rerun.split("experiment=tiny", 1)[1].split()
    assert "train.ensemble=1" in budget and "train.max_epochs=1" in budget
    hw = ["trainer.progress_bar=false", "trainer.num_threads=1"]  # hardware: not part of an experiment
    old = os.getcwd()
    os.chdir(root)
    try:
        cfg = load_config(["experiment=tiny", *hw])  # output/optuna is searched without --config-dir
        tuned = load_config(OVERRIDES)
        for key, value in res["best_params"].items():  # the best trial's values ...
            assert select(cfg, key) == pytest.approx(value), key
        for key in ("labels.horizons", "model.window", "model.head_hidden", "split.val_days", "baseline.enabled"):
            assert select(cfg, key) == select(tuned, key), key  # ... and the study's base
        assert "hpo.study_name" not in text and "paths" not in text and "trainer" not in text
        again = load_config(["experiment=tiny", *budget, *hw])
        rerun_tuner = Tuner(again)
        rerun_tuner.prepare()
        score = rerun_tuner.evaluate(again)
    finally:
        os.chdir(old)
        del seen[n_seen:]  # the spies saw this rerun: not a trial
    assert score == pytest.approx(res["best_value"], abs=1e-6)


def test_tune_writes_the_experiment_into_the_config_dir(studied, tmp_path):
    _root, tuner, res, _ = studied
    from gogooku3.pipelines.tune import experiment_params, experiment_yaml

    values = experiment_params(tuner.cfg, res["best_params"])
    assert values["model.window"] == 10 and "hpo.n_trials" not in values and "paths.output_dir" not in values
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text(experiment_yaml(values, ["test"]))
    cfg = load_config(["experiment=mine"], config_dirs=[tmp_path])
    assert cfg.model.window == 10 and cfg.train.lr == pytest.approx(res["best_params"]["train.lr"])
    with pytest.raises(ConfigError, match=r"experiment=nope: no such option.*mine"):
        load_config(["+experiment=nope"], config_dirs=[tmp_path])
    with pytest.raises(ConfigError, match=r"hpo.study_name"):
        Tuner(load_config([*OVERRIDES, "hpo.study_name='a b/c'"]))


def test_trials_never_touch_test_days(studied):
    _, tuner, _, seen = studied
    summary = json.loads((studied[0] / "output" / "optuna" / "tiny_trials.json").read_text())
    assert len(seen) == summary["states"]["COMPLETE"]  # one fold (hpo.folds=1) per completed trial
    assert [p.test for p in tuner.plans] == [()]  # the plans handed to fit_ensemble carry no test days
    fold = tuner.plans[-1].fold
    panel = tuner.panel
    test = set(panel.day_index(fold.test_dates).tolist())
    assert test
    for s in seen:
        assert len(s["test"]) == 0
        assert not test & set(s["fit"].tolist()) and not test & set(s["val"].tolist())
        assert not test & set(s["predicted"].tolist())
        assert max(s["fit"]) < min(s["val"]) < min(test)


def test_second_worker_joins_the_study(studied):
    root = studied[0]
    old = os.getcwd()
    os.chdir(root)
    try:
        res = Tuner(
            load_config(
                [*OVERRIDES, "hpo.n_trials=1", "hpo.seed=1", "hpo.pruner.enabled=false", "hpo.keep_trial_dirs=true"]
            )
        ).run()
    finally:
        os.chdir(old)
    summary = json.loads((root / "output" / "optuna" / "tiny_trials.json").read_text())
    assert summary["n_trials"] == 3 and [t["number"] for t in summary["trials"]] == [0, 1, 2]
    assert summary["trials"][2]["state"] == "COMPLETE"
    kept = root / "output" / "optuna" / "tiny" / "trial_0002" / "fold1"
    assert (kept / "logs" / "metrics.csv").exists() and list((kept / "checkpoints").glob("*.ckpt"))
    assert res["best_value"] == max(t["value"] for t in summary["trials"] if t["state"] == "COMPLETE")


def test_cli_has_tune_command():
    from typer.testing import CliRunner

    from gogooku3.cli import app

    out = CliRunner().invoke(app, ["tune", "--help"])
    assert out.exit_code == 0 and "Optuna" in out.output


def _fake_trainer(epoch: int, value: float | None):
    metrics_ = {} if value is None else {"val_rank_ic_1d": torch.tensor(value)}
    return SimpleNamespace(sanity_checking=False, current_epoch=epoch, callback_metrics=metrics_)


def test_pruning_callback_prunes_worse_trial_under_median_pruner():
    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    )
    good = study.ask()
    cb = PruningCallback(good, "val_rank_ic_1d")
    for epoch in range(3):
        cb.on_validation_end(_fake_trainer(epoch, 0.2), None)
    study.tell(good, 0.2)
    bad = study.ask()
    cb = PruningCallback(bad, "val_rank_ic_1d")
    with pytest.raises(optuna.TrialPruned):
        cb.on_validation_end(_fake_trainer(0, -0.1), None)
    assert cb.reported == [(0, pytest.approx(-0.1))]
    better = study.ask()
    PruningCallback(better, "val_rank_ic_1d").on_validation_end(_fake_trainer(0, 0.3), None)  # not pruned


def test_pruning_callback_offsets_fold_steps_and_skips_sanity_check():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    trial = study.ask()
    PruningCallback(trial, "val_rank_ic_1d", step_offset=0).on_validation_end(_fake_trainer(0, 0.1), None)
    second = PruningCallback(trial, "val_rank_ic_1d", step_offset=4)
    second.on_validation_end(_fake_trainer(0, 0.2), None)
    second.on_validation_end(
        SimpleNamespace(sanity_checking=True, current_epoch=1, callback_metrics={"val_rank_ic_1d": torch.tensor(0.9)}),
        None,
    )
    second.on_validation_end(_fake_trainer(1, None), None)  # metric missing: nothing reported
    study.tell(trial, 0.15)
    assert study.trials[0].intermediate_values == {0: pytest.approx(0.1), 4: pytest.approx(0.2)}


def test_space_checks_and_trial_config():
    cfg = load_config(OVERRIDES)
    space = check_space(cfg)
    params = suggest(
        optuna.trial.FixedTrial(
            {
                "lr": 1e-3,
                "hidden": 8,
                "dropout": 0.2,
                "lambda_q": 0.1,
                "lambda_ic": 0.9,
                "huber_delta": 0.5,
                "graph_k": 7,
                "graph_threshold": 0.25,
            }
        ),
        space,
    )
    tcfg = trial_config(cfg, params)
    assert (tcfg.train.lr, tcfg.model.hidden, tcfg.model.graph.k, tcfg.train.loss.lambda_ic) == (1e-3, 8, 7, 0.9)
    assert (tcfg.train.max_epochs, tcfg.train.limit_train_batches, tcfg.train.save_top_k) == (1, 4, 1)
    assert (cfg.model.hidden, cfg.train.max_epochs) == (16, load_config([]).train.max_epochs)  # input untouched
    for bad in (
        ["+hpo.space.x={param:train.nope,type:float,low:0,high:1,log:false,step:null,choices:null}"],
        [
            (
                "+hpo.space.x={param:train.normalizer.method,type:categorical,low:null,high:null,log:false,"
                "step:null,choices:[robust_z]}"
            )
        ],
        ["+hpo.space.x={param:labels.entry_lag,type:int,low:1,high:2,log:false,step:null,choices:null}"],
        ["hpo.space.lr.low=0.1", "hpo.space.lr.high=0.01"],
        ["hpo.space.dropout.type=normal"],
    ):
        with pytest.raises(ConfigError):
            check_space(load_config(OVERRIDES + bad))


def test_multi_process_trainer_is_refused():
    with pytest.raises(ConfigError, match="one process"):
        Tuner(load_config([*OVERRIDES, "trainer=ddp"]))
