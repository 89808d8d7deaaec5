"""Faults and hostile input (issue 11): one clear line for every bad value through the CLI, nothing written on
failure; kill-and-resume selects the same best epoch as an uninterrupted run; no crafted checkpoint or bundle runs
code; no secret on disk."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from typer.testing import CliRunner

from conftest import TINY_FIT, TINY_NET, TINY_SPLIT  # tests/ is on sys.path (rootdir conftest)
from gogooku3.cli import app
from gogooku3.config.compose import load_config
from gogooku3.core.io import write_parquet
from gogooku3.features.manifest import FeatureManifest, manifest_path
from gogooku3.pipelines import atft
from gogooku3.predictors import atft as atft_predictor
from gogooku3.training import checkpoints, ensemble

torch.set_num_threads(1)
FEATS = ["returns_1d", "f_signal", "f_noise1", "f_noise2", "f_noise3"]  # conftest.write_planted_dataset
TINY = [
    *TINY_NET,
    *TINY_SPLIT,
    *TINY_FIT,
    "baseline.enabled=false",
]
API_KEY = "jq-SECRET-4f9a1c7e"
DB_PASSWORD = "Pa55-SECRET-w0rd"
SECRETS = [
    *TINY,
    "data=jquants",
    f"data.api_key={API_KEY}",
    f"hpo.storage='postgresql://alice:{DB_PASSWORD}@db.example:5432/optuna'",
]
DAYS = ["2024-01-04", "2024-01-05", "2024-01-09"]


class _Boom:
    """Unpickling this creates `marker`: the side effect a crafted pickle would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def crafted_pickle(path: Path, marker: Path) -> Path:
    torch.save({"state_dict": {}, "payload": _Boom(marker)}, path)
    return path


def csv(root: Path, name: str, header: str, rows: list[str]) -> None:
    (root / name).write_text(header + "\n" + "".join(r + "\n" for r in rows))


@pytest.fixture(scope="module")
def env(tmp_path_factory, planted_dataset):
    """A project with the planted dataset, a finished run trained with secrets in its config, and user files."""
    root = tmp_path_factory.mktemp("faults")
    planted_dataset(root)
    csv(root, "semi.csv", "Date;Code;Close", [f"{d};1301;4117,9" for d in DAYS])
    csv(root, "inf.csv", "Date,Code,Close", [f"{d},1301,{v}" for d, v in zip(DAYS, ["10", "inf", "11"], strict=True)])
    csv(
        root,
        "neginf.csv",
        "Date,Code,Close",
        [f"{d},1301,{v}" for d, v in zip(DAYS, ["10", "-inf", "11"], strict=True)],
    )
    csv(root, "zero.csv", "Date,Code,Close", [f"{d},1301,{v}" for d, v in zip(DAYS, ["10", "0", "11"], strict=True)])
    csv(
        root,
        "text_x.csv",
        "Date,Code,Close,Signal",
        [f"{d},1301,10,{v}" for d, v in zip(DAYS, ["1.5", "n.a.", "2"], strict=True)],
    )
    (root / "a_folder.csv").mkdir()
    with contextlib.chdir(root):
        res = atft.CompleteATFTTrainingPipeline(load_config(SECRETS)).run()
    return root, Path(res["run_dir"]).name


