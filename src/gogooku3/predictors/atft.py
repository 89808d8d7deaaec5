"""ATFT-GAT-FAN as a predictor: `train.ensemble` members per plan (`training.ensemble.fit_ensemble`, in worker
processes when `trainer.member_workers` allows), on the run's PanelStore, with LightGBM's out-of-fold predictions as
extra inputs when `train.stack.enabled` (`predictors.stack`).

Shared run state it reads from `Context.cache`: "panel" (the PanelStore), "member_pool" (worker processes started
while the panel converted, or None), "resume" (a checkpoint folder to resume from, or None).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError
from gogooku3.core.io import atomic_path, timestamp, write_json
from gogooku3.data.panel import PanelStore
from gogooku3.predictors.base import Context, Fitted, Predictor
from gogooku3.training.ensemble import FoldFit, fit_ensemble
from gogooku3.training.fit import Plan, model_config
from gogooku3.training.inference import predict_panel

log = logging.getLogger(__name__)


class ATFTPredictor(Predictor):
    """The deep model (`model`, `train`, `trainer` groups). The zoo's other networks (`predictors.nets`) train the
    same way through this class, with their own model config, panel, checkpoint and log folders."""

    deep: ClassVar[bool] = True  # trains a network (a DDP child trains only these)
    stacks: ClassVar[bool] = True  # reads LightGBM's stacked inputs when train.stack.enabled

    def __init__(self, ctx: Context, name: str):
        super().__init__(ctx, name)
        self.stack_provenance: dict[str, list] = {}

    @property
    def panel(self) -> PanelStore:
        return self.ctx.cache["panel"]

    def model_cfg(self) -> dict[str, Any]:
        """The network's complete model config (`model` group + the data's sizes; with the stacked inputs)."""
        return model_config(self.ctx.cfg, self.panel, self.ctx.horizons, len(self.stack_inputs()))

    def folder(self) -> str:
        """Its checkpoints' and logs' sub-folder under RUN/checkpoints and RUN/logs ("" for the product's network,
        the folders every earlier run used)."""
        return ""

    def stack_inputs(self) -> list[str]:
        from gogooku3.predictors.lightgbm import baseline_horizons
        from gogooku3.predictors.stack import stack_name

        return (
            [stack_name(h) for h in baseline_horizons(self.ctx.cfg, self.ctx.manifest)]
            if self.stacks and self.ctx.cfg.train.stack.enabled
            else []
        )

    def fit(self, plan: Plan, inputs: Mapping[str, Fitted]) -> ATFTFitted | None:
        ctx, cfg = self.ctx, self.ctx.cfg
        run_dir = ctx.run_dir
        assert run_dir is not None  # the deep model trains inside a run folder
        sub = "/".join(s for s in (self.folder(), f"fold{plan.index}" if len(ctx.plans) > 1 else "") if s)
        resume = ctx.cache.get("resume")
        extra = self._stack(plan) if self.stacks and cfg.train.stack.enabled else None
        fit = fit_ensemble(
            self.panel,
            plan,
            cfg,
            run_dir=run_dir,
            horizons=ctx.horizons,
            ckpt_dir=run_dir / "checkpoints" / sub,
            resume_dir=None if resume is None else resume / sub,
            pool=ctx.cache.get("member_pool"),
            extra=extra,
            model_cfg=self.model_cfg(),
            log_name=sub if self.folder() else "",
        )
        if fit is None:  # a DDP rank other than 0
            return None
        meta = {
            "manifest": ctx.manifest,
            "dataset_fingerprint": ctx.dataset_fingerprint,
            "min_window_frac": cfg.train.min_window_frac,
            "returns_col": cfg.train.returns_col,
        }
        return self.fitted(plan, fit, meta)

    def fitted(self, plan: Plan, fit: FoldFit, meta: dict[str, Any]) -> ATFTFitted:
        return ATFTFitted(self.name, self.ctx.horizons, plan, fit, self.panel, self.stack_inputs(), meta)

    def _stack(self, plan: Plan) -> Path:
        """The plan's stacked LightGBM inputs (`train.stack`) as `RUN/stack/fold{k}.npy` (+ their provenance)."""
        from gogooku3.predictors.stack import stack_for_plan

        ctx = self.ctx
        if not ctx.cfg.baseline.enabled:
            raise ConfigError("train.stack.enabled needs baseline.enabled (the stacked inputs are LightGBM's)")
        run_dir = ctx.run_dir
        assert run_dir is not None  # called from fit, inside the run folder
        t0 = time.perf_counter()
        arr, provenance = stack_for_plan(
            ctx.cfg, ctx.dataset, ctx.manifest, ctx.folds, plan, self.panel.dates, self.panel.codes
        )
        out = run_dir / "stack" / f"fold{plan.index}.npy"
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr)
        self.stack_provenance[str(plan.index)] = provenance
        write_json(run_dir / "stack" / "provenance.json", self.stack_provenance)
        log.info(
            "train: fold %d stacked LightGBM inputs %s in %.1f s (%d models)",
            plan.index,
            list(arr.shape),
            time.perf_counter() - t0,
            sum("skipped" not in p for p in provenance),
        )
        return out


