"""Optuna hyper-parameter search over ATFT-GAT-FAN (`gogooku3 tune`).

TPE sampler + median pruning fed by a Lightning callback; the objective is the mean validation RankIC of the first
horizon over the shared splitter's last `hpo.folds` folds. Each trial trains (through the same
`training.ensemble.fit_ensemble` as `gogooku3 train`) on a fold's fit span and is scored on its inner validation slice
only (test days are never loaded into a trial). The dataset is loaded, converted to a
PanelStore and split once per worker; trials only change `model.*` / `train.*` keys. Several workers (on one or many
machines) share a study through `hpo.storage` (SQLite by default, any RDB URL).

Writes `<paths.output_dir>/optuna/<study>_best.yaml` (the best parameters as a Hydra `@package _global_` config whose
leaves are also ready-made overrides, see `best_overrides`), `<study>_trials.json` (every trial of the study) and
the experiment `<experiment_dir>/experiment/<study>.yaml` (experiment_dir: the first `--config-dir`, else
`<paths.output_dir>/optuna`, which `load_config` always searches): the best parameters plus every model / train /
labels / split / baseline / portfolio / seed value of the tuned config that differs from the packaged defaults, so
`gogooku3 train experiment=<study>` trains what the best trial trained (with the trial's budget overrides, written
in the file's header, it retrains that very trial).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import optuna
from lightning.pytorch.callbacks import Callback

from gogooku3.config.compose import (
    TUNED_SUBDIR,
    dotted_leaves,
    dotted_yaml,
    is_secret,
    load_config,
    load_yaml,
    path,
    redact,
    redact_text,
    redact_url,
    safe_name,
    select,
    to_dict,
    url_secrets,
    with_values,
)
from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, TrainingError
from gogooku3.core.io import timestamp, write_json, write_text
from gogooku3.core.progress import bar as progress_bar
from gogooku3.data.panel import clean_cache
from gogooku3.evaluation.compare import mean_rank_ic
from gogooku3.training.ensemble import fit_ensemble
from gogooku3.training.fit import make_plans

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)

TYPES = ("float", "int", "categorical")
# Keys fixed for a whole study: the panel, split and labels are built once per worker from them.
FIXED = (
    "train.normalizer",
    "train.returns_col",
    "train.cv",
    "train.resume",
    "train.force_convert",
    "train.seed",
    "model.name",
    "model.expected_params",
)


class PruningCallback(Callback):
    """Reports `monitor` to an Optuna trial after every validation epoch and raises `optuna.TrialPruned` when the
    pruner says so. Like `optuna_integration.PyTorchLightningPruningCallback` (which supports `lightning.pytorch`
    2.6), but the step is `step_offset + epoch`, so the folds of one trial report distinct steps (Optuna ignores a
    step reported twice)."""

    def __init__(self, trial: optuna.trial.BaseTrial, monitor: str, step_offset: int = 0):
        super().__init__()
        self.trial, self.monitor, self.step_offset = trial, monitor, step_offset
        self.reported: list[tuple[int, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            log.warning("pruning: metric %s was not logged; nothing reported", self.monitor)
            return
        step, value = self.step_offset + int(trainer.current_epoch), float(value)
        self.trial.report(value, step)
        self.reported.append((step, value))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({self.monitor}={value:.4f})")


# ---- search space -------------------------------------------------------------------------------------------
def check_space(cfg: Settings) -> dict[str, dict[str, Any]]:
    """`hpo.space` as plain dicts, each entry validated against the config (the key exists and may be tuned)."""
    space = {name: None if spec is None else dataclasses.asdict(spec) for name, spec in cfg.hpo.space.items()}
    out = {}
    for name, spec in space.items():
        if spec is None:
            continue
        where = f"hpo.space.{name}"
        if not isinstance(spec, dict) or "param" not in spec or spec.get("type") not in TYPES:
            raise ConfigError(f"{where}: needs `param` (a dotted config key) and `type` in {'|'.join(TYPES)}")
        key = str(spec["param"])
        if not key.startswith(("model.", "train.")) or key.startswith(FIXED):
            raise ConfigError(
                f"{where}: '{key}' cannot be tuned (only model.* and train.* keys outside {', '.join(FIXED)})"
            )
        if select(cfg, key, default="__missing__") == "__missing__":
            raise ConfigError(f"{where}: config key '{key}' does not exist")
        if spec["type"] == "categorical":
            if not spec["choices"]:
                raise ConfigError(f"{where}: categorical needs a non-empty `choices` list")
        elif spec["low"] is None or spec["high"] is None or not float(spec["low"]) <= float(spec["high"]):
            raise ConfigError(f"{where}: needs numeric `low` <= `high`")
        elif spec["log"] and float(spec["low"]) <= 0:
            raise ConfigError(f"{where}: log scale needs low > 0")
        out[name] = spec
    if not out:
        raise ConfigError("hpo.space: no hyper-parameter to search")
    return out


def suggest(trial: optuna.trial.BaseTrial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sample every entry of the space: {config key: value}."""
    params: dict[str, Any] = {}
    for name, s in space.items():
        if s["type"] == "float":
            kw = {"step": float(s["step"])} if s["step"] else {"log": bool(s["log"])}
            v = trial.suggest_float(name, float(s["low"]), float(s["high"]), **kw)
        elif s["type"] == "int":
            v = trial.suggest_int(name, int(s["low"]), int(s["high"]), step=int(s["step"] or 1), log=bool(s["log"]))
        else:
            v = trial.suggest_categorical(name, list(s["choices"]))
        params[str(s["param"])] = v
    return params


