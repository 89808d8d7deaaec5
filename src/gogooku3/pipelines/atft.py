"""`gogooku3 train`: load -> PanelStore -> plans (shared splitter) -> every predictor of `predictors.fit` fitted on
each plan (`predictors.base`) -> their val/test predictions -> one comparison on identical rows
(`evaluation.compare`) -> the product predictor's bundle and `RUN/metrics.json` (`results.TrainResult`).

Only orchestration lives here: how a predictor trains and predicts is its own file under `predictors/`, how
predictions are scored is `evaluation.compare`.

    RUN/predictions/<name>/{val,test}.parquet   Date, Code, pred_{h}d, target_{h}d (the dataset's labels)
    RUN/comparison.json                         the test comparison (also in metrics.json)
    RUN/bundle/                                 the product predictor, for `gogooku3 predict`
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, cast

import polars as pl
import torch
from lightning.pytorch.utilities import rank_zero_only

from gogooku3.config.compose import path, to_yaml
from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError
from gogooku3.core.io import (
    check_last_link,
    new_run_dir,
    peak_rss_mb,
    point_last,
    timestamp,
    write_json,
    write_parquet,
    write_text,
)
from gogooku3.core.provenance import recorded_run
from gogooku3.core.runs import check_resume, resume_dir, shown
from gogooku3.core.scalars import as_float
from gogooku3.data.dataset import load_dataset, load_panel
from gogooku3.data.panel import PanelStore, clean_cache
from gogooku3.evaluation.compare import Comparison, compare, mean_rank_ic
from gogooku3.evaluation.results import BaselineRef, FoldResult, ModelInfo, TrainResult
from gogooku3.evaluation.tracking import log_training
from gogooku3.model.zoo import n_members
from gogooku3.predictors import DEEP
from gogooku3.predictors.atft import ATFTFitted, ATFTPredictor
from gogooku3.predictors.base import Context, Fitted, build_predictors, targets_frame
from gogooku3.predictors.lgbm import LightGBMFitted
from gogooku3.training.checkpoints import adopt_checkpoints, check_resume_model
from gogooku3.training.fit import make_plans
from gogooku3.training.member_pool import resolve_workers, start_pool

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)


def input_window(cfg: Settings) -> int:
    """The longest input window of the networks `predictors.fit` names (the zoo entries with a `window`, and the
    model group's): what purged K-fold purges after a test block."""
    zoo = cfg.predictors.zoo
    return max([cfg.model.window, *[zoo[n]["window"] for n in cfg.predictors.fit if "window" in zoo.get(n, {})]])


class CompleteATFTTrainingPipeline:
    def __init__(self, cfg: Settings):
        self.cfg = cfg
        self.durations: dict[str, float] = {}
        # DDP children re-run this pipeline; only rank 0 writes outputs. Lightning sets `rank` on the function at
        # import; its stub does not declare the attribute.
        self.is_main = rank_zero_only.rank == 0  # type: ignore[attr-defined]

    def _step(self, name: str, t0: float) -> None:
        self.durations[name] = round(time.perf_counter() - t0, 3)
        log.info("train: %s done in %.1fs", name, self.durations[name])

    def run(self) -> dict:
        with recorded_run(self.cfg) as self.record:  # RUN/run.log from the start + RUN/provenance.json
            return self._start()

    def _start(self) -> dict:
        t_all = time.perf_counter()
        pc = self.cfg.predictors
        if pc.product not in pc.fit or DEEP not in pc.fit:  # every servable product holds the network
            raise ConfigError(
                f"predictors.fit ({', '.join(pc.fit)}) must include {DEEP} and predictors.product ({pc.product})"
            )
        if self.is_main:  # runs/last must be replaceable at the end: refuse now, not after the training
            check_last_link(path(self.cfg, "paths.runs_dir"))
        resume = resume_dir(self.cfg)
        t0 = time.perf_counter()
        self.dataset, self.manifest, self.ref = load_dataset(self.cfg, ddp_child=not self.is_main)
        resumed = {} if resume is None else check_resume(resume, self.ref)
        workers = resolve_workers(self.cfg, self.cfg.train.ensemble, parallel_ok=True)
        pool = start_pool(workers) if workers > 1 else None  # its processes import while the panel converts
        try:
            return self._run(t_all, t0, resume, resumed, pool)
        finally:
            if pool is not None:
                pool.shutdown()

    def _run(self, t_all: float, t0: float, resume: Path | None, resumed: dict, pool) -> dict:
        cfg = self.cfg
        self.horizons = list(self.manifest.horizons)
        self.panel = load_panel(cfg, self.dataset, self.manifest, self.ref)
        self.folds, self.plans = make_plans(
            self.panel.dates,
            cfg.split,
            self.horizons,
            self.manifest.entry_lag,
            cfg.train.cv.folds,
            self.manifest.max_lookback,
            input_window(cfg),
        )
        ctx = self.ctx = Context(
            cfg,
            self.dataset,
            self.manifest,
            self.ref.fingerprint,
            self.folds,
            self.plans,
            None,
            {"panel": self.panel, "member_pool": pool, "dataset_ref": self.ref},
        )
        self.predictors = build_predictors(ctx)
        deep = {n: cast(ATFTPredictor, p) for n, p in self.predictors.items() if getattr(p, "deep", False)}
        model_cfgs = {n: p.model_cfg() for n, p in deep.items()}  # builds each network's panel (raw inputs: once)
        folders = {p.folder(): n for n, p in deep.items() if p.folder()}
        for sub, state in resumed.items():
            head = sub.split("/")[0]
            name = folders.get(head, DEEP if head == "." or head.startswith(("fold", "member")) else None)
            if name is not None:  # a network this run does not fit: its checkpoints are never read
                check_resume_model(state, model_cfgs[name], shown(resume / sub / "last.ckpt"))
        self._step("load_and_convert", t0)
        runs = path(cfg, "paths.runs_dir")  # created only once every check has passed
        self.run_dir = ctx.run_dir = new_run_dir(runs) if self.is_main else runs / ".ddp_worker"
        if self.is_main:
            self.record.attach(self.run_dir)
            write_text(self.run_dir / "config.yaml", to_yaml(cfg))
            write_json(self.run_dir / "dataset.json", asdict(self.ref))
            self._optional(
                "cache clean",
                clean_cache,
                path(cfg, "paths.cache_dir"),
                cfg.train.panel_cache_keep,
                list(dict.fromkeys(p.fingerprint for p in ctx.cache.values() if isinstance(p, PanelStore))),
            )
            if resume is not None:  # the earlier checkpoints join this run: its best epoch is chosen among them too
                adopt_checkpoints(resume, self.run_dir / "checkpoints")
                resume = self.run_dir / "checkpoints"
        ctx.cache["resume"] = resume
        t0 = time.perf_counter()
        fitted: dict[str, dict[int, Fitted]] = {n: {} for n in self.predictors}
        for plan in self.plans:
            inputs: dict[str, Fitted] = {}
            for name, p in self.predictors.items():
                if not self.is_main and name not in deep:
                    continue  # DDP children only train the networks with rank 0
                tp = time.perf_counter()
                f = p.fit(plan, inputs)
                if f is not None:
                    inputs[name] = fitted[name][plan.index] = f
                    self.durations[f"fit_{name}_fold{plan.index}"] = round(time.perf_counter() - tp, 3)
        self._step("train", t0)
        if pool is not None:
            pool.shutdown()  # the members are trained; free the worker processes before the evaluation
        if not self.is_main:
            return {}
        result = self.finish({n: f for n, f in fitted.items() if f}, t_all)
        point_last(runs, self.run_dir)  # only a run that finished becomes runs/last
        # optional extras only once the bundle and the results are saved and published: a failure loses nothing
        self._optional("MLflow tracking", log_training, self.cfg, self.run_dir, result.to_dict())
        return {"status": "ok", "run_dir": str(self.run_dir), "result": result}

    def _optional(self, what: str, fn, *args) -> None:
        """Run an optional extra (cache cleaning, tracking); its failure is a warning, never the run's end."""
        try:
            fn(*args)
        except Exception as e:  # anything an optional extra raises: the run's own outputs are already safe
            log.warning("train: %s failed (%s: %s); the run itself is complete", what, type(e).__name__, e)

    # ---- predictions, comparison, bundle -------------------------------------------------------------------------
    def predictions(
        self, fitted: dict[str, dict[int, Fitted]]
    ) -> tuple[dict[str, pl.DataFrame], dict[str, pl.DataFrame]]:
        """Every predictor's val and test predictions over the plans, with the dataset's labels, written to
        RUN/predictions/<name>/{val,test}.parquet."""
        plans = {p.index: p for p in self.plans}
        val_days = [d for p in self.plans for d in p.val]
        test_days = [d for p in self.plans for d in p.test]
        labels = {"val": targets_frame(self.ctx, val_days), "test": targets_frame(self.ctx, test_days)}
        out: dict[str, dict[str, pl.DataFrame]] = {"val": {}, "test": {}}
        for name, folds in fitted.items():
            for kind in ("val", "test"):
                parts = [f.predict(getattr(plans[k], kind)) for k, f in folds.items() if getattr(plans[k], kind)]
                if not parts:
                    continue
                frame = pl.concat(parts).join(labels[kind], on=[C.DATE, C.CODE], how="left").sort(C.DATE, C.CODE)
                write_parquet(frame, self.run_dir / "predictions" / name / f"{kind}.parquet")
                out[kind][name] = frame
        return out["val"], out["test"]

    def finish(self, fitted: dict[str, dict[int, Fitted]], t_all: float) -> TrainResult:
        t0 = time.perf_counter()
        hs, rd, pc = self.horizons, self.run_dir, self.cfg.predictors
        product = pc.product
        if product not in fitted:
            log.warning("train: the product predictor %s was not fitted here; %s serves instead", product, DEEP)
            product = DEEP
        val, test = self.predictions(fitted)
        self._step("predict", t0)
        t0 = time.perf_counter()
        fold_days = {p.index: p.test for p in self.plans}
        comp, aligned = compare(test, hs, fold_days, product=product, reference=pc.reference)
        comp_val, _ = compare(val, hs, {p.index: p.val for p in self.plans}, product=product, reference=pc.reference)
        comp.save(rd / "comparison.json")
        for name, r in comp.rows["frames"].items():
            if r["kept"] < r["rows"]:
                log.info(
                    "train: %s test rows %d -> %d on the common rows (%d without a prediction, absent in %s)",
                    name,
                    r["rows"],
                    r["kept"],
                    r["excluded_null_prediction"],
                    r["excluded_absent_in"],
                )
        folds = [self._fold_result(plan, fitted, aligned.get(DEEP)) for plan in self.plans]
        last = self.plans[-1].index
        deep = cast("ATFTFitted | None", fitted.get(DEEP, {}).get(last))  # the deep model's entry fits an ATFTFitted
        if deep is not None:
            write_json(rd / "variable_importance.json", deep.feature_importance(list(self.manifest.names)))
        fitted[product][last].save(rd / "bundle")
        self._step("evaluate_and_save", t0)
        thr = [h for f in folds for h in (f.predictors.get(DEEP) or {}).get("throughput", [])]
        model = None if deep is None else deep.model
        members = 1 if model is None else n_members(model)
        result = TrainResult(
            run_dir=str(rd),
            created=timestamp(),
            dataset=self.ref,
            baseline=self._baseline_ref(fitted),
            model=None
            if model is None
            else ModelInfo(
                self.cfg.model.name,
                model.get_num_params(),
                members,
                model.get_num_params() // members,
                self.cfg.model.expected_params,
                model.estimate_flops_per_sample(),
            ),
            horizons=hs,
            product=product,
            predictors=list(fitted),
            folds=folds,
            comparison=comp.to_dict(),
            comparison_val=comp_val.to_dict(),
            samples_per_sec=sum(h["samples_per_sec"] for h in thr) / len(thr) if thr else None,
            mfu=sum(h["mfu"] for h in thr) / len(thr) if thr else None,
            collapse={} if DEEP not in test else {str(h): as_float(test[DEEP][C.pred(h)].std() or 0.0) for h in hs},
            panel={"fingerprint": self.panel.fingerprint, "shape": list(self.panel.features.shape)},
            durations_s={},
            peak_rss_mb=0.0,
            peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        )
        result.durations_s = {**self.durations, "total": round(time.perf_counter() - t_all, 3)}
        result.peak_rss_mb = peak_rss_mb()
        result.save(rd / "metrics.json")
        self._log_summary(comp, folds)
        return result

    def _baseline_ref(self, fitted: dict[str, dict[int, Fitted]]) -> BaselineRef | None:
        lgbm = next((f for folds in fitted.values() for f in folds.values() if isinstance(f, LightGBMFitted)), None)
        if lgbm is None:
            return None
        run = lgbm.run
        return BaselineRef(
            None if run.directory is None else str(run.directory), run.fingerprint, bool(run.reused), run.safe_report
        )

    def _fold_result(self, plan, fitted: dict[str, dict[int, Fitted]], deep_rows: pl.DataFrame | None) -> FoldResult:
        facts = {n: folds[plan.index].facts() for n, folds in fitted.items() if plan.index in folds}
        deep = cast("ATFTFitted | None", fitted.get(DEEP, {}).get(plan.index))
        return FoldResult(
            fold=plan.fold.to_dict(),
            **plan.ranges(),
            predictors=facts,
            members_test_rank_ic=None
            if deep is None or deep_rows is None
            else self._members_test(deep, deep_rows, plan),
        )

    def _members_test(self, deep: ATFTFitted, rows: pl.DataFrame, plan) -> list[dict[str, float]] | None:
        """Each member's own test RankIC on the compared rows of this fold (the seed spread), where the members'
        predictions were kept (members trained in worker processes)."""
        frames = deep.members_predict("test")
        if frames is None or len(frames) < 2:
            return None
        keys = rows.filter(pl.col(C.DATE).is_in(pl.Series(sorted(plan.test), dtype=pl.Date).implode())).select(
            C.DATE, C.CODE, *[C.target(h) for h in self.horizons]
        )
        return [
            {
                str(h): round(v[0], 6)
                for h, v in mean_rank_ic(keys.join(f, on=[C.DATE, C.CODE], how="left"), self.horizons).items()
            }
            for f in frames
        ]

    def _log_summary(self, comp: Comparison, folds: list[FoldResult]) -> None:
        h0 = str(self.horizons[0])
        log.info(
            "train: test RankIC %sd on %d common rows: %s (product: %s)",
            h0,
            comp.rows["n_common"],
            ", ".join(f"{n} {comp.rank_ic(n, h0):.4f}" for n in comp.names if comp.rank_ic(n, h0) is not None),
            comp.product,
        )
        for f in folds:
            if f.members_test_rank_ic:
                log.info(
                    "train: fold %s members' own test RankIC %sd %s (the seed spread)",
                    f.fold["index"],
                    h0,
                    " / ".join(f"{m[h0]:.4f}" for m in f.members_test_rank_ic),
                )