class ATFTFitted(Fitted):
    """One plan's ensemble. Its val/test predictions come from the member workers when they made them."""

    holds_network = True
    plan: Plan  # always fitted on a plan

    def __init__(
        self,
        name: str,
        horizons: list[int],
        plan: Plan,
        fit: FoldFit,
        panel: PanelStore,
        stack_inputs: list[str],
        meta: dict[str, Any],
    ):
        super().__init__(name, horizons, plan)
        self.fit, self.panel, self.stack_inputs, self.meta = fit, panel, stack_inputs, meta

    @property
    def model(self):
        return self.fit.model

    def _predict(self, days: list[dt.date]) -> pl.DataFrame:
        for kind, span in (("val", self.plan.val), ("test", self.plan.test)):
            if days == sorted(span):
                return self.fit.predict(kind)
        dm = self.fit.dm
        return predict_panel(
            self.fit.model,
            self.panel,
            self.panel.day_index(days),
            window=dm.window,
            valid=dm.window_ok,
            dataset=dm.dataset,
        )

    def members_predict(self, kind: str) -> list[pl.DataFrame] | None:
        """Date, Code, pred_{h}d of each member on the plan's `kind` days; None when the members' own predictions
        were not kept (they are for members trained in worker processes)."""
        if not all(kind in m.predictions for m in self.fit.members):
            return None
        return [
            pl.read_parquet(m.predictions[kind]).select(C.DATE, C.CODE, *[C.pred(h) for h in self.horizons])
            for m in self.fit.members
        ]

    def facts(self) -> dict[str, Any]:
        f = self.fit
        return {
            "arch": str(getattr(f.model.cfg, "arch", "atft_gat_fan")),
            "epochs": [m.epochs for m in f.members],
            "best_val_rank_ic": f.best_score,
            "members_best_val_rank_ic": [m.best_score for m in f.members],
            "weights": [m.weights for m in f.members],
            "best_checkpoint": [m.best_checkpoint for m in f.members],
            "train_seconds": round(sum(m.seconds for m in f.members), 2),
            "throughput": [h for m in f.members for h in m.throughput],
            "collapse_events": [e for m in f.members for e in m.collapse_events],
            "n_params": self.fit.model.get_num_params(),
        }

    def feature_importance(self, names: list[str]) -> dict[str, float]:
        imp = self.fit.feature_importance()
        if imp is None:
            return {}
        return dict(
            sorted(zip([*names, *self.stack_inputs], imp.cpu().numpy().tolist(), strict=True), key=lambda kv: -kv[1])
        )

    def save(self, directory: Path, blend: dict | None = None, product: str | None = None) -> None:
        """The bundle `predict` serves (`predictors.bundle`): weights, manifest, normaliser, and the blend's spec."""
        from gogooku3.predictors.bundle import save_bundle

        meta = self.meta
        save_bundle(
            directory,
            self.fit.model,
            meta["manifest"],
            self.panel.normalizer,
            meta["dataset_fingerprint"],
            self.panel.sector_vocab,
            self.panel.segment_vocab,
            {
                "run_dir": str(directory.parent),
                "trained_at": timestamp(),
                "product": product or self.name,
                **({"stack": {"inputs": self.stack_inputs}} if self.stack_inputs else {}),
            },
            meta["min_window_frac"],
            meta["returns_col"],
            blend=blend,
        )