def trial_budget(cfg: Settings) -> dict[str, Any]:
    """The `train.*` values a trial runs with (from `hpo`): epochs, patience, one member, one checkpoint."""
    hc = cfg.hpo
    epochs = hc.max_epochs
    budget: dict[str, Any] = {
        "train.max_epochs": epochs,
        "train.min_epochs": min(cfg.train.min_epochs, epochs),
        "train.patience": hc.patience,
        "train.save_top_k": 1,
        "train.resume": False,
        "train.ensemble": 1,
    }  # a trial scores one model; the ensemble of the final run averages such models
    if hc.limit_train_batches is not None:
        budget["train.limit_train_batches"] = hc.limit_train_batches
    return budget


def trial_config(cfg: Settings, params: dict[str, Any]) -> Settings:
    """A copy of `cfg` with the trial budget of `hpo` and the sampled parameters applied (converted and checked
    as `load_config` checks; `cfg` is left as it is)."""
    return with_values(cfg, {**trial_budget(cfg), **params})


# ---- the best-parameters file -------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def to_overrides(params: dict[str, Any]) -> list[str]:
    """{dotted key: value} -> Hydra override strings `key=value` (sorted)."""
    return [f"{k}={_fmt(v)}" for k, v in sorted(params.items())]


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def best_overrides(best_file: str | Path) -> list[str]:
    """The overrides stored in a `<study>_best.yaml`, ready for `load_config(base + best_overrides(f))`."""
    p = Path(best_file)
    if not p.exists():
        raise ConfigError(f"{p}: best-parameters file not found; run `gogooku3 tune` first")
    return to_overrides(_flatten(load_yaml(p)))


# Groups whose values an experiment file carries: what `train` reads besides paths, data sources and hardware.
EXPERIMENT_GROUPS = ("labels", "split", "baseline", "model", "train", "portfolio")
STUDY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def experiment_params(cfg: Settings, params: dict[str, Any]) -> dict[str, Any]:
    """{dotted key: value}: the values of `cfg` in EXPERIMENT_GROUPS (and `seed`) that differ from the packaged
    default config, with `params` (the best trial's) on top."""
    default = dataclasses.asdict(load_config([]))
    current = dataclasses.asdict(cfg)
    keep = {g: current.get(g) for g in (*EXPERIMENT_GROUPS, "seed")}
    base = dotted_leaves({g: default.get(g) for g in keep})
    diff = {k: v for k, v in dotted_leaves(keep).items() if k not in base or base[k] != v}
    return {**diff, **params}


def experiment_yaml(values: dict[str, Any], header: list[str]) -> str:
    """An experiment file (`# @package _global_`) holding `values` ({dotted key: value})."""
    return "# @package _global_\n" + "".join(f"# {h}\n" for h in header) + dotted_yaml(values, merge=False)


def best_yaml(params: dict[str, Any], header: list[str]) -> str:
    return "# @package _global_\n" + "".join(f"# {h}\n" for h in header) + dotted_yaml(params)


