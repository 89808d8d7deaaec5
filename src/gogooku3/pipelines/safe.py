"""SafeTrainingPipeline: the leak-free 7-step check of an ML dataset, written up as one JSON report.

1 load + validate  2 quality features  3 split (purge/embargo)  4 per-day normalization  5 LightGBM baseline
per fold  6 correlation graph  7 report `<output_dir>/experiments/safe_<timestamp>.json` (atomic).
Unlike the original, the split comes before anything is fitted, the only pooled normalization statistic is
fitted on training dates, early stopping never sees the test fold and the features are an allow-list.
Any error stops the run before the report is written.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from omegaconf import DictConfig

from gogooku3 import columns as C
from gogooku3.baseline import LightGBMBaseline
from gogooku3.config import to_dict
from gogooku3.errors import ConfigError, DataError
from gogooku3.evaluation import metrics
from gogooku3.features.manifest import FeatureManifest, is_label_like
from gogooku3.features.quality import QualityFinancialFeaturesGenerator
from gogooku3.graph import FinancialGraphBuilder, graph_snapshot
from gogooku3.io import file_fingerprint, peak_rss_mb, timestamp, write_json
from gogooku3.normalize import CrossSectionalNormalizer
from gogooku3.split import Fold, check_folds, make_splitter
from gogooku3.validation import scan_dataset, validate_dataset

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("ic_mean", "rank_ic_mean", "rank_icir", "rank_ic_tstat", "rank_ic_pos_share", "hit_rate",
                "top_bottom_spread")


def _date(v: Any) -> dt.date | None:
    if v is None or v == "":
        return None
    try:
        return v if isinstance(v, dt.date) else dt.date.fromisoformat(str(v))
    except ValueError as e:
        raise ConfigError(f"not a YYYY-MM-DD date: {v!r}") from e


def _in_dates(dates: list[dt.date]) -> pl.Expr:
    return pl.col("Date").is_in(pl.Series(dates, dtype=pl.Date).implode())


def _mean_std(values: list[float]) -> dict[str, float | None]:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"mean": None, "std": None}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}


def find_oracle(oracle_dir: Path, horizons: list[int]) -> pl.LazyFrame | None:
    """The synthetic market's oracle (Date, Code, oracle_{h}d) if one lies in `oracle_dir`."""
    if not oracle_dir.is_dir():
        return None
    for p in sorted(oracle_dir.glob("*.parquet")):
        lf = pl.scan_parquet(p)
        names = lf.collect_schema().names()
        if {"Date", "Code"} <= set(names) and any(C.oracle(h) in names for h in horizons):
            return lf
    return None


