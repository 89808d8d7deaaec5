"""CompleteATFTTrainingPipeline: load/validate -> convert (PanelStore) -> prepare (split) -> train -> validate
results -> save. What `gogooku3 train` runs; writes runs/<timestamp>/ and output/results/."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from gogooku3 import columns as C
from gogooku3.bundle import save_bundle
from gogooku3.config import path, to_dict, to_yaml
from gogooku3.errors import DataError, TrainingError
from gogooku3.evaluation import metrics
from gogooku3.features.manifest import FeatureManifest
from gogooku3.io import (
    file_fingerprint,
    new_run_dir,
    peak_rss_mb,
    timestamp,
    write_json,
    write_parquet,
    write_text,
)
from gogooku3.model.ensemble import ATFTEnsemble
from gogooku3.panel import PanelDataModule, PanelStore
from gogooku3.split import check_folds, inner_validation, make_splitter
from gogooku3.training import ATFTModule, build_trainer, ema_weights

log = logging.getLogger(__name__)


def _checkpoint_weights(path: str, ema: bool) -> dict[str, torch.Tensor]:
    """A checkpoint's weights: with EMA, the averaged (validated) weights stored by the EMA callback."""
    state = ema_weights(path) if ema else None
    return state if state is not None else torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


class CompleteATFTTrainingPipeline:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.horizons = [int(h) for h in cfg.labels.horizons]
        self.entry_lag = int(cfg.labels.entry_lag)
        self.durations: dict[str, float] = {}
        self.is_main = rank_zero_only.rank == 0  # DDP children re-run this pipeline; only rank 0 writes outputs

    def _step(self, name: str, t0: float) -> None:
        self.durations[name] = round(time.perf_counter() - t0, 3)
        log.info("atft: %s done in %.1fs", name, self.durations[name])

    # ---- 1. load / validate ---------------------------------------------------------------------------
    def load(self) -> None:
        t0 = time.perf_counter()
        self.dataset = path(self.cfg, "paths.dataset")
        if not self.dataset.exists():
            raise DataError(f"{self.dataset}: dataset not found; build it with `gogooku3 data build`")
        self.manifest = FeatureManifest.for_dataset(self.dataset)
        lf = pl.scan_parquet(self.dataset)
        self.manifest.check_frame(lf, self.dataset)
        schema = lf.collect_schema()
        missing = [C.target(h) for h in self.horizons if C.target(h) not in schema]
        if missing:
            raise DataError(f"{self.dataset}: label column(s) {', '.join(missing)} missing for labels.horizons")
        if len(self.manifest.names) < 1:
            raise DataError(f"{self.dataset}: the manifest lists no features")
        self.features = self.manifest.names  # the allow-list: nothing else enters the model
        self.dataset_fp = file_fingerprint(self.dataset)
        self._step("load", t0)

    # ---- 2. convert -----------------------------------------------------------------------------------
    def convert(self) -> None:
        t0 = time.perf_counter()
        tc = self.cfg.train
        self.panel = PanelStore.build(self.dataset, self.features, self.horizons, path(self.cfg, "paths.cache_dir"),
                                      to_dict(tc.normalizer), self.manifest.fingerprint, self.dataset_fp,
                                      str(tc.returns_col), force=bool(tc.force_convert))
        self._step("convert", t0)

    # ---- 3. prepare (split) ---------------------------------------------------------------------------
    def prepare(self) -> None:
        t0 = time.perf_counter()
        splitter = make_splitter(self.cfg.split, self.horizons, self.entry_lag)
        folds = splitter.split(self.panel.dates)
        check_folds(folds, self.panel.dates)
        k = self.cfg.train.cv.folds
        self.folds = folds[-int(k):] if k else folds[-1:]
        val_days = int(self.cfg.split.get("val_days", 40))
        gap = max(self.horizons) + self.entry_lag
        self.plans = []
        for f in self.folds:
            fit, val = inner_validation(f.train_dates, val_days, gap)
            self.plans.append({"fold": f, "fit": fit, "val": val, "test": f.test_dates})
        self._step("prepare", t0)

    # ---- 4. train -------------------------------------------------------------------------------------
    def _model_cfg(self) -> dict:
        mc = to_dict(self.cfg.model)
        mc.update(n_features=len(self.features), horizons=self.horizons,
                  n_sectors=max(int(mc["n_sectors"]), len(self.panel.sector_vocab) + 1),
                  n_segments=max(int(mc["n_segments"]), len(self.panel.segment_vocab) + 1))
        return mc

    def train_fold(self, plan: dict, ckpt_dir: Path, resume_dir: Path | None,
                   extra_callbacks: list | None = None) -> dict[str, Any]:
        """Train `train.ensemble` members (seeds seed, seed+1, ...) on one fold; with more than one, the module
        returned predicts their mean."""
        k = int(self.cfg.train.get("ensemble") or 1)
        members = []
        for m in range(k):
            sub = f"member{m}" if k > 1 else ""
            resume = None
            if resume_dir is not None and (resume_dir / sub / "last.ckpt").exists():
                resume = str(resume_dir / sub / "last.ckpt")
            members.append(self._train_member(plan, ckpt_dir / sub, resume, int(self.cfg.train.seed) + m, sub,
                                               extra_callbacks))
        if not members[-1]:  # DDP worker
            return {}
        if k == 1:
            return members[0]
        first = members[0]
        module = first["module"]
        imps = [r["module"].feature_importance() for r in members]
        module.model = ATFTEnsemble([r["module"].model for r in members])
        if all(i is not None for i in imps):
            module._weights_sum, module._weights_n = torch.stack(imps).mean(0), 1
        log.info("atft: ensemble of %d members (val RankIC %s)", k,
                 ", ".join(f"{r['best_score']:.4f}" for r in members if r["best_score"] is not None))
        return {"module": module, "dm": first["dm"], "trainer": members[-1]["trainer"],
                "epochs": [r["epochs"] for r in members], "seconds": sum(r["seconds"] for r in members),
                "weights": [r["weights"] for r in members], "best_checkpoint": [r["best_checkpoint"] for r in members],
                "best_score": float(np.mean([r["best_score"] for r in members if r["best_score"] is not None]))
                if any(r["best_score"] is not None for r in members) else None,
                "members_best_score": [r["best_score"] for r in members],
                "throughput": [h for r in members for h in r["throughput"]],
                "collapse_events": [e for r in members for e in r["collapse_events"]]}

    def _train_member(self, plan: dict, ckpt_dir: Path, resume: str | None, seed: int, tag: str,
                      extra_callbacks: list | None = None) -> dict[str, Any]:
        tc = self.cfg.train
        torch.manual_seed(seed)
        dm = PanelDataModule(self.panel, plan["fit"], plan["val"], plan["test"], int(self.cfg.model.window),
                             int(tc.max_stocks_per_day), float(tc.min_window_frac), int(tc.min_stocks_per_day),
                             seed)
        module = ATFTModule(self._model_cfg(), to_dict(tc.loss),
                            {k: tc[k] for k in ("lr", "weight_decay", "warmup_steps", "min_lr_ratio")})
        if tc.compile:
            module.model = torch.compile(module.model)
        trainer, cbs = build_trainer(self.cfg, self.run_dir, module, ckpt_dir, extra_callbacks, tag)
        if trainer.accelerator.__class__.__name__.lower().startswith("cuda") and trainer.world_size == 1:
            self._maybe_gpu_resident(dm)
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=dm, ckpt_path=resume)
        secs = time.perf_counter() - t0
        if not trainer.is_global_zero:
            return {}
        ck = cbs["checkpoint"]
        best = ck.best_model_path
        if best:  # the best epoch's weights; with EMA, its averaged weights (what was validated)
            module.load_state_dict(_checkpoint_weights(best, "ema" in cbs))
        module = module.to(trainer.strategy.root_device).eval()  # predict where it trained (GPU: fast)
        weights = {"kind": "best_epoch"}
        k = int(tc.get("average_top_k") or 1)
        if best and k > 1 and len(ck.best_k_models) > 1:
            weights = self._average_top_k(module, dm, ck, k, "ema" in cbs)
        return {"module": module, "dm": dm, "trainer": trainer, "epochs": trainer.current_epoch, "seconds": secs,
                "weights": weights, "best_checkpoint": best,
                "best_score": None if ck.best_model_score is None else float(ck.best_model_score),
                "throughput": cbs["throughput"].history, "collapse_events": cbs["collapse_guard"].events}

    def _val_rank_ic(self, module: ATFTModule, dm: PanelDataModule) -> float:
        h = self.horizons[0]
        daily = metrics.daily_ic(self.predict(module, dm, dm.val_days), C.pred(h), C.target(h))
        return float(daily["rank_ic"].mean()) if daily.height else float("nan")

    def _average_top_k(self, module: ATFTModule, dm: PanelDataModule, ck, k: int, ema: bool) -> dict[str, Any]:
        """Average the weights of the top-k checkpoints; keep the average only if it validates better than the
        best epoch alone (chosen on the validation span, never the test span)."""
        best_state = {n: t.detach().cpu().clone() for n, t in module.state_dict().items()}
        best_ic = self._val_rank_ic(module, dm)
        top = sorted(ck.best_k_models.items(), key=lambda kv: float(kv[1]), reverse=True)[:k]
        states = [_checkpoint_weights(p, ema) for p, _ in top]
        avg = {n: (torch.stack([s[n].float() for s in states]).mean(0).to(t.dtype) if t.is_floating_point() else t)
               for n, t in best_state.items()}
        module.load_state_dict(avg)
        avg_ic = self._val_rank_ic(module, dm)
        keep = avg_ic > best_ic
        if not keep:
            module.load_state_dict(best_state)
        log.info("atft: top-%d weight average val RankIC %.4f vs best epoch %.4f -> %s", len(top), avg_ic, best_ic,
                 "average" if keep else "best epoch")
        return {"kind": f"top{len(top)}_average" if keep else "best_epoch", "val_rank_ic_best_epoch": best_ic,
                "val_rank_ic_top_k_average": avg_ic, "checkpoints": [str(p) for p, _ in top]}

    def _maybe_gpu_resident(self, dm: PanelDataModule) -> None:
        need = sum(np.asarray(getattr(self.panel, n)).nbytes for n in ("features", "mask", "targets", "returns"))
        free, _ = torch.cuda.mem_get_info()
        if need < float(self.cfg.train.gpu_resident_max_frac) * free:
            dm.dataset.to_device(torch.device("cuda"))
            log.info("panel kept in GPU memory (%.2f GB)", need / 1e9)

    # ---- 5. validate results --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, module: ATFTModule, dm: PanelDataModule, days: np.ndarray) -> pl.DataFrame:
        frames = []
        for batch in dm.predict_loader(days):
            out = module.predict_step(batch)
            d, idx, p = int(out["day"]), out["idx"].numpy(), out["point"].numpy()
            y = np.asarray(self.panel.targets[d][idx])
            frames.append(pl.DataFrame({
                "Date": [self.panel.dates[d]] * len(idx), "Code": [self.panel.codes[i] for i in idx],
                **{C.pred(h): p[:, j] for j, h in enumerate(self.horizons)},
                **{C.target(h): y[:, j] for j, h in enumerate(self.horizons)}}))
        if not frames:
            raise TrainingError("no day in the span has a stock with a full window; lower model.window")
        return (pl.concat(frames).with_columns(pl.col("Date").cast(pl.Date),
                                               *[pl.col(C.target(h)).fill_nan(None) for h in self.horizons])
                .sort("Date", "Code"))

    def baseline(self, plan: dict) -> pl.DataFrame | None:
        if not self.cfg.train.baseline:
            return None
        from gogooku3.baseline import LightGBMBaseline

        cols = ["Code", "Date", *self.features, *[C.target(h) for h in self.horizons]]
        lf = pl.scan_parquet(self.dataset).select(cols)
        span = lambda ds: lf.filter(pl.col("Date").is_in(list(ds))).collect()  # noqa: E731
        model = LightGBMBaseline()
        model.fit(span(plan["fit"]), self.features, self.horizons, val_df=span(plan["val"]))
        test = span(plan["test"])
        pred = model.predict(test)
        self.baseline_importance = getattr(model, "feature_importance_", None)
        return pred.join(test.select("Date", "Code", *[C.target(h) for h in self.horizons]), on=["Date", "Code"],
                         how="left").sort("Date", "Code")

    # ---- the whole run --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t_all = time.perf_counter()
        tc = self.cfg.train
        resume = None
        if tc.resume:
            resume = (path(self.cfg, "paths.runs_dir") / "last" / "checkpoints").resolve()
            if not any(resume.rglob("last.ckpt")):
                raise TrainingError(f"train.resume=true but {resume} holds no last.ckpt")
        self.load()
        self.convert()
        self.prepare()
        runs = path(self.cfg, "paths.runs_dir")
        self.run_dir = new_run_dir(runs) if self.is_main else runs / ".ddp_worker"
        if self.is_main:
            write_text(self.run_dir / "config.yaml", to_yaml(self.cfg))
        t0 = time.perf_counter()
        results = []
        for plan in self.plans:
            sub = f"fold{plan['fold'].index}" if len(self.plans) > 1 else ""
            results.append(self.train_fold(plan, self.run_dir / "checkpoints" / sub,
                                           None if resume is None else resume / sub))
        self._step("train", t0)
        if not self.is_main:
            return {}
        return self.finish(results, t_all)

    def finish(self, results: list[dict], t_all: float) -> dict[str, Any]:
        t0 = time.perf_counter()
        preds_val, preds_test, base_test, per_fold = [], [], [], []
        for plan, res in zip(self.plans, results):
            module, dm = res["module"], res["dm"]
            pv, pt = self.predict(module, dm, dm.val_days), self.predict(module, dm, dm.test_days)
            preds_val.append(pv)
            preds_test.append(pt)
            bt = self.baseline(plan)
            fold_metrics = {"fold": plan["fold"].to_dict(), "fit_range": [str(plan["fit"][0]), str(plan["fit"][-1])],
                            "val_range": [str(plan["val"][0]), str(plan["val"][-1])],
                            "model_test": metrics.evaluate(pt, self.horizons),
                            "epochs": res["epochs"], "best_val_rank_ic_1d": res["best_score"],
                            "weights": res.get("weights"),
                            "best_checkpoint": res["best_checkpoint"], "train_seconds": round(res["seconds"], 2),
                            "throughput": res["throughput"], "collapse_events": res["collapse_events"]}
            if "members_best_score" in res:
                fold_metrics["members_best_val_rank_ic_1d"] = res["members_best_score"]
            if bt is not None:
                base_test.append(bt)
                fold_metrics["baseline_test"] = metrics.evaluate(bt, self.horizons)
            per_fold.append(fold_metrics)
        rd = self.run_dir
        pv, pt = pl.concat(preds_val), pl.concat(preds_test)
        write_parquet(pv, rd / "predictions_val.parquet")
        write_parquet(pt, rd / "predictions_test.parquet")
        last = results[-1]
        module = last["module"]
        importance = module.feature_importance()
        vi = {} if importance is None else dict(sorted(
            zip(self.features, importance.cpu().numpy().tolist()), key=lambda kv: -kv[1]))
        write_json(rd / "variable_importance.json", vi)
        n_params = module.model.get_num_params()
        n_members = len(module.model.members) if isinstance(module.model, ATFTEnsemble) else 1
        out: dict[str, Any] = {
            "model": {"name": self.cfg.model.name, "n_params": n_params, "members": n_members,
                      "n_params_per_member": n_params // n_members, "expected_params_full": 5_611_803,
                      "expected_params_config": int(self.cfg.model.expected_params),
                      "param_ratio_vs_5_6M": n_params / n_members / 5_611_803,
                      "flops_per_sample": module.model.estimate_flops_per_sample()},
            "horizons": self.horizons, "n_features": len(self.features), "folds": per_fold,
            "val": metrics.evaluate(pv, self.horizons), "test": metrics.evaluate(pt, self.horizons),
            "dataset": str(self.dataset), "dataset_fingerprint": self.dataset_fp,
            "manifest_fingerprint": self.manifest.fingerprint, "panel_fingerprint": self.panel.fingerprint,
            "panel_shape": list(self.panel.features.shape),
        }
        if base_test:
            bt = pl.concat(base_test)
            write_parquet(bt, rd / "baseline_predictions_test.parquet")
            out["baseline_test"] = metrics.evaluate(bt, self.horizons)
            out["model_vs_baseline_1d"] = metrics.paired_comparison(
                metrics.daily_ic(pt, C.pred(self.horizons[0]), C.target(self.horizons[0])),
                metrics.daily_ic(bt, C.pred(self.horizons[0]), C.target(self.horizons[0])))
        if len(per_fold) > 1:
            ric = np.array([f["model_test"][str(self.horizons[0])]["rank_ic_mean"] for f in per_fold], dtype=float)
            out["cv"] = {"folds": len(per_fold), "test_rank_ic_1d_mean": float(np.nanmean(ric)),
                         "test_rank_ic_1d_std": float(np.nanstd(ric))}
        thr = [h for f in per_fold for h in f["throughput"]]
        out["samples_per_sec"] = float(np.mean([h["samples_per_sec"] for h in thr])) if thr else None
        out["mfu"] = float(np.nanmean([h["mfu"] for h in thr])) if thr else None
        out["epochs"] = [f["epochs"] for f in per_fold]
        out["collapse"] = {str(h): float(pt[C.pred(h)].std() or 0.0) for h in self.horizons}
        save_bundle(rd, module.model, self.manifest, self.panel.normalizer, self.dataset_fp,
                    self.panel.sector_vocab, self.panel.segment_vocab,
                    {"run_dir": str(rd), "trained_at": timestamp()}, float(self.cfg.train.min_window_frac),
                    str(self.cfg.train.returns_col))
        self._step("validate_and_save", t0)
        out["durations_s"] = {**self.durations, "total": round(time.perf_counter() - t_all, 3)}
        out["peak_rss_mb"] = peak_rss_mb()
        if torch.cuda.is_available():
            out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        write_json(rd / "metrics.json", out)
        result = {"status": "ok", "run_dir": str(rd), "elapsed_time": out["durations_s"]["total"],
                  "atft_settings": {"model": to_dict(self.cfg.model), "train": to_dict(self.cfg.train),
                                    "trainer": to_dict(self.cfg.trainer)},
                  "data_info": {"dataset": str(self.dataset), "panel_shape": out["panel_shape"],
                                "n_features": len(self.features)},
                  "training_info": {"epochs": out["epochs"], "samples_per_sec": out["samples_per_sec"]},
                  "validation_info": {"param_count": n_params // n_members, "members": n_members,
                                      "expected_params": 5_611_803,
                                      "param_match": abs(n_params // n_members - 5_611_803) <= 0.1 * 5_611_803,
                                      "test": out["test"], "baseline_test": out.get("baseline_test")},
                  "timestamp": timestamp()}
        write_json(path(self.cfg, "paths.output_dir") / "results" / f"complete_training_result_{timestamp()}.json",
                   result)
        log.info("atft: test RankIC 1d %.4f (baseline %s) -> %s", out["test"][str(self.horizons[0])]["rank_ic_mean"],
                 out.get("baseline_test", {}).get(str(self.horizons[0]), {}).get("rank_ic_mean"), rd)
        return {**result, "metrics": out}

