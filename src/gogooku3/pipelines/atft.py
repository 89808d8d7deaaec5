"""`gogooku3 train`: load -> PanelStore -> plans (shared splitter) -> `training.fit_ensemble` per fold -> predictions
(`inference.predict_panel`) -> LightGBM baseline on the same folds (reused from `safe` when the fingerprints match)
-> metrics, bundle and `RUN/metrics.json` (`results.TrainResult`).

Only orchestration lives here; how a model is trained is `training`, how it predicts is `inference`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import polars as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from gogooku3.core import columns as C
from gogooku3.predictors.lightgbm import baseline_horizons
from gogooku3.predictors.bundle import save_bundle
from gogooku3.training.checkpoints import adopt_checkpoints, check_resume_model
from gogooku3.config.compose import path, to_dict, to_yaml
from gogooku3.data.dataset import load_dataset, load_panel
from gogooku3.core.errors import ConfigError
from gogooku3.evaluation import metrics
from gogooku3.core.io import (
    atomic_path,
    new_run_dir,
    peak_rss_mb,
    point_last,
    timestamp,
    write_json,
    write_parquet,
    write_text,
)
from gogooku3.training.member_pool import resolve_workers, start_pool
from gogooku3.predictors.blend import BlendChoice, choose_weights, combine, weight_grid
from gogooku3.model.ensemble import ATFTEnsemble
from gogooku3.predictors.stack import stack_for_plan, stack_name
from gogooku3.data.panel import clean_cache
from gogooku3.evaluation.results import BaselineRef, FoldResult, ModelInfo, TrainResult
from gogooku3.core.runs import check_resume, resume_dir, shown
from gogooku3.evaluation.tracking import log_training
from gogooku3.training.fit import FoldFit, fit_ensemble, make_plans, model_config

log = logging.getLogger(__name__)


class CompleteATFTTrainingPipeline:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.durations: dict[str, float] = {}
        self.is_main = rank_zero_only.rank == 0  # DDP children re-run this pipeline; only rank 0 writes outputs

    def _step(self, name: str, t0: float) -> None:
        self.durations[name] = round(time.perf_counter() - t0, 3)
        log.info("train: %s done in %.1fs", name, self.durations[name])

    def run(self) -> dict:
        t_all = time.perf_counter()
        resume = resume_dir(self.cfg)
        t0 = time.perf_counter()
        self.dataset, self.manifest, self.ref = load_dataset(self.cfg)
        resumed = {} if resume is None else check_resume(resume, self.ref)
        workers = resolve_workers(self.cfg, int(self.cfg.train.ensemble), parallel_ok=True)
        pool = start_pool(workers) if workers > 1 else None  # its processes import while the panel converts
        try:
            return self._run(t_all, t0, resume, resumed, pool)
        finally:
            if pool is not None:
                pool.shutdown()

    def _run(self, t_all: float, t0: float, resume, resumed: dict, pool) -> dict:
        self.horizons = list(self.manifest.horizons)
        self.panel = load_panel(self.cfg, self.dataset, self.manifest, self.ref)
        self.folds, self.plans = make_plans(self.panel.dates, self.cfg.split, self.horizons, self.manifest.entry_lag,
                                            self.cfg.train.cv.folds, self.manifest.max_lookback)
        stack_on = bool(self.cfg.train.stack.enabled)
        self.stack_inputs = [stack_name(h) for h in baseline_horizons(self.cfg)] if stack_on else []
        model_cfg = model_config(self.cfg, self.panel, self.horizons, len(self.stack_inputs))
        for sub, state in resumed.items():
            check_resume_model(state, model_cfg, shown(resume / sub / "last.ckpt"))
        self._step("load_and_convert", t0)
        runs = path(self.cfg, "paths.runs_dir")
        self.run_dir = new_run_dir(runs) if self.is_main else runs / ".ddp_worker"
        if self.is_main:
            write_text(self.run_dir / "config.yaml", to_yaml(self.cfg))
            write_json(self.run_dir / "dataset.json", asdict(self.ref))
            clean_cache(path(self.cfg, "paths.cache_dir"), self.cfg.train.panel_cache_keep, [self.panel.fingerprint])
            if resume is not None:  # the earlier checkpoints join this run: its best epoch is chosen among them too
                adopt_checkpoints(resume, self.run_dir / "checkpoints")
                resume = self.run_dir / "checkpoints"
        t0 = time.perf_counter()
        fits = []
        self.stack_provenance: dict[str, list] = {}
        for plan in self.plans:
            sub = f"fold{plan.index}" if len(self.plans) > 1 else ""
            extra = self._stack(plan) if stack_on else None
            fits.append(fit_ensemble(self.panel, plan, self.cfg, run_dir=self.run_dir, horizons=self.horizons,
                                     ckpt_dir=self.run_dir / "checkpoints" / sub,
                                     resume_dir=None if resume is None else resume / sub, pool=pool, extra=extra))
        self._step("train", t0)
        if pool is not None:
            pool.shutdown()  # the members are trained; free the worker processes before the evaluation
        if not self.is_main:
            return {}
        result = self.finish(fits, t_all)
        point_last(runs, self.run_dir)  # only a run that finished becomes runs/last
        return {"status": "ok", "run_dir": str(self.run_dir), "result": result}

    def _stack(self, plan) -> Path:
        """The plan's stacked LightGBM inputs (`model.stack`) as `RUN/stack/fold{k}.npy` (+ their provenance)."""
        if not self.cfg.baseline.enabled:
            raise ConfigError("train.stack.enabled needs baseline.enabled (the stacked inputs are LightGBM's)")
        t0 = time.perf_counter()
        arr, provenance = stack_for_plan(self.cfg, self.dataset, self.manifest, self.folds, plan, self.panel.dates,
                                         self.panel.codes)
        out = self.run_dir / "stack" / f"fold{plan.index}.npy"
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr)
        self.stack_provenance[str(plan.index)] = provenance
        write_json(self.run_dir / "stack" / "provenance.json", self.stack_provenance)
        log.info("train: fold %d stacked LightGBM inputs %s in %.1f s (%d models)", plan.index, list(arr.shape),
                 time.perf_counter() - t0, sum("skipped" not in p for p in provenance))
        return out

    def baseline(self) -> tuple[pl.DataFrame | None, BaselineRef | None]:
        """LightGBM test predictions on the trained folds (the `baseline` group; shared with `safe`)."""
        from gogooku3.predictors.lightgbm import baseline_for_folds

        run = baseline_for_folds(self.cfg, self.dataset, self.manifest, self.folds, [p.index for p in self.plans],
                                 self.manifest.entry_lag)
        self.base_run = run
        if run is None:
            return None, None
        self.base_horizons = list(run.horizons)  # `baseline.horizons` may be a subset
        pred = run.predictions_test.select(C.DATE, C.CODE, *[C.pred(h) for h in run.horizons],
                                           *[C.target(h) for h in run.horizons]).sort(C.DATE, C.CODE)
        return pred, BaselineRef(None if run.directory is None else str(run.directory), run.fingerprint,
                                 bool(run.reused), run.safe_report)

    def blend(self, fits: list[FoldFit], pv: list[pl.DataFrame], pt: list[pl.DataFrame]
              ) -> tuple[pl.DataFrame | None, pl.DataFrame | None, list[BlendChoice]]:
        """Model + LightGBM per fold (`train.blend`): the weights chosen on the fold's validation days, applied to
        its test days. (combined val, combined test, one choice per fold); (None, None, []) when off."""
        bc, run = self.cfg.train.blend, getattr(self, "base_run", None)
        if not bc.enabled or run is None:
            if bc.enabled:
                log.info("train: train.blend needs the LightGBM baseline (baseline.enabled); the model alone predicts")
            return None, None, []
        grid = weight_grid(float(bc.grid_step))
        cv, ct, choices = [], [], []
        for f, mv, mt in zip(fits, pv, pt):
            in_fold = pl.col("fold") == f.plan.index
            bv, btest = run.predictions_val.filter(in_fold), run.predictions_test.filter(in_fold)
            if bv.select(C.DATE).unique().height != mv.select(C.DATE).unique().height:
                log.warning("train: fold %d: LightGBM validation days (%d) differ from the model's (%d)",
                            f.plan.index, bv.select(C.DATE).unique().height, mv.select(C.DATE).unique().height)
            choice = choose_weights(mv, bv, self.horizons, str(bc.method), grid)
            cv.append(combine(mv, bv, choice.weights, choice.method))
            ct.append(combine(mt, btest, choice.weights, choice.method))
            choices.append(choice)
        return pl.concat(cv), pl.concat(ct), choices

    def blend_bundle(self, choice: BlendChoice, fold: int) -> dict:
        """What `bundle.predict_blended` needs: the last fold's weights, its LightGBM boosters (copied into the
        bundle by `save_bundle`) and the baseline's input normalisation."""
        run = self.base_run
        pf = next(p for p in run.per_fold if int(p["fold"]) == fold)
        schema = pl.scan_parquet(self.dataset).collect_schema()
        hs = [h for h, w in choice.weights.items() if w < 1.0]
        return {"method": choice.method, "weights": {str(h): w for h, w in choice.weights.items()}, "fold": fold,
                "boosters": {str(h): str(run.booster_path(fold, h)) for h in hs},
                "best_iteration": {str(h): int(pf["best_iteration"][str(h)]) for h in hs},
                "features": list(run.features),
                "normalized_features": [f for f in run.features if schema[f].is_float()],
                "normalize": {**to_dict(self.cfg.baseline.normalize),
                              "day_level_features": list(run.normalization.get("day_level_features") or [])}}

    def oracle(self, pt: pl.DataFrame) -> pl.DataFrame | None:
        """The synthetic market's oracle as a predictor (Date, Code, pred_{h}d = oracle_{h}d, target_{h}d) on the test
        rows, or None when `paths.oracle_dir` holds none for these rows."""
        from gogooku3.pipelines.safe import find_oracle

        lf = find_oracle(path(self.cfg, "paths.oracle_dir"), self.horizons)
        if lf is None:
            return None
        hs = [h for h in self.horizons if C.oracle(h) in lf.collect_schema().names()]
        o = (lf.select(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String),
                       *[pl.col(C.oracle(h)).cast(pl.Float64).alias(C.pred(h)) for h in hs])
             .join(pt.lazy().select(C.DATE, C.CODE, *[C.target(h) for h in hs]), on=[C.DATE, C.CODE], how="inner")
             .sort(C.DATE, C.CODE).collect())
        self.oracle_horizons = hs
        return o if o.height else None

    def finish(self, fits: list[FoldFit], t_all: float) -> TrainResult:
        t0 = time.perf_counter()
        hs, rd = self.horizons, self.run_dir
        pv_folds = [f.predict("val") for f in fits]
        pt_folds = [f.predict("test") for f in fits]
        pv, pt = pl.concat(pv_folds), pl.concat(pt_folds)
        write_parquet(pv, rd / "predictions_val.parquet")
        write_parquet(pt, rd / "predictions_test.parquet")
        bt, base_ref = self.baseline()
        if bt is not None:
            write_parquet(bt, rd / "baseline_predictions_test.parquet")
        cv, ct, choices = self.blend(fits, pv_folds, pt_folds)
        if ct is not None:
            write_parquet(cv, rd / "predictions_combined_val.parquet")
            write_parquet(ct, rd / "predictions_combined_test.parquet")
        self._step("predict_and_baseline", t0)
        t0 = time.perf_counter()
        # every comparison (model, baseline, combined, oracle) on the same (Date, Code) rows; what was left out, why
        same, rows = metrics.align_rows({"model": pt, "baseline": bt, "combined": ct, "oracle": self.oracle(pt)}, hs)
        pc, bc, oc, cc = same["model"], same.get("baseline"), same.get("oracle"), same.get("combined")
        for name, r in rows["frames"].items():
            if r["kept"] < r["rows"]:
                log.info("train: %s test rows %d -> %d on the common rows (%d without a prediction, absent in %s)",
                         name, r["rows"], r["kept"], r["excluded_null_prediction"], r["excluded_absent_in"])
        folds = [self._fold_result(f, pc, bc, oc, cc, ch) for f, ch in
                 zip(fits, choices or [None] * len(fits))]
        model = fits[-1].model
        importance = fits[-1].feature_importance()
        names = [*self.manifest.names, *self.stack_inputs]
        write_json(rd / "variable_importance.json", {} if importance is None else dict(sorted(
            zip(names, importance.cpu().numpy().tolist(), strict=True), key=lambda kv: -kv[1])))
        n_members = len(model.members) if isinstance(model, ATFTEnsemble) else 1
        n_params = model.get_num_params()
        save_bundle(rd, model, self.manifest, self.panel.normalizer, self.ref.fingerprint, self.panel.sector_vocab,
                    self.panel.segment_vocab, {"run_dir": str(rd), "trained_at": timestamp(),
                                               **({"stack": {"inputs": self.stack_inputs}} if self.stack_inputs
                                                  else {})},
                    float(self.cfg.train.min_window_frac), str(self.cfg.train.returns_col),
                    blend=self.blend_bundle(choices[-1], fits[-1].plan.index) if choices else None)
        thr = [h for f in folds for h in f.throughput]
        result = TrainResult(
            run_dir=str(rd), created=timestamp(), dataset=self.ref, baseline=base_ref,
            model=ModelInfo(str(self.cfg.model.name), n_params, n_members, n_params // n_members,
                            int(self.cfg.model.expected_params), model.estimate_flops_per_sample()),
            horizons=hs, folds=folds, val=metrics.evaluate(pv, hs), test=metrics.evaluate(pc, hs),
            baseline_test=None if bc is None else metrics.evaluate(bc, self.base_horizons),
            model_vs_baseline={} if bc is None else paired(pc, bc, self.base_horizons),
            samples_per_sec=sum(h["samples_per_sec"] for h in thr) / len(thr) if thr else None,
            mfu=sum(h["mfu"] for h in thr) / len(thr) if thr else None,
            collapse={str(h): float(pt[C.pred(h)].std() or 0.0) for h in hs},
            panel={"fingerprint": self.panel.fingerprint, "shape": list(self.panel.features.shape)},
            durations_s={}, peak_rss_mb=0.0,
            peak_gpu_mb=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            oracle_test=None if oc is None else metrics.evaluate(oc, self.oracle_horizons), comparison_rows=rows,
            predictor="combined" if cc is not None else "model",
            blend=None if not choices else {"method": choices[0].method, "grid": choices[0].grid,
                                            "folds": {str(f.plan.index): c.to_dict() for f, c in zip(fits, choices)}},
            combined_val=None if cv is None else metrics.evaluate(cv, hs),
            combined_test=None if cc is None else metrics.evaluate(cc, hs),
            combined_vs_baseline={} if cc is None or bc is None else paired(cc, bc, self.base_horizons),
            combined_vs_model={} if cc is None else paired(cc, pc, hs),
            combined_vs_oracle={} if cc is None or oc is None else paired(cc, oc, self.oracle_horizons))
        self._step("evaluate_and_save", t0)
        result.durations_s = {**self.durations, "total": round(time.perf_counter() - t_all, 3)}
        result.peak_rss_mb = peak_rss_mb()
        result.save(rd / "metrics.json")
        log_training(self.cfg, rd, result.to_dict())
        h0 = str(hs[0])
        log.info("train: test RankIC %sd %.4f (baseline %s, combined %s) -> %s", h0, result.test[h0]["rank_ic_mean"],
                 "-" if result.baseline_test is None else f"{result.baseline_test[h0]['rank_ic_mean']:.4f}",
                 "-" if result.combined_test is None else f"{result.combined_test[h0]['rank_ic_mean']:.4f}", rd)
        for f in result.folds:
            if f.members_test_rank_ic and len(f.members_test_rank_ic) > 1:
                log.info("train: fold %s members' own test RankIC %sd %s (the seed spread)", f.fold["index"], h0,
                         " / ".join(f"{m[h0]:.4f}" for m in f.members_test_rank_ic))
        return result

    def _fold_result(self, fit: FoldFit, pt: pl.DataFrame, bt: pl.DataFrame | None,
                     ot: pl.DataFrame | None = None, ct: pl.DataFrame | None = None,
                     choice: BlendChoice | None = None) -> FoldResult:
        """One fold's training facts and test metrics (pass frames restricted to the common rows)."""
        test = set(fit.plan.test)
        in_fold = pl.col(C.DATE).is_in(pl.Series(sorted(test), dtype=pl.Date).implode())
        return FoldResult(
            fold=fit.plan.fold.to_dict(), **fit.plan.ranges(), model_test=metrics.evaluate(pt.filter(in_fold),
                                                                                           self.horizons),
            baseline_test=None if bt is None else metrics.evaluate(bt.filter(in_fold), self.base_horizons),
            epochs=[m.epochs for m in fit.members], best_val_rank_ic=fit.best_score,
            members_best_val_rank_ic=[m.best_score for m in fit.members], weights=[m.weights for m in fit.members],
            best_checkpoint=[m.best_checkpoint for m in fit.members],
            train_seconds=round(sum(m.seconds for m in fit.members), 2),
            throughput=[h for m in fit.members for h in m.throughput],
            collapse_events=[e for m in fit.members for e in m.collapse_events],
            oracle_test=None if ot is None else metrics.evaluate(ot.filter(in_fold), self.oracle_horizons),
            combined_test=None if ct is None else metrics.evaluate(ct.filter(in_fold), self.horizons),
            blend_weights=None if choice is None else {str(h): w for h, w in choice.weights.items()},
            model_vs_baseline=None if bt is None else paired(pt.filter(in_fold), bt.filter(in_fold),
                                                             self.base_horizons),
            combined_vs_baseline=None if ct is None or bt is None else paired(ct.filter(in_fold), bt.filter(in_fold),
                                                                              self.base_horizons),
            members_test_rank_ic=self._members_test(fit, pt.filter(in_fold)))

    def _members_test(self, fit: FoldFit, pt: pl.DataFrame) -> list[dict[str, float]] | None:
        """Each member's own test RankIC on the ensemble's rows (the seed spread), where the members' predictions
        were kept (members trained in worker processes)."""
        if not all("test" in m.predictions for m in fit.members):
            return None
        rows = pt.select(C.DATE, C.CODE, *[C.target(h) for h in self.horizons])
        out = []
        for m in fit.members:
            own = pl.read_parquet(m.predictions["test"]).select(C.DATE, C.CODE, *[C.pred(h) for h in self.horizons])
            ev = metrics.evaluate(rows.join(own, on=[C.DATE, C.CODE], how="left"), self.horizons)
            out.append({h: round(float(ev[h]["rank_ic_mean"]), 6) for h in ev})
        return out


def paired(a: pl.DataFrame, b: pl.DataFrame, horizons) -> dict:
    """Per horizon: `metrics.paired_comparison` of a's and b's daily RankIC (frames on identical rows)."""
    return {str(h): metrics.paired_comparison(metrics.daily_ic(a, C.pred(h), C.target(h)),
                                              metrics.daily_ic(b, C.pred(h), C.target(h)), horizon=h)
            for h in horizons}

