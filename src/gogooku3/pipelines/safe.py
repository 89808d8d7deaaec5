"""SafeTrainingPipeline: the leak-free check of an ML dataset, written up as one JSON report.

1 load + validate  2 features (the manifest's groups: the allow-list the builder wrote)  3 split (purge/embargo)
4+5 the shared LightGBM baseline per fold (`gogooku3.predictors.lightgbm`: per-day normalization, inner-validation early
stopping; reused from `<output_dir>/baselines/<fingerprint>/` when stored, else fitted and stored there for
`gogooku3 train`)  6 correlation graph  7 report `<output_dir>/experiments/safe_<timestamp>.json` (atomic).
Unlike the original, the split comes before anything is fitted, the only pooled normalization statistic is
fitted on training dates, early stopping never sees the test fold and the features are the manifest's allow-list.
Any error stops the run before the report is written.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from gogooku3.config.compose import safe_name, to_dict
from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.core.io import file_fingerprint, peak_rss_mb, timestamp, write_json
from gogooku3.core.provenance import provenance
from gogooku3.data.dataset import open_manifest
from gogooku3.data.graph import RANK_COLUMNS, FinancialGraphBuilder, graph_snapshot
from gogooku3.data.split import Fold, check_folds, chosen_folds, make_splitter
from gogooku3.data.validation import scan_dataset, screen_dates, screen_folds, union_features, validate_dataset
from gogooku3.evaluation.compare import compare
from gogooku3.evaluation.neutral import targets_spec
from gogooku3.features.manifest import META_COLUMNS, FeatureManifest, is_label_like, manifest_path
from gogooku3.features.published import dataset_files, pin
from gogooku3.predictors.lightgbm import (
    BaselineRun,
    baseline_fingerprint,
    baseline_horizons,
    baseline_root,
    dataset_rows,
    fit_baseline,
    load_or_fit,
)
from gogooku3.predictors.oracle import find_oracle, oracle_predictions

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)

SUMMARY_KEYS = (
    "ic_mean",
    "rank_ic_mean",
    "rank_icir",
    "rank_ic_tstat",
    "rank_ic_pos_share",
    "hit_rate",
    "top_bottom_spread",
)


def _date(v: Any) -> dt.date | None:
    if v is None or v == "":
        return None
    try:
        return v if isinstance(v, dt.date) else dt.date.fromisoformat(str(v))
    except ValueError as e:
        raise ConfigError(f"not a YYYY-MM-DD date: {v!r}") from e


def _in_dates(dates: list[dt.date]) -> pl.Expr:
    return pl.col(C.DATE).is_in(pl.Series(dates, dtype=pl.Date).implode())


def _mean_std(values: list[float]) -> dict[str, float | None]:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


class SafeTrainingPipeline:
    def __init__(self, cfg: Settings) -> None:
        self.cfg = cfg
        self.scfg = cfg.safe
        self.steps: dict[str, dict[str, Any]] = {}
        self._processed: dict[str, int] = {}

    @contextmanager
    def _step(self, name: str):
        t0 = time.perf_counter()
        out: dict[str, Any] = {}
        log.info("safe: %s ...", name)
        yield out
        out["duration_seconds"] = round(time.perf_counter() - t0, 3)
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        self.steps[name] = out

    # ---- the run --------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        t_start = time.perf_counter()
        start_time = dt.datetime.now().isoformat(timespec="seconds")
        cfg, s = self.cfg, self.scfg
        path = pin(s.dataset or cfg.paths.dataset)  # resolved once: every step reads this one version
        manifest = open_manifest(cfg, path)  # refuses labels.* that differ from the dataset's, as `train` does
        horizons, entry_lag = list(manifest.horizons), int(manifest.entry_lag)
        # the same folds as `train` (its purge covers the deep model's input window too)
        splitter = make_splitter(cfg.split, horizons, entry_lag, manifest.max_lookback, cfg.model.window)

        # 1. load + validate ------------------------------------------------------------------------------
        with self._step("step1_data_loading") as st:
            exposures = targets_spec(cfg)  # neutral.targets: the baseline's labels are residualised on these columns
            lf = scan_dataset(
                path,
                manifest,
                horizons,
                _date(s.start_date),
                _date(s.end_date),
                extra=[] if exposures is None else exposures.columns,
            )
            df = lf.collect(engine="streaming")  # the same frame; 6.6 GB peak at 9.68 M rows, the default engine >12 GB
            if df.height == 0:
                raise DataError(f"{path}: no rows (check safe.start_date / safe.end_date)")
            folds = splitter.split(df[C.DATE])
            v = s.validation
            res = validate_dataset(
                df,
                manifest,
                horizons,
                folds[0].train_dates,
                min_features=v.min_features,
                max_null_share=v.max_null_share,
                null_action=v.null_action,
                max_abs_target=v.max_abs_target,
                max_listed=v.max_listed,
                source=str(path),
            )
            st.update(res.to_dict())
            screens = self._screens(df, manifest, folds, path)
            features = union_features(manifest.names, screens)
            per_fold = screen_dates(folds)[folds[-1].index] != list(folds[0].train_dates)
            st.update(
                {
                    "file": str(path),
                    "file_size_mb": round(sum(f.stat().st_size for f in dataset_files(path)) / 2**20, 2),
                    "dataset_fingerprint": file_fingerprint(path),
                    "manifest_fingerprint": manifest.fingerprint,
                    "null_share_span": [str(folds[0].train_dates[0]), str(folds[0].train_dates[-1])],
                    "null_screen": "each fold's own training dates" if per_fold else "fold 0's training dates",
                    "dropped_features_per_fold": {str(k): d for k, (_, d) in screens.items()},
                }
            )
        fold_features = {k: kept for k, (kept, _) in screens.items()}
        dropped = {f: s for _, d in screens.values() for f, s in d.items() if f not in features}

        # 2. features: the manifest's allow-list, minus the too-null ones (per fold under purged k-fold) -------------
        with self._step("step2_features") as st:
            st.update(self._features(manifest, path, features, dropped))

        # 3. split ------------------------------------------------------------------------------------------
        with self._step("step3_split") as st:
            proof = check_folds(folds, df[C.DATE], require_forward=splitter.method == "walk_forward")
            st.update(
                {
                    **splitter.describe(),
                    **proof,
                    "folds": [f.to_dict() for f in folds],
                    "avg_train_size": float(np.mean([self._rows(df, f.train_dates) for f in folds])),
                    "avg_test_size": float(np.mean([self._rows(df, f.test_dates) for f in folds])),
                    "avg_train_dates": float(np.mean([len(f.train_dates) for f in folds])),
                    "avg_test_dates": float(np.mean([len(f.test_dates) for f in folds])),
                }
            )

        # Only the graph reads the frame from here on (its last `graph.window` sessions, its columns); the baseline
        # reads its columns from the scan a block at a time: the whole frame stays out of the baseline's peak.
        self._processed = {"samples": df.height, "stocks": df[C.CODE].n_unique(), "dates": df[C.DATE].n_unique()}
        keep = [*META_COLUMNS, C.RETURNS_1D, *RANK_COLUMNS, C.S33, C.CLOSE, C.VOLUME]  # graph_snapshot's columns
        last = df.get_column(C.DATE).unique().sort().tail(s.graph.window)
        df = df.select([c for c in dict.fromkeys(keep) if c in df.columns]).filter(_in_dates(last.to_list()))

        # 4 + 5. the shared baseline: per-day normalization and LightGBM per fold (stored or fitted) ----------------
        run = None
        with self._step("step5_baseline") as st:
            if cfg.baseline.enabled:
                run = self._baseline_run(lf, features, folds, entry_lag, path, manifest, fold_features)
                st.update(self._baseline(run))
            else:
                st["enabled"] = False
        with self._step("step4_normalization") as st:
            if run is not None:
                st.update(
                    {**run.normalization, "done_in": "step5_baseline (gogooku3.predictors.lightgbm.fit_baseline)"}
                )
            else:
                st["enabled"] = False

        # 6. graph ------------------------------------------------------------------------------------------
        with self._step("step6_graph") as st:
            g = s.graph
            if g.enabled:
                builder = FinancialGraphBuilder(
                    window=g.window,
                    method=g.method,
                    halflife=g.halflife,
                    shrinkage=g.shrinkage,
                    threshold=g.threshold,
                    k=g.k,
                    min_obs=g.min_obs,
                )
                st.update(graph_snapshot(df, builder, n_nodes=g.n_nodes))
            else:
                st["enabled"] = False

        # 7. report -----------------------------------------------------------------------------------------
        report_path = Path(cfg.paths.output_dir) / "experiments" / f"{safe_name(s.experiment_name)}_{timestamp()}.json"
        with self._step("step7_report") as st:
            st["report_generated"] = str(report_path)
        total = time.perf_counter() - t_start
        self.steps["step7_report"]["total_pipeline_duration"] = round(total, 3)
        report = self._final(start_time, total, df, features, folds, splitter)
        report["baseline"] = (
            {"directory": str(run.directory), "fingerprint": run.fingerprint, "reused": run.reused}
            if run is not None
            else {"enabled": False}
        )
        report["report_path"] = str(report_path)
        end_time = dt.datetime.now().isoformat(timespec="seconds")
        report["provenance"] = provenance(cfg, start_time) | {"end_time": end_time, "status": "ok"}
        write_json(report_path, report)
        if run is not None:
            run.record_safe_report(report_path)  # `gogooku3 train` and its report find this report through the run
        log.info("safe: report written to %s (%.1f s)", report_path, total)
        return report

    # ---- pieces ---------------------------------------------------------------------------------------
    def _screens(
        self, df: pl.DataFrame, manifest: FeatureManifest, folds: list[Fold], path: Path
    ) -> dict[int, tuple[list[str], dict[str, float]]]:
        """Each fold's null screen (`data.validation.screen_folds`: fold 0's training dates under walk-forward, each
        fold's own under purged k-fold); every fold must keep `safe.validation.min_features`."""
        v = self.scfg.validation
        screens = screen_folds(df, manifest.names, folds, v.max_null_share, v.null_action, str(path))
        for k, (kept, dropped) in screens.items():
            if len(kept) < v.min_features:
                raise DataError(
                    f"{path}: fold {k} keeps only {len(kept)} features after dropping {len(dropped)} too-null ones "
                    f"on its training dates, need {v.min_features}; lower safe.validation.min_features or raise "
                    "safe.validation.max_null_share"
                )
        return screens

    @staticmethod
    def _rows(df: pl.DataFrame, dates: list[dt.date]) -> int:
        return int(df.select(_in_dates(dates).sum()).item())  # a count, not a filtered copy of the frame

    @staticmethod
    def _features(manifest: FeatureManifest, path: Path, features: list[str], dropped: dict) -> dict[str, Any]:
        """Which features the run uses: the manifest's groups and counts (the builder's allow-list)."""
        kept = set(features)
        return {
            "source": str(manifest_path(path)),
            "manifest_fingerprint": manifest.fingerprint,
            "n_manifest_features": len(manifest.names),
            "n_features": len(features),
            "groups": {g: len(names) for g, names in manifest.groups.items()},
            "groups_used": {g: sum(n in kept for n in names) for g, names in manifest.groups.items()},
            "dropped_features": dropped,
            "skipped_groups": manifest.skipped_groups,
            "notes": manifest.notes,
        }

    def _baseline_run(
        self,
        df: pl.LazyFrame,
        features: list[str],
        folds: list[Fold],
        entry_lag: int,
        path: Path,
        manifest: FeatureManifest,
        fold_features: dict[int, list[str]],
    ) -> BaselineRun:
        """The baseline of the folds `safe.baseline_folds` names (those `gogooku3 train` will evaluate, or all): the
        stored run of these inputs, or fitted now and stored for `gogooku3 train`."""
        cfg = self.cfg
        bh, val_days = baseline_horizons(cfg, manifest), cfg.split.val_days
        neutral = targets_spec(cfg)  # the labels `train`'s LightGBM fits on (neutral.targets): the same stored run
        fp = baseline_fingerprint(
            self.steps["step1_data_loading"]["dataset_fingerprint"],
            manifest.fingerprint,
            folds,
            bh,
            entry_lag,
            val_days,
            cfg.baseline,
            self.scfg.validation,
            cfg.split.holdout_days,
            neutral,
            dataset_rows(path),
        )

        def fit(missing: list[int]) -> BaselineRun:
            return fit_baseline(
                df,
                features,
                folds,
                bh,
                entry_lag,
                val_days,
                cfg.baseline,
                only=missing,
                fingerprint_=fp,
                holdout_days=cfg.split.holdout_days,
                fold_features=fold_features,
                neutral=neutral,
            )

        which = "all" if self.scfg.baseline_folds == "all" else cfg.train.cv.folds
        wanted = [f.index for f in chosen_folds(folds, which)]
        if len(wanted) < len(folds):
            log.info(
                "safe: LightGBM on fold(s) %s, those `train` evaluates (safe.baseline_folds=train; all: every fold)",
                wanted,
            )
        return load_or_fit(baseline_root(cfg, fp), fp, wanted, fit)

    def _baseline(self, run: BaselineRun) -> dict[str, Any]:
        """Per-fold and pooled test performance, importance and the oracle ceiling, from the baseline run, scored by
        `evaluation.compare` on the rows both LightGBM and the oracle (when there is one) predicted."""
        bh = run.horizons
        test = run.predictions_test
        frames: dict[str, pl.DataFrame | None] = {"lightgbm": test.drop("fold")}
        oracle = find_oracle(Path(self.cfg.paths.oracle_dir), bh)
        if oracle is not None:
            o = oracle_predictions(oracle, bh, test.get_column(C.DATE).unique().to_list())
            o = o.join(test.select(C.DATE, C.CODE, *[C.target(h) for h in bh]), on=[C.DATE, C.CODE], how="inner")
            frames["oracle"] = o if o.height else None
        days = {
            int(pf["fold"]): test.filter(pl.col("fold") == pf["fold"]).get_column(C.DATE).unique().to_list()
            for pf in run.per_fold
        }
        comp, aligned = compare(frames, bh, days, product="lightgbm", reference="lightgbm")
        per_fold = []
        for pf in run.per_fold:
            perf = comp.per_fold[str(pf["fold"])]["lightgbm"]
            per_fold.append(
                {
                    "fold": pf["fold"],
                    "test_range": pf["test_range"],
                    "fit_range": pf["fit_range"],
                    "val_range": pf["val_range"],
                    "best_iteration": pf["best_iteration"],
                    "performance": perf,
                }
            )
            log.info("safe: fold %d 1st-horizon RankIC %.4f", pf["fold"], perf[str(bh[0])]["rank_ic_mean"])
        summary = {
            str(h): {k: _mean_std([pf["performance"][str(h)][k] for pf in per_fold]) for k in SUMMARY_KEYS} for h in bh
        }
        out = {
            "horizons": bh,
            "n_features": len(run.features),
            "directory": str(run.directory),
            "fingerprint": run.fingerprint,
            "reused": run.reused,
            "n_samples_trained": sum(sum(pf["n_train_rows"].values()) for pf in run.per_fold),
            "per_fold": per_fold,
            "summary_over_folds": summary,
            "pooled_test": comp.pooled["lightgbm"],
            "rows": comp.rows,
            "feature_importance_top": run.top_features(self.cfg.baseline.top_features),
        }
        if oracle is not None:
            out["oracle_pooled_test"] = (
                {"available": True, "n_rows": aligned["oracle"].height, **comp.pooled["oracle"]}
                if "oracle" in comp.pooled
                else {"available": False, "reason": "oracle rows do not match the dataset"}
            )
        return out

    def _final(
        self, start_time: str, total: float, df: pl.DataFrame, features: list[str], folds: list[Fold], splitter
    ) -> dict[str, Any]:
        st = self.steps = dict(sorted(self.steps.items()))  # step4 is written after step5 (it reports step5's fit)
        base = st.get("step5_baseline", {})
        perf_strings = {}
        fitted = [pf["fold"] for pf in base.get("per_fold") or []]  # safe.baseline_folds may fit fewer than the split
        for h, summ in (base.get("summary_over_folds") or {}).items():
            r = summ["rank_ic_mean"]
            if r["mean"] is not None:
                perf_strings[f"rank_ic_{h}d"] = (
                    f"{r['mean']:.4f} ± {r['std']:.4f} over {len(fitted)} fold(s) {fitted} of {len(folds)}"
                )
        if base.get("oracle_pooled_test"):
            for h, ev in base["oracle_pooled_test"].items():
                if isinstance(ev, dict) and "rank_ic_mean" in ev:
                    perf_strings[f"oracle_rank_ic_{h}d"] = f"{ev['rank_ic_mean']:.4f}"
        graph = st.get("step6_graph", {})
        return {
            "experiment_name": self.scfg.experiment_name,
            "start_time": start_time,
            "config": {
                "safe": to_dict(self.scfg),
                "baseline": to_dict(self.cfg.baseline),
                "split": splitter.describe(),
                "labels": {"horizons": list(splitter.horizons), "entry_lag": int(splitter.entry_lag)},
            },
            **st,
            "final_report": {
                "pipeline_summary": {
                    "total_duration_seconds": round(total, 3),
                    "peak_rss_mb": round(peak_rss_mb(), 1),
                    "data_processed": {
                        "samples": self._processed["samples"],
                        "features": len(features),
                        "stocks": self._processed["stocks"],
                        "dates": self._processed["dates"],
                    },
                    "performance_achieved": perf_strings,
                },
                "safety_validation": {
                    "split_method": splitter.method,
                    "walk_forward_splits": len(folds),
                    "embargo_days": splitter.embargo_days,
                    "embargo_unit": "trading days",
                    "overlaps_detected": st["step3_split"]["overlaps_detected"],
                    "min_gap_trading_days": st["step3_split"]["min_gap_trading_days"],
                    "purged_dates_per_fold": [f.purged for f in folds],
                    "normalizer_fit_span": st["step4_normalization"].get("fit_span"),
                    "early_stopping_on": "inner validation slice of the training span",
                    "label_like_features": [f for f in features if is_label_like(f)],
                    "normalization_warnings": st["step4_normalization"].get("normalization_warnings", []),
                    "dropped_features": st["step1_data_loading"].get("dropped_features", {}),
                },
                "model_performance": base.get("summary_over_folds", {}),
                "graph_structure": {
                    "nodes": graph.get("n_nodes"),
                    "edges": graph.get("n_edges"),
                    "avg_degree": graph.get("avg_degree"),
                },
            },
        }


def run_safe(cfg: Settings) -> dict[str, Any]:
    return SafeTrainingPipeline(cfg).run()
