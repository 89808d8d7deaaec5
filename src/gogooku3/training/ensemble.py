"""A fold's network ensemble (ATFT-GAT-FAN or any network of `model.zoo`): `train.ensemble` members (seeds seed,
seed+1, ...), each trained by `fit.fit_member`, in this process or side by side in worker processes (`member_pool`),
and their fold-level model.

    fit_ensemble(plan) -> FoldFit: one model (an ensemble when k > 1, `zoo.ensemble_of`) + one MemberResult each

The members' mean is `ATFTEnsemble.average`, both for the model's forward pass and for the members' own predictions
made in worker processes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch
from lightning.pytorch.callbacks import Callback

from gogooku3.core.errors import ConfigError
from gogooku3.data.panel import PanelDataModule, PanelStore
from gogooku3.model.zoo import Network, ensemble_of
from gogooku3.training.fit import MemberResult, Plan, data_module, fit_member, new_module
from gogooku3.training.inference import predict_panel
from gogooku3.training.member_pool import (
    MemberJob,
    job_config,
    mean_predictions,
    resolve_workers,
    run_jobs,
    threads_per_worker,
)

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)


@dataclass
class FoldFit:
    """A fold's model (one member, or the ensemble of all) and its members' results."""

    plan: Plan
    model: Network
    members: list[MemberResult]
    dm: PanelDataModule
    predictions: dict[str, pl.DataFrame] = field(default_factory=dict)  # "val"/"test" made by the member workers

    def predict(self, kind: str) -> pl.DataFrame:
        """The model's predictions of the plan's validation (`kind="val"`) or test days."""
        if kind in self.predictions:
            return self.predictions[kind]
        days = self.dm.val_days if kind == "val" else self.dm.test_days
        return predict_panel(
            self.model, self.dm.panel, days, window=self.dm.window, valid=self.dm.window_ok, dataset=self.dm.dataset
        )

    @property
    def best_score(self) -> float | None:
        s = [m.best_score for m in self.members if m.best_score is not None]
        return float(np.mean(s)) if s else None

    @property
    def epochs(self) -> int | list[int]:
        e = [m.epochs for m in self.members]
        return e[0] if len(e) == 1 else e

    def feature_importance(self) -> torch.Tensor | None:
        """Mean variable-selection weight per feature over the members' validation batches."""
        imps = [m.feature_importance() for m in self.members]
        found = [i for i in imps if i is not None]
        return torch.stack(found).mean(0) if len(found) == len(imps) else None