def snapshot(root: Path) -> dict[str, tuple]:
    """Every file, folder and link under root with its size, mtime and link target."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, os.readlink(p) if p.is_symlink() else None)
    return out


# ---- preparations of a case's copy of the project --------------------------------------------------------------
def _bundle(root: Path) -> Path:
    return root / "runs" / "last" / "bundle"


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _edit_bundle_json(root: Path, edit) -> None:
    f = _bundle(root) / "bundle.json"
    meta = json.loads(f.read_text())
    edit(meta)
    f.write_text(json.dumps(meta))


def _last_ckpt(root: Path) -> Path:
    return next((root / "runs").glob("2*/checkpoints/last.ckpt"))


def _point_best_outside(root: Path) -> None:
    last = _last_ckpt(root)
    state = torch.load(last, map_location="cpu", weights_only=True)
    evil = str(root.parent / "elsewhere" / "evil.ckpt")
    for cs in state["callbacks"].values():
        if "best_k_models" in cs:
            cs["best_model_path"], cs["best_k_models"] = evil, {evil: torch.tensor(9.0)}
    torch.save(state, last)


def _other_manifest(root: Path) -> None:
    ds = root / "output" / "ml_dataset_latest.parquet"
    df = pl.read_parquet(ds).drop("f_noise3")
    write_parquet(df, ds)
    FeatureManifest.from_frame(df, {f: "price" for f in FEATS[:-1]}, [1, 5], 1).save(manifest_path(ds))


FILES = [
    "data=files",
    "data.columns.open=null",
    "data.columns.high=null",
    "data.columns.low=null",
    "data.columns.volume=null",
]
# (id, argv, prepare(root) or None, the error line after "error: " as a regex)
CASES = [
    ("max_epochs_text", ["train", *TINY, "train.max_epochs=abc"], None, r"train\.max_epochs: expected int, got 'abc'"),
    ("max_epochs_negative", ["train", *TINY, "train.max_epochs=-1"], None, r"train\.max_epochs: must be >= 1, got -1"),
    ("ensemble_negative", ["train", *TINY, "train.ensemble=-1"], None, r"train\.ensemble: must be >= 1, got -1"),
    ("lr_negative", ["train", *TINY, "train.lr=-1"], None, r"train\.lr: must be > 0, got -1"),
    ("window_zero", ["train", *TINY, "model.window=0"], None, r"model\.window: must be >= 1, got 0"),
    (
        "cost_bps_text",
        ["backtest", "--predictions", "runs/last/predictions_test.parquet", "portfolio.cost_bps=abc"],
        None,
        r"portfolio\.cost_bps: expected float, got 'abc'",
    ),
    (
        "log_level",
        ["train", *TINY, "log_level=LOUD"],
        None,
        r"log_level: must be one of DEBUG\|INFO\|WARNING\|ERROR\|CRITICAL, got 'LOUD'",
    ),
    ("dropout_range", ["train", *TINY, "model.dropout=1.5"], None, r"model\.dropout: must be in \[0, 1\), got 1\.5"),
    (
        "heads_divide_hidden",
        ["train", *TINY, "model.n_heads=5"],
        None,
        r"model\.n_heads: must be a divisor of model\.hidden \(16\), got 5",
    ),
    ("unknown_key", ["train", *TINY, "train.lrr=0.1"], None, r"train\.lrr: unknown key; did you mean 'train\.lr'\?"),
    (
        "unknown_option",
        ["train", "model=huge"],
        None,
        r"model=huge: no such option.*\(options of model: full, small[;)]",
    ),
    (
        "resume_no_such_run",
        ["train", *TINY, "train.resume=runs/nope"],
        None,
        r"train\.resume=runs/nope: no such run directory; give true .* or a run directory such as runs/<timestamp>",
    ),
    (
        "resume_nothing_to_resume",
        ["train", *TINY, "train.resume=true"],
        lambda r: shutil.rmtree(r / "runs"),
        r"train\.resume=true but no run under runs holds a checkpoints/\*\*/last\.ckpt",
    ),
    (
        "resume_other_manifest",
        ["train", *TINY, "train.resume=true"],
        _other_manifest,
        (
            r"train\.resume: runs/\S+ trained on a dataset with feature manifest \w+ \(5 features\), "
            r"output/ml_dataset_latest\.parquet has \w+ \(4\)"
        ),
    ),
    (
        "resume_other_model",
        ["train", *TINY, "train.resume=true", "model.hidden=32"],
        None,
        r"last\.ckpt: trained with hidden=16; the dataset and config now give hidden=32; resume needs the same",
    ),
    (
        "resume_crafted_pickle",
        ["train", *TINY, "train.resume=true"],
        lambda r: crafted_pickle(_last_ckpt(r), r / "PWNED"),
        (
            r"last\.ckpt: refused to load \(a checkpoint may hold only tensors and plain values; UnpicklingError: "
            r"Unsupported global: GLOBAL io\.open\); resume from another run or set train\.resume=false$"
        ),
    ),
    (
        "resume_truncated_checkpoint",
        ["train", *TINY, "train.resume=true"],
        lambda r: _truncate(_last_ckpt(r)),
        r"last\.ckpt: refused to load",
    ),
    (
        "resume_best_outside_run",
        ["train", *TINY, "train.resume=true"],
        _point_best_outside,
        r"last\.ckpt: names checkpoint \S+/elsewhere/evil\.ckpt outside its run's checkpoint folder",
    ),
    (
        "bundle_truncated",
        ["predict"],
        lambda r: _truncate(_bundle(r) / "model.safetensors"),
        r"runs/last/bundle/model\.safetensors: cannot read the weights \(SafetensorError: .*\); the file is truncated",
    ),
    (
        "bundle_weights_missing",
        ["predict"],
        lambda r: (_bundle(r) / "model.safetensors").unlink(),
        r"runs/last/bundle/model\.safetensors: missing",
    ),
    (
        "bundle_size_mismatch",
        ["predict"],
        lambda r: _edit_bundle_json(r, lambda m: m["model_config"].update(hidden=32)),
        r"model\.safetensors: weights do not fit bundle\.json's model: size mismatch for \S+: \[.*\] in the file",
    ),
    (
        "bundle_json_broken",
        ["predict"],
        lambda r: (_bundle(r) / "bundle.json").write_text("{"),
        r"runs/last/bundle/bundle\.json: not valid JSON",
    ),
    (
        "bundle_json_key_removed",
        ["predict"],
        lambda r: _edit_bundle_json(r, lambda m: m.pop("window")),
        r"bundle\.json: lacks window",
    ),
    (
        "bundle_crafted_pickle",
        ["predict"],
        lambda r: ((_bundle(r) / "model.safetensors").unlink(), crafted_pickle(_bundle(r) / "model.pt", r / "PWNED")),
        r"runs/last/bundle/model\.pt: cannot read the weights \(UnpicklingError: Unsupported global: GLOBAL io\.open\)",
    ),
    ("predict_no_run", ["predict", "--run", "runs/nope"], None, r"runs/nope: no model bundle"),
    ("predict_bad_date", ["predict", "--date", "2024-13-01"], None, r"--date '2024-13-01': not a YYYY-MM-DD date"),
    (
        "import_directory",
        ["data", "import", "a_folder.csv", *FILES],
        None,
        r"a_folder\.csv: is a directory, not a file",
    ),
    ("import_missing", ["data", "import", "nope.csv", *FILES], None, r"nope\.csv: file not found"),
    (
        "import_semicolon",
        ["data", "import", "semi.csv", *FILES],
        None,
        r"semi\.csv: the header is one column 'Date;Code;Close' .* set data\.separator=';'",
    ),
    (
        "import_decimal_comma",
        ["data", "import", "semi.csv", *FILES, "data.separator=';'"],
        None,
        (
            r"semi\.csv: column 'Close' has numbers whose comma or dot may be a decimal mark "
            r".* row 1 \(Close=4117,9\).* "
            r"set data\.decimal_comma=true"
        ),
    ),
    (
        "import_decimal_comma_with_comma_separator",
        ["data", "import", "semi.csv", *FILES, "data.decimal_comma=true"],
        None,
        r"data\.decimal_comma=true needs a field separator other than ','",
    ),
    (
        "import_inf",
        ["data", "import", "inf.csv", *FILES],
        None,
        r"inf\.csv: column 'Close' has non-finite values \(inf or -inf\) in 1 row\(s\): row 2 \(Close=inf\)",
    ),
    (
        "import_negative_inf",
        ["data", "import", "neginf.csv", *FILES],
        None,
        r"neginf\.csv: column 'Close' has non-finite values \(inf or -inf\) in 1 row\(s\): row 2 \(Close=-inf\)",
    ),
    (
        "import_zero_price",
        ["data", "import", "zero.csv", *FILES],
        None,
        r"zero\.csv: column 'Close' has non-positive prices in 1 row\(s\): row 2",
    ),
    (
        "import_text_in_user_column",
        ["data", "import", "text_x.csv", *FILES],
        None,
        r"text_x\.csv: column 'Signal' is numeric but has non-numeric values in 1 row\(s\): row 2 \(Signal=n\.a\.\)",
    ),
]


@pytest.mark.parametrize("argv,prepare,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(env, tmp_path, monkeypatch, argv, prepare, message):
    src, _ = env
    root = tmp_path / "project"
    shutil.copytree(src, root, symlinks=True)
    if prepare is not None:
        prepare(root)
    before = snapshot(root)
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, (result.stdout, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert snapshot(root) == before  # nothing written, nothing changed
    assert not (root / "PWNED").exists()  # no crafted pickle ran


def test_the_entry_point_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "gogooku3.cli", "train", "train.lr=-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr == "error: train.lr: must be > 0, got -1\n", proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_no_secret_in_any_file_a_run_writes(env):
    root, run = env
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files) and len(files) > 20
    for p in files:
        data = p.read_bytes()
        assert API_KEY.encode() not in data and DB_PASSWORD.encode() not in data, p
    cfg = (root / "runs" / run / "config.yaml").read_text()
    assert "api_key: '***'" in cfg and "postgresql://alice:***@db.example:5432/optuna" in cfg


def test_tune_summary_keeps_no_password(tmp_path, monkeypatch):
    import optuna

    from gogooku3.pipelines.tune import Tuner

    monkeypatch.chdir(tmp_path)
    url = f"postgresql://alice:{DB_PASSWORD}@db.example/optuna"
    tuner = Tuner(
        load_config(
            [
                f"hpo.storage='{url}'",
                "+hpo.space.x.param=train.lr",
                "+hpo.space.x.type=float",
                "+hpo.space.x.low=0.001",
                "+hpo.space.x.high=0.01",
                "+hpo.space.x.log=false",
                "+hpo.space.x.step=null",
                "+hpo.space.x.choices=null",
            ]
        )
    )
    tuner.horizons, tuner.plans, tuner.monitor, tuner.url = [1], [], "val_rank_ic_1d", url
    study = optuna.create_study(direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.005}, value=0.1, distributions={"x": optuna.distributions.FloatDistribution(0.001, 0.01)}
        )
    )
    out = tuner.write(study, 1.0)
    text = Path(out["summary_file"]).read_text() + Path(out["best_file"]).read_text()
    assert DB_PASSWORD not in text and "alice:***@db.example" in text


# ---- kill and resume -----------------------------------------------------------------------------------------
RESUME = [*TINY, "train.max_epochs=6", "train.patience=6", "train.lr=0.01", "train.ema_decay=null"]


class Killed(RuntimeError):
    """What kill -9 does to the run, as far as its files are concerned: training stops where it is."""


class KillAt(Callback):
    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise Killed(f"killed at epoch {self.epoch}, batch {self.batch}")


def _outcome(run_dir: Path) -> tuple[dict, pl.DataFrame]:
    fold = json.loads((run_dir / "metrics.json").read_text())["folds"][0]["predictors"]["atft"]
    return fold, pl.read_parquet(run_dir / "predictions" / "atft" / "test.parquet")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, planted_dataset):
    root = tmp_path_factory.mktemp("uninterrupted")
    planted_dataset(root)
    with contextlib.chdir(root):
        res = atft.CompleteATFTTrainingPipeline(load_config(RESUME)).run()
    fold, pred = _outcome(root / res["run_dir"])
    best_epoch = int(re.search(r"epoch(\d+)", Path(fold["best_checkpoint"][0]).name)[1])
    assert best_epoch + 2 < 6, "the planted run should peak early so that the kill can come after the best epoch"
    return fold, pred, best_epoch


@pytest.mark.parametrize("when", ["during_best_epoch", "after_best_epoch", "random_step"])
def test_kill_and_resume_selects_the_same_best_epoch_and_predictions(
    uninterrupted, tmp_path, monkeypatch, planted_dataset, when
):
    """Killed while the best epoch trains (it is trained again: same random draws), after it (its checkpoint from
    before the crash is kept and selected), or at a random step."""
    fold, pred, best_epoch = uninterrupted
    rng = random.Random(11)
    epoch, batch = {
        "during_best_epoch": (best_epoch, 3),
        "after_best_epoch": (best_epoch + 2, 3),
        "random_step": (rng.randrange(1, 6), rng.randrange(8)),
    }[when]
    planted_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    killer = functools.partial(ensemble.fit_ensemble, callbacks=[KillAt(epoch, batch)])
    monkeypatch.setattr(atft_predictor, "fit_ensemble", killer)
    with pytest.raises(Killed):
        atft.CompleteATFTTrainingPipeline(load_config(RESUME)).run()
    monkeypatch.setattr(atft_predictor, "fit_ensemble", ensemble.fit_ensemble)
    assert not (tmp_path / "runs" / "last").exists()  # a killed run never becomes runs/last
    killed = next((tmp_path / "runs").iterdir())
    before = snapshot(killed)

    res = atft.CompleteATFTTrainingPipeline(load_config([*RESUME, "train.resume=true"])).run()
    run = Path(res["run_dir"])
    got, got_pred = _outcome(run)
    assert (tmp_path / "runs" / "last").resolve() == run.resolve()
    assert Path(got["best_checkpoint"][0]).name == Path(fold["best_checkpoint"][0]).name  # same best epoch
    assert Path(got["best_checkpoint"][0]).parent == (run / "checkpoints").resolve()  # ... a copy in this run
    assert got["members_best_val_rank_ic"] == fold["members_best_val_rank_ic"]
    assert got["weights"][0]["kind"] == fold["weights"][0]["kind"] and got["epochs"] == fold["epochs"]
    assert got_pred.equals(pred)  # the same model, bit for bit
    assert snapshot(killed) == before  # the killed run is left as it was


def test_resume_ignores_checkpoints_a_crafted_state_names_elsewhere(env, tmp_path, monkeypatch):
    """A last.ckpt whose checkpoint state (folder included) points at a crafted pickle outside the run: the resume
    keeps only checkpoints inside the new run, the pickle is never loaded."""
    src, _ = env
    root = tmp_path / "project"
    shutil.copytree(src, root, symlinks=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    evil = crafted_pickle(outside / "epoch009-ric0.9999.ckpt", tmp_path / "PWNED")
    last = _last_ckpt(root)
    state = torch.load(last, map_location="cpu", weights_only=True)
    for cs in state["callbacks"].values():
        if "best_k_models" in cs:
            cs.update(
                dirpath=str(outside),
                best_model_path=str(evil),
                kth_best_model_path=str(evil),
                best_k_models={str(evil): torch.tensor(0.9999)},
                last_model_path=str(outside / "last.ckpt"),
            )
    torch.save(state, last)
    monkeypatch.chdir(root)
    res = atft.CompleteATFTTrainingPipeline(load_config([*TINY, "train.resume=true", "train.max_epochs=3"])).run()
    fold, _ = _outcome(Path(res["run_dir"]))
    assert not (tmp_path / "PWNED").exists()
    assert Path(fold["best_checkpoint"][0]).parent == (Path(res["run_dir"]) / "checkpoints").resolve()
    assert fold["members_best_val_rank_ic"][0] < 0.9999


def test_crafted_checkpoint_is_never_unpickled(tmp_path):
    import pickle

    from gogooku3.core.errors import TrainingError
    from gogooku3.training.callbacks import ema_weights

    p = crafted_pickle(tmp_path / "last.ckpt", tmp_path / "PWNED")
    with pytest.raises(pickle.UnpicklingError):
        ema_weights(p)
    with pytest.raises(TrainingError, match=r"refused to load"):
        checkpoints.read_checkpoint(p)
    with pytest.raises(TrainingError, match=r"refused to load"):
        checkpoints.check_resume_checkpoint(p)
    assert not (tmp_path / "PWNED").exists()
    torch.load(p, weights_only=False)  # the payload is real: unsafe loading runs it
    assert (tmp_path / "PWNED").exists()


def test_checkpoint_paths_stay_in_the_run(tmp_path):
    from gogooku3.core.errors import TrainingError

    run = tmp_path / "run" / "checkpoints"
    assert checkpoints.rebase_checkpoint_path("/old/ckpts/epoch001-ric0.5.ckpt", "/old/ckpts", run, "x") == str(
        run / "epoch001-ric0.5.ckpt"
    )
    for bad in ["/etc/epoch001.ckpt", "/old/ckpts/../x.ckpt", "/old/ckpts/not_a_checkpoint.py"]:
        with pytest.raises(TrainingError, match="outside its run's checkpoint folder"):
            checkpoints.rebase_checkpoint_path(bad, "/old/ckpts", run, "x")
    with pytest.raises(TrainingError, match="outside the run's checkpoint folder"):
        checkpoints.confined(tmp_path / "other" / "a.ckpt", run)