# ---- storage / study ----------------------------------------------------------------------------------------
def storage_url(cfg: Settings) -> str:
    if cfg.hpo.storage:
        return cfg.hpo.storage
    db = (path(cfg, "paths.output_dir") / "optuna" / f"{safe_name(cfg.hpo.study_name)}.db").resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def mask_url(url: str) -> str:
    """The storage URL with its password and secret query parameters blanked (it goes into logs and the summary):
    `config.redact_url`."""
    return redact_url(url)


def _reason(e: BaseException, url: str) -> str:
    """`Type: first line` of a storage error, with the URL's credentials blanked wherever the message quotes them."""
    return redact_text(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}", url_secrets(url))


def _storage(url: str, attempts: int = 3) -> optuna.storages.BaseStorage:
    """The study's storage. Workers that open an empty database at the same moment race to create its schema (the
    loser gets an IntegrityError on `alembic_version`): the schema then exists, so a retry opens it."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    kwargs: dict[str, Any] = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
    for attempt in range(1, attempts + 1):
        try:  # sqlite: several local workers wait on the file lock instead of failing at once
            return optuna.storages.RDBStorage(url, **kwargs)
        except (IntegrityError, OperationalError) as e:
            if attempt == attempts:
                raise ConfigError(
                    f"hpo.storage: cannot open {mask_url(url)} after {attempts} attempts ({_reason(e, url)})"
                ) from e
            log.info("tune: %s was being created by another worker (%s); retrying", mask_url(url), type(e).__name__)
            time.sleep(0.5 * attempt)
        except Exception as e:  # bad URL, missing driver, unreachable server
            raise ConfigError(f"hpo.storage: cannot open {mask_url(url)} ({_reason(e, url)})") from e
    raise AssertionError("unreachable")


def _check_single_process(cfg: Settings) -> None:
    tr = cfg.trainer
    devices = tr.devices
    multi = (
        "ddp" in tr.strategy.lower()
        or tr.num_nodes > 1
        or str(devices) == "-1"
        or (isinstance(devices, (int, str)) and str(devices).isdigit() and int(devices) > 1)
        or (isinstance(devices, list) and len(devices) > 1)
    )
    if multi:
        raise ConfigError(
            "gogooku3 tune runs each trial in one process (trainer=cpu or trainer=gpu with devices=1); "
            "scale out by starting several `gogooku3 tune` workers that share hpo.storage"
        )


# ---- the search ---------------------------------------------------------------------------------------------
class Tuner:
    """Loads, converts and splits once, then runs Optuna trials through `training.ensemble.fit_ensemble` (the path
    of `gogooku3 train`), each scored on its plans' validation days by `evaluation.compare.mean_rank_ic`."""

    def __init__(self, cfg: Settings, experiment_dir: str | Path | None = None):
        _check_single_process(cfg)
        self.cfg = cfg
        self.hc = cfg.hpo
        self.space = check_space(cfg)
        if self.hc.folds < 1 or self.hc.max_epochs < 1:
            raise ConfigError("hpo.folds and hpo.max_epochs must be >= 1")
        self.out_dir = path(cfg, "paths.output_dir") / TUNED_SUBDIR
        # the study's name in the storage and in file names: read from an environment variable (a secret), it
        # is replaced by "redacted-<hash>"
        secret = is_secret(self.hc.study_name)
        if not secret and not STUDY_NAME.fullmatch(self.hc.study_name):
            raise ConfigError(
                f"hpo.study_name={self.hc.study_name!r}: use letters, digits, '_', '-' and '.' (it names "
                f"files and the experiment `experiment=<study>`)"
            )
        self.study_name = safe_name(self.hc.study_name, secret=secret)
        if secret:
            log.warning("tune: hpo.study_name was read from the environment; the study is named %s", self.study_name)
        self.experiment_dir = Path(experiment_dir) if experiment_dir is not None else self.out_dir
        self.step_base = self.hc.max_epochs

    def prepare(self) -> None:
        from gogooku3.data.dataset import load_dataset, load_panel

        dataset, manifest, ref = load_dataset(self.cfg)
        self.horizons = list(manifest.horizons)
        self.monitor = C.monitor(self.horizons[0])
        self.panel = load_panel(self.cfg, dataset, manifest, ref)
        clean_cache(path(self.cfg, "paths.cache_dir"), self.cfg.train.panel_cache_keep, [self.panel.fingerprint])
        _, plans = make_plans(
            self.panel.dates,
            self.cfg.split,
            self.horizons,
            manifest.entry_lag,
            self.hc.folds,
            manifest.max_lookback,
            self.cfg.model.window,
        )
        # A trial sees fit + validation days only: the test block of each fold is dropped here.
        self.plans = [p.without_test() for p in plans]
        for p in self.plans:
            if not p.val:
                raise ConfigError(f"fold {p.index}: empty validation slice; raise split.val_days")
            if set(p.fold.test_dates) & (set(p.fit) | set(p.val)):
                raise TrainingError(f"fold {p.index}: fit/validation days overlap the test block")

    def objective(self, trial: optuna.trial.Trial) -> float:
        params = suggest(trial, self.space)
        log.info("tune: trial %d %s", trial.number, " ".join(to_overrides(params)))
        return self.evaluate(trial_config(self.cfg, params), trial)

    def evaluate(self, tcfg: Settings, trial: optuna.trial.Trial | None = None) -> float:
        """Train `tcfg` on every plan and return the mean validation RankIC of the first horizon (the objective);
        with `trial`, report each epoch to its pruner and record the folds as user attributes."""
        name = f"trial_{trial.number:04d}" if trial is not None else f"rerun_{timestamp()}"
        trial_dir = self.out_dir / self.study_name / name
        h0 = self.horizons[0]
        scores = []
        try:
            for k, plan in enumerate(self.plans):
                cbs: list[Callback] = (
                    [] if trial is None else [PruningCallback(trial, self.monitor, step_offset=k * self.step_base)]
                )
                fold_dir = trial_dir / f"fold{plan.index}"  # Lightning logs + checkpoints
                fit = fit_ensemble(self.panel, plan, tcfg, run_dir=fold_dir, horizons=self.horizons, callbacks=cbs)
                assert fit is not None  # a trial trains in one process (_check_single_process)
                score, n_days = mean_rank_ic(fit.predict("val"), [h0]).get(h0, (float("nan"), 0))
                if not math.isfinite(score):
                    raise TrainingError(
                        f"{name}, fold {plan.index}: no validation day "
                        f"could be scored ({C.target(h0)}); raise split.val_days"
                    )
                if trial is not None:
                    trial.set_user_attr(
                        f"fold{plan.index}",
                        {
                            "val_rank_ic": score,
                            "val_days_scored": n_days,
                            "epochs": fit.epochs,
                            "best_logged": fit.best_score,
                        },
                    )
                scores.append(score)
        finally:
            if not self.hc.keep_trial_dirs:
                shutil.rmtree(trial_dir, ignore_errors=True)
                with contextlib.suppress(OSError):  # the study folder goes once no trial of any worker uses it
                    trial_dir.parent.rmdir()
        return float(np.mean(scores))

    def study(self) -> optuna.Study:
        hc = self.hc
        sampler = optuna.samplers.TPESampler(seed=hc.seed, n_startup_trials=hc.n_startup_trials)
        pruner = (
            optuna.pruners.MedianPruner(
                n_startup_trials=hc.pruner.n_startup_trials, n_warmup_steps=hc.pruner.n_warmup_steps
            )
            if hc.pruner.enabled
            else optuna.pruners.NopPruner()
        )
        self.url = storage_url(self.cfg)
        return optuna.create_study(
            study_name=self.study_name,
            storage=_storage(self.url),
            sampler=sampler,
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )

    def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        self.prepare()
        study = self.study()
        hc = self.hc
        callbacks = []
        if hc.max_total_trials:
            callbacks.append(
                optuna.study.MaxTrialsCallback(
                    hc.max_total_trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                )
            )
        log.info(
            "tune: study %s on %s, %d trial(s), %d fold(s), objective mean %s over validation slices",
            self.study_name,
            mask_url(self.url),
            hc.n_trials,
            len(self.plans),
            self.monitor,
        )
        with progress_bar() as bar:  # the trials; each trial's epochs show Lightning's (rich) bar inside it
            task = bar.add_task(f"tune {self.study_name}", total=hc.n_trials)
            study.optimize(
                self.objective,
                n_trials=hc.n_trials,
                timeout=hc.timeout_s,
                catch=(TrainingError,),
                callbacks=[*callbacks, lambda *_: bar.advance(task)],
                gc_after_trial=True,
            )
        return self.write(study, time.perf_counter() - t0)

    def write(self, study: optuna.Study, seconds: float) -> dict[str, Any]:
        trials = study.get_trials(deepcopy=False)
        states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState}
        complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = max(complete, key=lambda t: cast(float, t.value)) if complete else None  # complete: has a value
        params = {} if best is None else {self.space[n]["param"]: v for n, v in best.params.items() if n in self.space}
        summary = {
            "study_name": self.study_name,
            "storage": mask_url(self.url),
            "direction": "maximize",
            "objective": f"mean over folds of the validation daily RankIC of {C.pred(self.horizons[0])} "
            f"(test days never used)",
            "folds": [
                {
                    "fold": p.index,
                    "fit_range": [str(p.fit[0]), str(p.fit[-1])],
                    "val_range": [str(p.val[0]), str(p.val[-1])],
                    "test_range_not_used": [str(p.fold.test_dates[0]), str(p.fold.test_dates[-1])],
                }
                for p in self.plans
            ],
            "space": self.space,
            "budget": {
                "max_epochs": self.hc.max_epochs,
                "patience": self.hc.patience,
                "limit_train_batches": self.hc.limit_train_batches,
            },
            "n_trials": len(trials),
            "states": states,
            "seconds_this_worker": round(seconds, 2),
            "best": None
            if best is None
            else {"number": best.number, "value": best.value, "params": params, "overrides": to_overrides(params)},
            "trials": [
                {
                    "number": t.number,
                    "state": t.state.name,
                    "value": t.value,
                    "params": t.params,
                    "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                    "user_attrs": t.user_attrs,
                    "start": t.datetime_start,
                    "complete": t.datetime_complete,
                    "seconds": (t.duration.total_seconds() if t.duration is not None else None),
                }
                for t in trials
            ],
            "config": {"model": to_dict(self.cfg.model), "train": to_dict(self.cfg.train), "hpo": to_dict(self.hc)},
            "written_at": timestamp(),
        }
        summary_file = write_json(self.out_dir / f"{self.study_name}_trials.json", redact(summary))
        if best is None:
            raise TrainingError(f"study {self.study_name}: no completed trial ({states}); see {summary_file}")
        header = [
            f"Optuna study {self.study_name}: best trial {best.number}, mean validation "
            f"{self.monitor} = {best.value:.5f} ({len(complete)} completed of {len(trials)}), {timestamp()}",
            "As overrides: gogooku3 train " + " ".join(to_overrides(params)),
            "Or copy this file to conf/experiment/<name>.yaml (package _global_).",
        ]
        best_file = write_text(self.out_dir / f"{self.study_name}_best.yaml", best_yaml(params, header))
        exp = experiment_params(self.cfg, params)
        budget = " ".join(to_overrides({**trial_budget(self.cfg), "train.cv.folds": self.hc.folds}))
        where = (
            "" if self.experiment_dir.resolve() == self.out_dir.resolve() else f"--config-dir {self.experiment_dir} "
        )
        exp_header = [
            f"Optuna study {self.study_name}: best trial {best.number}, mean validation {self.monitor} = "
            f"{best.value:.5f} ({len(complete)} completed of {len(trials)}), {timestamp()}",
            f"Train with it:        gogooku3 {where}train experiment={self.study_name}",
            f"Rerun the trial:      gogooku3 {where}train experiment={self.study_name} {budget}",
            "Below: the best trial's parameters and every value of the tuned config that differs from the",
            "packaged defaults (groups " + ", ".join(EXPERIMENT_GROUPS) + ", seed).",
        ]
        exp_file = write_text(
            self.experiment_dir / "experiment" / f"{self.study_name}.yaml", experiment_yaml(exp, exp_header)
        )
        log.info(
            "tune: best trial %d, %s %.4f -> %s; train it with `gogooku3 %strain experiment=%s` (%s)",
            best.number,
            self.monitor,
            best.value,
            best_file,
            where,
            self.study_name,
            exp_file,
        )
        return {
            "study_name": self.study_name,
            "storage": mask_url(self.url),
            "best_value": best.value,
            "best_trial": best.number,
            "best_params": params,
            "best_overrides": to_overrides(params),
            "best_file": str(best_file),
            "summary_file": str(summary_file),
            "states": states,
            "experiment_file": str(exp_file),
            "experiment_values": exp,
        }


def tune(cfg: Settings, experiment_dir: str | Path | None = None) -> dict[str, Any]:
    """Run (or join) the Optuna study described by `cfg.hpo`; returns the best parameters and file paths. The
    best trial is written as `<experiment_dir or <paths.output_dir>/optuna>/experiment/<study>.yaml`."""
    return Tuner(cfg, experiment_dir).run()