def fit_ensemble(
    panel: PanelStore,
    plan: Plan,
    cfg: Settings,
    *,
    run_dir: Path,
    horizons: Sequence[int],
    ckpt_dir: Path | None = None,
    resume_dir: Path | None = None,
    callbacks: list[Callback] | None = None,
    pool: ProcessPoolExecutor | None = None,
    extra: Path | None = None,
    model_cfg: dict[str, Any] | None = None,
    log_name: str = "",
) -> FoldFit | None:
    """Train `train.ensemble` members (seeds seed, seed+1, ...) on one plan; with more than one, the model predicts
    their mean (`ATFTEnsemble`). Member m checkpoints into `ckpt_dir/member{m}` and resumes from
    `resume_dir/member{m}/last.ckpt` when that exists. None on a DDP rank other than 0.

    With `trainer.member_workers` > 1 (and no extra callbacks) the members train side by side in worker processes
    (`member_pool`; `pool`: processes already started by the caller). `extra`: a .npy of inputs appended to the
    panel's features ([D, N, S], `model.stack`), memory-mapped by every member. `model_cfg`: the network
    (`model.zoo.build_model`; None: the `model` group's ATFT-GAT-FAN); `log_name`: the loggers' sub-folder under
    RUN/logs (member m's is `log_name/member{m}`)."""
    k = cfg.train.ensemble
    if k < 1:
        raise ConfigError(f"train.ensemble={k}: needs at least one member")
    ckpt_dir = ckpt_dir or run_dir / "checkpoints"
    subs = [f"member{m}" if k > 1 else "" for m in range(k)]
    tags = ["/".join(t for t in (log_name, sub) if t) for sub in subs]
    resumes = [
        None if resume_dir is None or not (resume_dir / sub / "last.ckpt").exists() else resume_dir / sub / "last.ckpt"
        for sub in subs
    ]
    workers = resolve_workers(cfg, k, parallel_ok=not callbacks and panel.root is not None)
    predictions: dict[str, pl.DataFrame] = {}
    members: list[MemberResult] | list[MemberResult | None]
    if workers > 1:
        members, predictions = _fit_in_workers(
            panel,
            plan,
            cfg,
            workers,
            run_dir=run_dir,
            ckpt_dir=ckpt_dir,
            horizons=horizons,
            subs=subs,
            resumes=resumes,
            pool=pool,
            extra=extra,
            model_cfg=model_cfg,
            tags=tags,
        )
    else:
        arr = None if extra is None else np.load(extra, mmap_mode="r")
        members = [
            fit_member(
                panel,
                plan,
                cfg,
                run_dir=run_dir,
                ckpt_dir=ckpt_dir / sub,
                seed=cfg.train.seed + m,
                horizons=horizons,
                tag=tags[m],
                resume=resumes[m],
                callbacks=callbacks,
                extra=arr,
                model_cfg=model_cfg,
            )
            for m, sub in enumerate(subs)
        ]
    if members[-1] is None:
        return None
    done = [m for m in members if m is not None]
    dm = done[0].dm
    model = ensemble_of([m.module.model for m in done])
    if k > 1:
        log.info(
            "train: fold %d ensemble of %d members (val RankIC %s)",
            plan.index,
            k,
            ", ".join(f"{m.best_score:.4f}" for m in done if m.best_score is not None),
        )
    return FoldFit(plan, model.eval(), done, dm, predictions)


def _fit_in_workers(
    panel: PanelStore,
    plan: Plan,
    cfg: Settings,
    workers: int,
    *,
    run_dir: Path,
    ckpt_dir: Path,
    horizons: Sequence[int],
    subs: list[str],
    resumes: list[Path | None],
    pool: ProcessPoolExecutor | None = None,
    extra: Path | None = None,
    model_cfg: dict[str, Any] | None = None,
    tags: list[str] | None = None,
) -> tuple[list[MemberResult], dict[str, pl.DataFrame]]:
    """`fit_member` for every member in `workers` processes (`member_pool`); the members rebuilt here from their
    weights, and the fold's val/test predictions as the mean of theirs."""
    threads = threads_per_worker(cfg, workers)
    job_cfg = job_config(cfg, threads)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    jobs = [
        MemberJob(
            job_cfg,
            str(panel.root),
            plan,
            str(run_dir),
            str(ckpt_dir / sub),
            cfg.train.seed + m,
            [int(h) for h in horizons],
            sub if tags is None else tags[m],
            threads,
            level,
            None if resumes[m] is None else str(resumes[m]),
            None if extra is None else str(extra),
            None if model_cfg is None else dict(model_cfg),
        )
        for m, sub in enumerate(subs)
    ]
    records = run_jobs(jobs, workers, pool)
    arr = None if extra is None else np.load(extra, mmap_mode="r")
    members = []
    for rec in records:
        module = new_module(cfg, panel, horizons, arr, model_cfg)
        module.load_state_dict(torch.load(rec.weights_file, map_location="cpu", weights_only=True))
        members.append(
            MemberResult(
                module.eval(),
                data_module(panel, plan, cfg, rec.seed, arr, None if model_cfg is None else model_cfg["window"]),
                rec.seed,
                rec.epochs,
                rec.seconds,
                rec.best_score,
                rec.best_checkpoint,
                rec.weights,
                rec.throughput,
                rec.collapse_events,
                None if rec.importance is None else torch.tensor(rec.importance),
                dict(rec.predictions),
            )
        )
    kinds = set.intersection(*(set(r.predictions) for r in records))
    predictions = {
        kind: mean_predictions([pl.read_parquet(r.predictions[kind]) for r in records]) for kind in sorted(kinds)
    }
    return members, predictions