class SafeTrainingPipeline:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.scfg = cfg.safe
        self.steps: dict[str, dict[str, Any]] = {}

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
        path = Path(str(s.get("dataset") or cfg.paths.dataset))
        manifest = FeatureManifest.for_dataset(path) if path.exists() else None
        if manifest is None:
            raise DataError(f"{path}: dataset not found; build it with `gogooku3 data build`")
        horizons = [int(h) for h in cfg.labels.horizons]
        entry_lag = int(manifest.entry_lag)
        if entry_lag != int(cfg.labels.entry_lag):
            log.warning("labels.entry_lag=%s but the dataset was built with %s; using the dataset's",
                        cfg.labels.entry_lag, entry_lag)
        splitter = make_splitter(cfg.split, horizons, entry_lag)

        # 1. load + validate ------------------------------------------------------------------------------
        with self._step("step1_data_loading") as st:
            lf = scan_dataset(path, manifest, horizons, _date(s.get("start_date")), _date(s.get("end_date")))
            df = lf.collect()
            if df.height == 0:
                raise DataError(f"{path}: no rows (check safe.start_date / safe.end_date)")
            folds = splitter.split(df["Date"])
            v = s.validation
            res = validate_dataset(df, manifest, horizons, folds[0].train_dates,
                                   min_features=int(v.min_features), max_null_share=float(v.max_null_share),
                                   null_action=str(v.null_action), max_abs_target=float(v.max_abs_target),
                                   max_listed=int(v.max_listed), source=str(path))
            st.update(res.to_dict())
            st.update({"file": str(path), "file_size_mb": round(path.stat().st_size / 2**20, 2),
                       "dataset_fingerprint": file_fingerprint(path), "manifest_fingerprint": manifest.fingerprint,
                       "null_share_span": [str(folds[0].train_dates[0]), str(folds[0].train_dates[-1])]})
        features = list(res.features)
        raw = df

        # 2. quality features -----------------------------------------------------------------------------
        with self._step("step2_features") as st:
            q = s.quality
            if q.get("enabled", True):
                gen = QualityFinancialFeaturesGenerator.from_config(q)
                df, new, rep = gen.generate(df)
                features += new
                st.update(rep)
            else:
                st.update({"original_columns": df.width, "enhanced_columns": df.width, "new_features": [],
                           "n_new_features": 0, "enabled": False})
            st["n_features"] = len(features)
            raw = df

        # 3. split ------------------------------------------------------------------------------------------
        with self._step("step3_split") as st:
            proof = check_folds(folds, df["Date"], require_forward=splitter.method == "walk_forward")
            st.update({**splitter.describe(), **proof, "folds": [f.to_dict() for f in folds],
                       "avg_train_size": float(np.mean([self._rows(df, f.train_dates) for f in folds])),
                       "avg_test_size": float(np.mean([self._rows(df, f.test_dates) for f in folds])),
                       "avg_train_dates": float(np.mean([len(f.train_dates) for f in folds])),
                       "avg_test_dates": float(np.mean([len(f.test_dates) for f in folds]))})

        # 4. normalize --------------------------------------------------------------------------------------
        with self._step("step4_normalization") as st:
            schema = df.schema
            norm_feats = [f for f in features if schema[f].is_float()]
            ncfg = s.normalize
            if splitter.method == "walk_forward":
                # Per-day stats are leak-free; the pooled fallback scale is fitted on fold 0's training dates,
                # which precede every test block.
                normalizer = CrossSectionalNormalizer.from_dict(to_dict(ncfg))
                normalizer.fit(df.filter(_in_dates(folds[0].train_dates)), norm_feats)
                normed = normalizer.transform(df)
                fold_frames: Callable[[Fold], pl.DataFrame] = lambda f: normed  # noqa: E731
                st["fit_span"] = [str(folds[0].train_dates[0]), str(folds[0].train_dates[-1])]
            else:
                normalizer = CrossSectionalNormalizer.from_dict(to_dict(ncfg))
                normed = normalizer.fit_transform(df.filter(_in_dates(folds[0].train_dates)), norm_feats)

                def fold_frames(f: Fold) -> pl.DataFrame:  # one normalizer per fold, fitted on its training dates
                    n = CrossSectionalNormalizer.from_dict(to_dict(ncfg))
                    n.fit(df.filter(_in_dates(f.train_dates)), norm_feats)
                    return n.transform(df.filter(_in_dates(f.train_dates + f.test_dates)))
                st["fit_span"] = "per fold"
            st.update(normalizer.report(normed))
            st["n_normalized_features"] = len(norm_feats)
            st["n_unnormalized_flags"] = len(features) - len(norm_feats)

        # 5. baseline ---------------------------------------------------------------------------------------
        with self._step("step5_baseline") as st:
            b = s.baseline
            if b.get("enabled", True):
                st.update(self._baseline(fold_frames, folds, features, horizons, entry_lag, raw))
            else:
                st["enabled"] = False
        del normed

        # 6. graph ------------------------------------------------------------------------------------------
        with self._step("step6_graph") as st:
            g = s.graph
            if g.get("enabled", True):
                builder = FinancialGraphBuilder(window=int(g.window), method=str(g.method), halflife=float(g.halflife),
                                                shrinkage=float(g.shrinkage), threshold=float(g.threshold),
                                                k=int(g.k), min_obs=int(g.min_obs))
                st.update(graph_snapshot(raw, builder, n_nodes=int(g.n_nodes)))
            else:
                st["enabled"] = False

        # 7. report -----------------------------------------------------------------------------------------
        out_dir = Path(str(cfg.paths.output_dir)) / "experiments"
        report_path = out_dir / f"{s.get('experiment_name', 'safe')}_{timestamp()}.json"
        with self._step("step7_report") as st:
            st["report_generated"] = str(report_path)
        total = time.perf_counter() - t_start
        self.steps["step7_report"]["total_pipeline_duration"] = round(total, 3)
        report = self._final(start_time, total, df, features, folds, splitter)
        report["report_path"] = str(report_path)
        write_json(report_path, report)
        log.info("safe: report written to %s (%.1f s)", report_path, total)
        return report

    # ---- pieces ---------------------------------------------------------------------------------------
    @staticmethod
    def _rows(df: pl.DataFrame, dates: list[dt.date]) -> int:
        return int(df.filter(_in_dates(dates)).height)

    def _baseline(self, fold_frames, folds: list[Fold], features: list[str], horizons: list[int],
                  entry_lag: int, raw: pl.DataFrame) -> dict[str, Any]:
        b = self.scfg.baseline
        bh = [int(h) for h in (b.get("horizons") or horizons)]
        targets = [C.target(h) for h in bh]
        val_days = int(self.cfg.split.get("val_days", 40) or 40)
        per_fold, preds, importance = [], [], {}
        n_trained = 0
        for f in folds:
            frame = fold_frames(f)
            train = frame.filter(_in_dates(f.train_dates))
            test = frame.filter(_in_dates(f.test_dates))
            model = LightGBMBaseline.from_config(b, entry_lag=entry_lag, val_days=val_days)
            model.fit(train, features, bh)
            pred = model.predict(test).join(test.select("Date", "Code", *targets), on=["Date", "Code"])
            perf = metrics.evaluate(pred, bh)
            preds.append(pred)
            n_trained += sum(model.n_train_rows_.values())
            for k, g in model.feature_importance_.items():
                importance[k] = importance.get(k, 0.0) + g
            per_fold.append({"fold": f.index, "test_range": [str(f.test_dates[0]), str(f.test_dates[-1])],
                             "fit_range": [str(x) for x in model.fit_range_],
                             "val_range": [str(x) for x in model.val_range_],
                             "best_iteration": {str(h): it for h, it in model.best_iteration_.items()},
                             "performance": perf})
            log.info("safe: fold %d 1st-horizon RankIC %.4f", f.index, perf[str(bh[0])]["rank_ic_mean"])
        summary = {str(h): {k: _mean_std([pf["performance"][str(h)][k] for pf in per_fold]) for k in SUMMARY_KEYS}
                   for h in bh}
        all_pred = pl.concat(preds)
        pooled = metrics.evaluate(all_pred, bh)
        total = sum(importance.values()) or 1.0
        top = sorted(importance.items(), key=lambda kv: -kv[1])[: int(b.get("top_features", 20))]
        out = {"horizons": bh, "n_features": len(features), "n_samples_trained": n_trained,
               "per_fold": per_fold, "summary_over_folds": summary, "pooled_test": pooled,
               "feature_importance_top": [{"feature": k, "gain": v, "share": v / total} for k, v in top]}
        oracle = find_oracle(Path(str(self.cfg.paths.oracle_dir)), bh)
        if oracle is not None:
            out["oracle_pooled_test"] = self._oracle(oracle, all_pred, bh)
        return out

    @staticmethod
    def _oracle(oracle: pl.LazyFrame, pred: pl.DataFrame, horizons: list[int]) -> dict[str, Any]:
        """RankIC of the oracle expectation with the realized labels on the same test rows (the ceiling)."""
        names = oracle.collect_schema().names()
        hs = [h for h in horizons if C.oracle(h) in names]
        keys = pred.select("Date", "Code", *[C.target(h) for h in hs])
        o = (oracle.select("Date", "Code", *[pl.col(C.oracle(h)).alias(C.pred(h)) for h in hs])
             .with_columns(pl.col("Code").cast(pl.Utf8), pl.col("Date").cast(pl.Date))
             .join(keys.lazy(), on=["Date", "Code"], how="inner").collect())
        if o.height == 0:
            return {"available": False, "reason": "oracle rows do not match the dataset"}
        ev = metrics.evaluate(o, hs)
        return {"available": True, "n_rows": o.height, **ev}

    def _final(self, start_time: str, total: float, df: pl.DataFrame, features: list[str], folds: list[Fold],
               splitter) -> dict[str, Any]:
        st = self.steps
        base = st.get("step5_baseline", {})
        perf_strings = {}
        for h, summ in (base.get("summary_over_folds") or {}).items():
            r = summ["rank_ic_mean"]
            if r["mean"] is not None:
                perf_strings[f"rank_ic_{h}d"] = f"{r['mean']:.4f} ± {r['std']:.4f} over {len(folds)} folds"
        if base.get("oracle_pooled_test"):
            for h, ev in base["oracle_pooled_test"].items():
                if isinstance(ev, dict) and "rank_ic_mean" in ev:
                    perf_strings[f"oracle_rank_ic_{h}d"] = f"{ev['rank_ic_mean']:.4f}"
        graph = st.get("step6_graph", {})
        return {
            "experiment_name": str(self.scfg.get("experiment_name", "safe")),
            "start_time": start_time,
            "config": {"safe": to_dict(self.scfg), "split": splitter.describe(),
                       "labels": {"horizons": [int(h) for h in self.cfg.labels.horizons],
                                  "entry_lag": int(splitter.entry_lag)}},
            **st,
            "final_report": {
                "pipeline_summary": {
                    "total_duration_seconds": round(total, 3),
                    "peak_rss_mb": round(peak_rss_mb(), 1),
                    "data_processed": {"samples": df.height, "features": len(features),
                                       "stocks": df["Code"].n_unique(), "dates": df["Date"].n_unique()},
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
                "graph_structure": {"nodes": graph.get("n_nodes"), "edges": graph.get("n_edges"),
                                    "avg_degree": graph.get("avg_degree")},
            },
        }


def run_safe(cfg: DictConfig) -> dict[str, Any]:
    return SafeTrainingPipeline(cfg).run()

