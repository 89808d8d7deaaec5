"""The LightGBM baseline: one regressor per horizon and fold, early-stopped on an inner validation slice, fitted once
and shared by `gogooku3 safe` and `gogooku3 train`.

`LightGBMBaseline` fits one fold. The validation slice is cut from the end of the training dates with a gap of
h_max + entry_lag sessions, so no fit label reaches into it and the test fold is never used for model selection.
Features come from an explicit allow-list (the manifest's names); a label-like name there is a LeakageError.

`fit_baseline` runs the folds on per-day normalized features (`baseline.normalize`): one normalizer fitted on fold 0's
training dates when those precede every test block (walk-forward), else one per fold fitted on its own training dates
(purged k-fold). The result, a `BaselineRun` (predictions of every inner-validation and test day, per-fold ranges and
best iterations, gain importance, the boosters), is stored content-addressed under
`<paths.output_dir>/baselines/<fingerprint>/`: the fingerprint covers the dataset and manifest files, the folds' dates,
horizons, entry lag, `split.val_days`, the `baseline` group and the feature-screening keys of `safe.validation`, so a
later `safe` or `train` on the same inputs reuses it (`baseline_for_folds`, `load_or_fit`).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightgbm as lgb
import numpy as np
import polars as pl

from gogooku3.config.compose import to_dict
from gogooku3.core import columns as C
from gogooku3.core.errors import DataError, LeakageError, SchemaError, TrainingError
from gogooku3.core.io import (
    file_fingerprint,
    fingerprint,
    read_json,
    write_json,
    write_parquet,
)
from gogooku3.core.stores import (
    check_files,
    clean_leftovers,
    file_records,
    mark,
    new_owned_dir,
    owned,
    publish_dir,
    temp_dir_for,
)
from gogooku3.data.normalize import CrossSectionalNormalizer
from gogooku3.data.split import Fold, inner_holdout, label_gap
from gogooku3.data.validation import scan_dataset, screen_dates, screen_folds, union_features
from gogooku3.evaluation.neutral import Exposures, neutral_labels, targets_spec, with_labels
from gogooku3.features.manifest import FeatureManifest, is_label_like
from gogooku3.features.published import dataset_files, pin

if TYPE_CHECKING:
    from gogooku3.config.schema import BaselineSettings, NormalizerSettings, SafeValidationSettings, Settings

log = logging.getLogger(__name__)

TARGET_TRANSFORMS = ("raw", "demean", "rank")
BASELINE_VERSION = 1  # bump when a change alters what a stored run holds
REPORT_ONLY_KEYS = ("enabled", "top_features", "workers")  # baseline keys that do not change a fit (not fingerprinted)
SCREEN_KEYS = ("max_null_share", "null_action")  # safe.validation keys that choose the features
RUN_FILE = "run.json"
PREDICTIONS = ("predictions_val", "predictions_test")


def horizon_workers(workers: Any, params: dict[str, Any]) -> int:
    """`baseline.workers`: horizons boosted at once; auto = as many as the cores allow at `params.num_threads` each."""
    if workers == "auto":
        per = int(params.get("num_threads") or 0) or (os.cpu_count() or 1)
        return max(1, (os.cpu_count() or 1) // per)
    return max(1, int(workers))


def _target_expr(col: str, how: str) -> pl.Expr:
    """Per-day transform of the training label (same day's labels only)."""
    y = pl.col(col).cast(pl.Float64)
    if how == "raw":
        return y
    if how == "demean":
        return y - y.mean().over(C.DATE)
    # rank -> uniform in (-0.5, 0.5): robust to fat tails, the objective of a cross-sectional ranker
    return (y.rank("average").over(C.DATE) - 0.5) / y.count().over(C.DATE) - 0.5


def _in_dates(dates: Iterable[dt.date]) -> pl.Expr:
    return pl.col(C.DATE).is_in(pl.Series(list(dates), dtype=pl.Date).implode())


def check_features(features: Sequence[str], horizons: Sequence[int]) -> None:
    """LeakageError when a label-like name (target_*, feat_ret_*, ...) is among the features."""
    bad = [f for f in features if is_label_like(f) or f in {C.target(h) for h in horizons}]
    if bad:
        raise LeakageError(
            f"baseline: label-like column(s) in the feature list: {', '.join(bad)}; "
            "labels can never be features (check the manifest)"
        )


class LightGBMBaseline:
    """`fit(train_df, features, horizons, val_df=None)` / `predict(df)`; `feature_importance_` = total gain.

    Every setting is explicit (the `baseline` config group holds the values; `from_config` reads it).
    """

    def __init__(
        self,
        params: dict[str, Any],
        *,
        num_boost_round: int,
        early_stopping_rounds: int,
        val_days: int,
        entry_lag: int,
        target_transform: str,
        workers: int,
        holdout_days: int,
    ) -> None:
        if target_transform not in TARGET_TRANSFORMS:
            raise DataError(f"baseline.target_transform must be one of {TARGET_TRANSFORMS}, got '{target_transform}'")
        self.params = dict(params)
        self.num_boost_round = int(num_boost_round)
        self.early_stopping_rounds = int(early_stopping_rounds)
        self.val_days = int(val_days)
        self.holdout_days = int(holdout_days)  # split.holdout_days: predicted, never early-stopped on
        self.entry_lag = int(entry_lag)
        self.target_transform = target_transform
        self.workers = int(workers)  # horizons boosted at once (threads), each on params["num_threads"]

    @classmethod
    def from_config(cls, b: BaselineSettings, entry_lag: int, val_days: int, holdout_days: int) -> LightGBMBaseline:
        """From the `baseline` config node (params, num_boost_round, early_stopping_rounds, target_transform,
        workers); `val_days` / `holdout_days` are `split`'s."""
        params = to_dict(b.params)  # a copy
        return cls(
            params,
            num_boost_round=b.num_boost_round,
            early_stopping_rounds=b.early_stopping_rounds,
            val_days=int(val_days),
            entry_lag=int(entry_lag),
            target_transform=b.target_transform,
            workers=horizon_workers(b.workers, params),
            holdout_days=int(holdout_days),
        )

    # ---- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _matrix(df: pl.DataFrame, features: Sequence[str]) -> np.ndarray:
        # nulls -> NaN: LightGBM routes missing values itself (no fill-with-0 as in the original)
        return df.select([pl.col(f).cast(pl.Float32) for f in features]).to_numpy().astype(np.float32, copy=False)

    def _check(self, df: pl.DataFrame, features: Sequence[str], horizons: Sequence[int]) -> None:
        check_features(features, horizons)
        need = [C.DATE, C.CODE, *features, *(C.target(h) for h in horizons)]
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise SchemaError(f"baseline: missing column(s) {', '.join(missing[:8])}")

    # ---- fit / predict ------------------------------------------------------------------------------
    def fit(
        self,
        train_df: pl.DataFrame,
        features: Sequence[str],
        horizons: Sequence[int],
        val_df: pl.DataFrame | None = None,
    ) -> LightGBMBaseline:
        features, horizons = list(features), [int(h) for h in horizons]
        self._check(train_df, features, horizons)
        self.holdout_dates_: list[dt.date] = []
        if val_df is None:
            gap = label_gap(horizons, self.entry_lag)
            dates = train_df[C.DATE].unique().sort().to_list()
            fit_dates, val_dates, self.holdout_dates_ = inner_holdout(dates, self.val_days, gap, self.holdout_days)
            fit_df = train_df.filter(_in_dates(fit_dates))
            val_df = train_df.filter(_in_dates(val_dates))
        else:
            self._check(val_df, features, horizons)
            fit_df = train_df
            if cast(dt.date, val_df[C.DATE].min()) <= cast(dt.date, fit_df[C.DATE].max()):
                raise LeakageError("baseline: validation slice must lie after the fit dates")
        self.fit_range_ = (fit_df[C.DATE].min(), fit_df[C.DATE].max())
        self.val_range_ = (val_df[C.DATE].min(), val_df[C.DATE].max())
        self.val_dates_: list[dt.date] = val_df[C.DATE].unique().sort().to_list()
        x_fit, x_val = self._matrix(fit_df, features), self._matrix(val_df, features)
        labels = {h: (self._labels(fit_df, h), self._labels(val_df, h)) for h in horizons}
        return self.fit_arrays(x_fit, x_val, labels, features, horizons)

    def fit_arrays(
        self,
        x_fit: np.ndarray,
        x_val: np.ndarray,
        labels: dict[int, tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]],
        features: Sequence[str],
        horizons: Sequence[int],
    ) -> LightGBMBaseline:
        """Boost every horizon on float32 matrices (rows × `features`, NaN = missing) and per horizon the (label,
        weight) pairs of the fit and validation rows (`_labels`). `fit` calls it; a caller that builds the matrices
        itself (`fit_baseline`, column block by column block) sets fit_range_, val_range_, val_dates_ and
        holdout_dates_ first. Each booster's binned training data is freed once it is trained."""
        features, horizons = list(features), [int(h) for h in horizons]
        self.features_, self.horizons_ = features, horizons
        self.models_: dict[int, lgb.Booster] = {}
        self.best_iteration_: dict[int, int] = {}
        self.importance_by_horizon_: dict[int, dict[str, float]] = {}
        self.n_train_rows_: dict[int, int] = {}
        for h, ((_, w_fit), (_, w_val)) in labels.items():
            if w_fit.sum() < 100 or w_val.sum() < 10:
                raise TrainingError(
                    f"baseline {h}d: too few labelled rows (fit {int(w_fit.sum())}, validation {int(w_val.sum())})"
                )
        ds_params: dict[str, Any] = {k: self.params[k] for k in ("max_bin", "verbosity") if k in self.params}

        def fit_one(h: int) -> lgb.Booster:
            # Each horizon bins the same matrix into its own Dataset (same bins), so horizons can train at once:
            # LightGBM releases the GIL while it boosts.
            (y_fit, w_fit), (y_val, w_val) = labels[h]
            ds_fit = lgb.Dataset(
                x_fit, label=y_fit, weight=w_fit, feature_name=features, free_raw_data=False, params=ds_params
            )
            ds_val = lgb.Dataset(x_val, label=y_val, weight=w_val, reference=ds_fit, free_raw_data=False)
            booster = lgb.train(
                self.params,
                ds_fit,
                num_boost_round=self.num_boost_round,
                valid_sets=[ds_val],
                valid_names=["val"],
                callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
            )
            return booster.free_dataset()  # the binned copy (rows × features bytes) is not needed to predict

        if self.workers > 1 and len(horizons) > 1:
            with ThreadPoolExecutor(max_workers=min(self.workers, len(horizons))) as pool:
                boosters = dict(zip(horizons, pool.map(fit_one, horizons), strict=True))
        else:
            boosters = {h: fit_one(h) for h in horizons}
        for h in horizons:
            booster = boosters[h]
            self.models_[h] = booster
            self.best_iteration_[h] = int(booster.best_iteration or booster.current_iteration())
            gain = booster.feature_importance("gain", iteration=self.best_iteration_[h])
            self.importance_by_horizon_[h] = {f: float(g) for f, g in zip(features, gain, strict=True)}
            self.n_train_rows_[h] = int(labels[h][0][1].sum())
            log.debug("baseline %dd: best iteration %d", h, self.best_iteration_[h])
        self.feature_importance_ = _sum_importance(self.importance_by_horizon_.values())
        return self

    def _labels(self, df: pl.DataFrame, h: int) -> tuple[np.ndarray, np.ndarray]:
        col = C.target(h)
        y = df.select(_target_expr(col, self.target_transform).alias("y"))["y"]
        y = y.fill_nan(None)
        w = y.is_not_null().cast(pl.Float32).to_numpy()
        return y.fill_null(0.0).to_numpy().astype(np.float32), w

    def predict(self, df: pl.DataFrame) -> pl.DataFrame:
        """Date, Code, pred_{h}d for every row of `df`."""
        if not hasattr(self, "models_"):
            raise TrainingError("LightGBMBaseline.predict called before fit")
        missing = [c for c in [C.DATE, C.CODE, *self.features_] if c not in df.columns]
        if missing:
            raise SchemaError(f"baseline predict: missing column(s) {', '.join(missing[:8])}")
        preds = self.predict_matrix(self._matrix(df, self.features_))
        return df.select(C.DATE, C.CODE).with_columns([pl.Series(k, v) for k, v in preds.items()])

    def predict_matrix(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """pred_{h}d -> float32 predictions of the rows of x (rows × `features_`, as `_matrix` makes it)."""
        return {
            # a dense matrix in -> an ndarray out (the stub's union also covers sparse input and pred_contrib)
            C.pred(h): cast(np.ndarray, self.models_[h].predict(x, num_iteration=self.best_iteration_[h])).astype(
                np.float32
            )
            for h in self.horizons_
        }

    def top_features(self, n: int) -> list[dict[str, Any]]:
        return _top(self.feature_importance_, n)


def _sum_importance(parts: Iterable[dict[str, float]]) -> dict[str, float]:
    """Gains summed over parts, largest first."""
    total: dict[str, float] = {}
    for imp in parts:
        for f, g in imp.items():
            total[f] = total.get(f, 0.0) + float(g)
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


def _top(importance: dict[str, float], n: int) -> list[dict[str, Any]]:
    total = sum(importance.values()) or 1.0
    return [{"feature": f, "gain": g, "share": g / total} for f, g in list(importance.items())[:n]]


# ---------------------------------------------------------------------------------------------- the stored run
@dataclass
class BaselineRun:
    """The baseline on a set of folds: predictions on every inner-validation and test day, per-fold facts, importance.

    Prediction frames: `fold` (Int32), Date, Code, pred_{h}d (Float32), target_{h}d; one row per dataset row of the
    fold's inner-validation (test) days. `per_fold`: fold, fit_range, val_range, test_range, best_iteration and
    n_train_rows per horizon, feature_importance (gain). `models`: the boosters in memory, (fold, h) -> Booster;
    a loaded run reads them from `directory` on demand (`booster`).
    """

    fingerprint: str
    horizons: list[int]
    features: list[str]
    predictions_val: pl.DataFrame
    predictions_test: pl.DataFrame
    per_fold: list[dict[str, Any]]
    feature_importance: dict[str, float]
    directory: Path | None = None
    normalization: dict[str, Any] = field(default_factory=dict)  # the reference normalizer's report
    models: dict[tuple[int, int], lgb.Booster] = field(default_factory=dict, repr=False)
    safe_report: str | None = None  # the latest `gogooku3 safe` report written from this run
    reused: bool = False  # set by `load_or_fit`: read from the store rather than fitted now (not saved)

    @property
    def fold_indices(self) -> list[int]:
        return [int(pf["fold"]) for pf in self.per_fold]

    def top_features(self, n: int) -> list[dict[str, Any]]:
        return _top(self.feature_importance, n)

    def booster(self, fold: int, h: int) -> lgb.Booster:
        """The fold's booster of horizon h (from memory, else from the stored `fold{k}_{h}d.txt`)."""
        key = (int(fold), int(h))
        if key not in self.models:
            path = self.booster_path(*key)
            _check_stored(path.parent, read_json(path.parent / RUN_FILE), [path.name])
            self.models[key] = lgb.Booster(model_file=str(path))
        return self.models[key]

    def booster_path(self, fold: int, h: int) -> Path:
        path = self.directory / model_file(fold, h) if self.directory is not None else None
        if path is None or not path.exists():
            raise DataError(
                f"baseline: booster file of fold {fold}, {h}d missing ({path or 'run not saved'}); "
                "delete the run directory to refit"
            )
        return path

    def folds(self, indices: Iterable[int]) -> BaselineRun:
        """The same run restricted to the given fold indices (importance summed over those folds only)."""
        keep = [int(i) for i in indices]
        absent = [i for i in keep if i not in self.fold_indices]
        if absent:
            raise DataError(f"baseline run {self.fingerprint}: no fold(s) {absent} (has {self.fold_indices})")
        per_fold = [pf for pf in self.per_fold if int(pf["fold"]) in keep]
        sel = pl.col("fold").is_in(keep)
        return BaselineRun(
            self.fingerprint,
            list(self.horizons),
            list(self.features),
            self.predictions_val.filter(sel),
            self.predictions_test.filter(sel),
            per_fold,
            _sum_importance(pf["feature_importance"] for pf in per_fold),
            self.directory,
            dict(self.normalization),
            {k: m for k, m in self.models.items() if k[0] in keep},
            self.safe_report,
            self.reused,
        )

    def merge(self, other: BaselineRun) -> BaselineRun:
        """This run's folds plus `other`'s (other's fold wins where both have it); same fingerprint required."""
        if other.fingerprint != self.fingerprint:
            raise DataError(f"baseline: cannot merge runs {self.fingerprint} and {other.fingerprint}")
        theirs = set(other.fold_indices)
        mine = [k for k in self.fold_indices if k not in theirs]
        a, b = self.folds(mine), other
        per_fold = sorted(a.per_fold + b.per_fold, key=lambda pf: int(pf["fold"]))
        pred_val, pred_test = (
            pl.concat([getattr(a, n), getattr(b, n)]).sort("fold", C.DATE, C.CODE) for n in PREDICTIONS
        )
        return BaselineRun(
            self.fingerprint,
            list(self.horizons),
            list(self.features),
            pred_val,
            pred_test,
            per_fold,
            _sum_importance(pf["feature_importance"] for pf in per_fold),
            self.directory,
            dict(other.normalization or self.normalization),
            {**a.models, **b.models},
            other.safe_report or self.safe_report,
        )

    # ---- persistence ----------------------------------------------------------------------------------
    def save(self, root: str | Path) -> Path:
        """Write run.json (with every file's size and checksum), the prediction parquets and the boosters into
        `.<root>.<host>-<pid>.tmp/` (the project's marker first), then publish it as `root` in one atomic step
        (`core.stores.publish_dir`): a reader sees the old run or the new one, never half of one."""
        root = Path(root)
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = new_owned_dir(temp_dir_for(root), "baseline")
        try:
            names = []
            for k in self.fold_indices:
                for h in self.horizons:
                    dst = tmp / model_file(k, h)
                    if (k, h) in self.models:
                        self.models[(k, h)].save_model(str(dst))
                    else:
                        shutil.copyfile(self.booster_path(k, h), dst)
                    names.append(dst.name)
            for name in PREDICTIONS:
                write_parquet(getattr(self, name), tmp / f"{name}.parquet")
                names.append(f"{name}.parquet")
            write_json(tmp / RUN_FILE, {**self.metadata(), "files": file_records(tmp, names)})
            if root.exists() and not owned(root) and _earlier_store(root):
                mark(root, "baseline")  # an earlier version's store of this fingerprint: ours to replace
            step = f"publish baseline {root.name}"
            if not publish_dir(tmp, root, step):  # another process published it meanwhile: this run replaces it
                publish_dir(tmp, root, step)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.directory = root
        return root

    def metadata(self) -> dict[str, Any]:
        return {
            "version": BASELINE_VERSION,
            "fingerprint": self.fingerprint,
            "horizons": self.horizons,
            "features": self.features,
            "folds": self.fold_indices,
            "per_fold": self.per_fold,
            "feature_importance": self.feature_importance,
            "normalization": self.normalization,
            "safe_report": self.safe_report,
        }

    def record_safe_report(self, path: str | Path) -> None:
        """Point the stored run at the safe report written from it (run.json rewritten atomically)."""
        self.safe_report = str(path)
        if self.directory is not None and (self.directory / RUN_FILE).exists():
            meta = read_json(self.directory / RUN_FILE)
            write_json(self.directory / RUN_FILE, {**meta, "safe_report": self.safe_report})

    @classmethod
    def load(cls, root: str | Path) -> BaselineRun:
        root = Path(root)
        meta = read_json(root / RUN_FILE)
        if not isinstance(meta, dict) or meta.get("version") != BASELINE_VERSION:
            raise DataError(
                f"{root / RUN_FILE}: baseline run version {meta.get('version') if isinstance(meta, dict) else None}, "
                f"this code writes {BASELINE_VERSION}; delete {root} to refit"
            )
        _check_stored(root, meta, None)
        try:
            pred_val, pred_test = (pl.read_parquet(root / f"{n}.parquet") for n in PREDICTIONS)
            return cls(
                str(meta["fingerprint"]),
                [int(h) for h in meta["horizons"]],
                list(meta["features"]),
                pred_val,
                pred_test,
                list(meta["per_fold"]),
                dict(meta["feature_importance"]),
                root,
                dict(meta.get("normalization") or {}),
                safe_report=meta.get("safe_report"),
            )
        except (KeyError, TypeError, OSError, pl.exceptions.PolarsError) as e:
            raise DataError(f"{root}: not a readable baseline run ({type(e).__name__}: {e}); delete it to refit") from e


def model_file(fold: int, h: int) -> str:
    return f"fold{int(fold)}_{int(h)}d.txt"


def _check_stored(root: Path, meta: Any, names: Iterable[str] | None) -> None:
    """DataError when a stored file (`names`; None: every file run.json lists) differs from the size and checksum
    run.json records. Runs stored before checksums were recorded are not checked."""
    files = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(files, dict):
        return
    wanted = files if names is None else {n: files[n] for n in names if n in files}
    problem = check_files(root, wanted)
    if problem is not None:
        raise DataError(f"baseline store {root}: {problem}; delete it to refit")


def _earlier_store(root: Path) -> bool:
    """Whether `root` (no marker) holds a run this project stored before it wrote markers: its run.json names the
    folder's own fingerprint."""
    try:
        meta = read_json(root / RUN_FILE)
    except DataError:
        return False
    return isinstance(meta, dict) and meta.get("fingerprint") == root.name


def clean_store(store: Path) -> list[Path]:
    """Remove the temporary folders killed saves left in the baseline store (`core.stores.clean_leftovers`: only the
    project's, of processes that are gone), putting back a run a killed save had set aside."""
    return clean_leftovers(Path(store), lambda d: (d / RUN_FILE).is_file(), "baseline store")


# ---------------------------------------------------------------------------------------------- fitting
def fold_span(folds: Sequence[Fold]) -> tuple[dt.date, dt.date]:
    """First and last date any fold reads."""
    dates = [d for f in folds for d in (f.train_dates[0], f.train_dates[-1], f.test_dates[0], f.test_dates[-1])]
    return min(dates), max(dates)


def _normalized(
    df: pl.DataFrame, features: list[str], folds: Sequence[Fold], ncfg: NormalizerSettings
) -> tuple[Callable[[Fold], pl.DataFrame], dict[str, Any]]:
    """(fold -> its normalized frame, the reference normalizer's report on fold 0's training rows).

    When fold 0's training dates precede every test block (walk-forward) one normalizer fitted on them serves every
    fold (its pooled fallback scale sees no test date; per-day statistics are leak-free); otherwise (purged k-fold)
    each fold gets its own, fitted on its training dates.
    """
    settings = to_dict(ncfg)
    first = folds[0]
    n0 = CrossSectionalNormalizer.from_dict(settings).fit(df.filter(_in_dates(first.train_dates)), features)
    if all(first.train_dates[-1] < f.test_dates[0] for f in folds):
        normed = n0.transform(df)
        span = [str(first.train_dates[0]), str(first.train_dates[-1])]
        return (lambda f: normed), {**n0.report(normed.filter(_in_dates(first.train_dates))), "fit_span": span}

    def per_fold(f: Fold) -> pl.DataFrame:
        n = CrossSectionalNormalizer.from_dict(settings).fit(df.filter(_in_dates(f.train_dates)), features)
        return n.transform(df.filter(_in_dates(f.train_dates + f.test_dates)))

    return per_fold, {**n0.report(n0.transform(df.filter(_in_dates(first.train_dates)))), "fit_span": "per fold"}


BLOCK_VALUES = 1 << 26  # values per column block read from the dataset (~64 M: ~0.5 GB as Float64 temporaries)


def _blocks(columns: Sequence[str], rows: int) -> list[list[str]]:
    per = max(1, BLOCK_VALUES // max(rows, 1))
    return [list(columns[i : i + per]) for i in range(0, len(columns), per)]


def _fit_normalizer(lf: pl.LazyFrame, floats: list[str], ncfg: NormalizerSettings) -> CrossSectionalNormalizer:
    """`CrossSectionalNormalizer.fit` on the rows of lf, one collected column block at a time: each feature's
    statistics are its own, so this equals fitting the collected frame (the eager engine, as `_normalized` does)."""
    settings = to_dict(ncfg)
    rows = int(lf.select(pl.len()).collect().item())
    parts = [
        CrossSectionalNormalizer.from_dict(settings).fit(lf.select(C.DATE, *block).collect(), block)
        for block in _blocks(floats, rows)
    ]
    n = CrossSectionalNormalizer.from_dict(settings)
    if not parts:
        return n.fit(lf.select(C.DATE).collect(), floats)  # no float feature: fit raises its one-line error
    n.features_ = list(floats)
    n.fallback_std_ = {f: v for p in parts for f, v in p.fallback_std_.items()}
    day_level = {f for p in parts for f in p.day_level_}
    n.day_level_ = [f for f in floats if f in day_level]
    n.fit_range_, n.n_fit_rows_ = parts[0].fit_range_, parts[0].n_fit_rows_
    return n


def _block_report(lf: pl.LazyFrame, norm: CrossSectionalNormalizer, floats: list[str]) -> dict[str, Any]:
    """`norm.report(norm.transform(lf.collect()))`, one column block at a time."""
    rows = int(lf.select(pl.len()).collect().item())
    means: list[Any] = []
    stds: list[Any] = []
    nans = 0
    for block in _blocks(floats, rows):
        sub = norm.subset(block)
        m, sd, n = sub.report_stats(sub.transform(lf.select(C.DATE, *block).collect()))
        means, stds, nans = means + m, stds + sd, nans + n
    return {**norm.report(None, stats=(means, stds, nans)), "fit_span": "per fold"}


def _fold_matrices(
    src: pl.LazyFrame,
    day: pl.Series,
    norm: CrossSectionalNormalizer,
    features: list[str],
    feats: list[str],
    floats: list[str],
    rows: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """name -> float32 matrix of the rows `rows[name]` of src (indices in its row order; `day`: src's Date per row) ×
    `feats`, normalized by `norm` (its float features), read and normalized a column block at a time: the whole
    normalized frame is never held. Only the days `rows` cover are read: the per-day normalization of a day needs that
    day's rows alone (at 4,000 x 2,500 a fold's fit days are a fifth of the span, thinned by `baseline.max_fit_rows`).
    With `day_level=time_z` a day also needs its trailing sessions: src is read whole then."""
    if not norm.history_days:
        days = day.gather(np.unique(np.concatenate(list(rows.values())))).unique().sort()
        pos = np.flatnonzero(day.is_in(days.implode()).to_numpy())  # the filter keeps src's order
        rows = {name: np.searchsorted(pos, ix) for name, ix in rows.items()}
        src = src.filter(_in_dates(days.to_list()))
    n_rows = int(src.select(pl.len()).collect().item())
    col = {f: j for j, f in enumerate(feats)}
    mats = {name: np.empty((len(ix), len(feats)), dtype=np.float32) for name, ix in rows.items()}
    float_set = set(floats)
    for block in _blocks([f for f in features if f in col], n_rows):
        frame = src.select(C.DATE, *block).collect()
        normed = [f for f in block if f in float_set]
        if normed:
            frame = norm.subset(normed).transform(frame)
        x = LightGBMBaseline._matrix(frame, block)
        cols = [col[f] for f in block]
        for name, ix in rows.items():
            mats[name][:, cols] = x[ix]
        del frame
    return mats


def thin_fit_dates(fit_dates: Sequence[dt.date], day: pl.Series, max_rows: int | None) -> tuple[list[dt.date], int]:
    """(dates, k): every k-th of `fit_dates` counted back from the newest, k the smallest stride for which the rows of
    `day` (the Date of each row) on the dates kept are at most `max_rows` (or k = 1 when all of them are, or when
    `max_rows` is None). Whole days are kept, so every day's cross-section (the rank target's) stays complete."""
    dates = sorted(fit_dates)
    if max_rows is None or not dates:
        return dates, 1
    counts = (
        day.filter(day.is_in(pl.Series(dates, dtype=pl.Date).implode()))
        .value_counts(name="n")
        .sort(day.name, descending=True)
    )
    n = counts["n"].to_numpy()
    k = 1
    while int(n[::k].sum()) > max_rows and k < len(n):
        k += 1
    kept = set(counts[day.name].to_list()[::k])
    return [d for d in dates if d in kept], k


def _rows(model: LightGBMBaseline, frame: pl.DataFrame, fold: int, horizons: list[int]) -> pl.DataFrame:
    """fold, Date, Code, pred_{h}d, target_{h}d for every row of `frame`."""
    pred = model.predict(frame)
    return pl.concat([pred, frame.select([C.target(h) for h in horizons])], how="horizontal").select(
        pl.lit(fold, pl.Int32).alias("fold"), pl.all()
    )


def fit_baseline(
    df: pl.DataFrame | pl.LazyFrame,
    features: Sequence[str],
    folds: Sequence[Fold],
    horizons: Sequence[int],
    entry_lag: int,
    val_days: int,
    cfg: BaselineSettings,
    *,
    only: Iterable[int] | None = None,
    fingerprint_: str = "",
    holdout_days: int,
    fold_features: Mapping[int, Sequence[str]] | None = None,
    neutral: Exposures | None = None,
) -> BaselineRun:
    """Normalize (`cfg.normalize`) and fit `LightGBMBaseline` per fold (`cfg`: the `baseline` config node).

    `folds` is the whole split (fold 0 anchors the normalization and the rows read); `only` the fold indices to fit
    (default all). Each fold early-stops on the validation slice of `split.inner_holdout(train_dates, val_days,
    max(horizons) + entry_lag, holdout_days)` and predicts its validation, held-out (in `predictions_val`) and test
    days. `fold_features`: fold index -> the features that fold fits on (its own null screen, `screen_folds`; default
    `features` for every fold), each a subset of `features` (recorded per fold as `features`). `neutral`: fit on labels
    residualised per day against these exposures (`neutral.targets`; the predictions carry the raw labels).
    """
    features, horizons = list(features), [int(h) for h in horizons]
    check_features(features, horizons)
    by_index = {f.index: f for f in folds}
    todo = sorted(by_index) if only is None else sorted({int(k) for k in only})
    unknown = [k for k in todo if k not in by_index]
    if unknown or not todo:
        raise DataError(f"baseline: fold(s) {unknown or todo} not in the split (folds {sorted(by_index)})")
    lo, hi = fold_span(folds)
    lf = df.lazy().filter(pl.col(C.DATE).is_between(lo, hi))
    schema = lf.collect_schema()
    missing = [c for c in [C.DATE, C.CODE, *features, *(C.target(h) for h in horizons)] if c not in schema]
    if missing:
        raise SchemaError(f"baseline: dataset lacks column(s) {', '.join(missing[:8])}")
    floats = [f for f in features if schema[f].is_float()]
    first = folds[0]
    shared = all(first.train_dates[-1] < f.test_dates[0] for f in folds)  # walk-forward: one normalizer (`_normalized`)
    n0 = _fit_normalizer(lf.filter(_in_dates(first.train_dates)), floats, cfg.normalize)
    # as `_normalized`: the reference normalizer's report on fold 0's training rows
    norm_report = _block_report(lf.filter(_in_dates(first.train_dates)), n0, floats)
    if shared:
        norm_report["fit_span"] = [str(first.train_dates[0]), str(first.train_dates[-1])]
    vals: list[pl.DataFrame] = []
    tests: list[pl.DataFrame] = []
    per_fold: list[dict[str, Any]] = []
    models: dict[tuple[int, int], lgb.Booster] = {}
    for k in todo:
        f = by_index[k]
        # the rows `_normalized` transforms for this fold, in file order
        src = lf if shared else lf.filter(_in_dates(f.train_dates + f.test_dates))
        norm = n0 if shared else _fit_normalizer(lf.filter(_in_dates(f.train_dates)), floats, cfg.normalize)
        feats = list(fold_features[k]) if fold_features is not None else features
        model = LightGBMBaseline.from_config(cfg, entry_lag, val_days, holdout_days)
        meta = src.select(C.DATE, C.CODE, *[C.target(h) for h in horizons]).collect()
        day = meta.get_column(C.DATE)
        train_dates = day.filter(day.is_in(pl.Series(f.train_dates, dtype=pl.Date).implode())).unique().sort()
        fit_dates, val_dates, model.holdout_dates_ = inner_holdout(
            train_dates.to_list(), val_days, label_gap(horizons, entry_lag), holdout_days
        )
        fit_dates, stride = thin_fit_dates(fit_dates, day, cfg.max_fit_rows)
        if stride > 1:
            log.info(
                "baseline: fold %d fits on 1 in %d fit dates (%d of them; baseline.max_fit_rows=%d)",
                k,
                stride,
                len(fit_dates),
                cfg.max_fit_rows,
            )
        rows = {
            name: np.flatnonzero(day.is_in(pl.Series(dates, dtype=pl.Date).implode()).to_numpy())
            for name, dates in (
                ("fit", fit_dates),
                ("val", val_dates),
                ("val_hold", val_dates + model.holdout_dates_),
                ("test", list(f.test_dates)),
            )
        }
        # the fit and early-stopping matrices first; the predicted rows' only once the fit's matrix is freed (a second
        # read of the columns: at 4,000 x 2,500 the test matrix alone is ~1.7 GB, held beside LightGBM's binned data)
        fit_rows = {name: rows[name] for name in ("fit", "val")}
        t0 = time.perf_counter()
        mats = _fold_matrices(src, day, norm, features, feats, floats, fit_rows)
        t_fit_mats = time.perf_counter() - t0
        fit_on = meta  # the labels the fold fits and early-stops on (raw, or residualised: `neutral`)
        if neutral is not None:  # per day, on the dataset's raw exposures of the same rows
            cols = [C.DATE, C.CODE, *dict.fromkeys([*neutral.columns, *(C.target(h) for h in horizons)])]
            fit_on = with_labels(meta, neutral_labels(src.select(cols).collect(), horizons, neutral))
        fit_meta, val_meta = fit_on[rows["fit"]], fit_on[rows["val"]]
        model.fit_range_ = (fit_meta[C.DATE].min(), fit_meta[C.DATE].max())
        model.val_range_ = (val_meta[C.DATE].min(), val_meta[C.DATE].max())
        model.val_dates_ = val_meta[C.DATE].unique().sort().to_list()
        labels = {h: (model._labels(fit_meta, h), model._labels(val_meta, h)) for h in horizons}
        del fit_meta, fit_on
        x_fit = mats.pop("fit")
        t0 = time.perf_counter()
        model.fit_arrays(x_fit, mats.pop("val"), labels, feats, horizons)
        t_boost = time.perf_counter() - t0
        del x_fit, labels
        pred_rows = {name: rows[name] for name in ("val_hold", "test")}
        t0 = time.perf_counter()
        mats = _fold_matrices(src, day, norm, features, feats, floats, pred_rows)
        for name, out in (("val_hold", vals), ("test", tests)):
            part = meta[rows[name]]
            pred = model.predict_matrix(mats.pop(name))
            out.append(
                part.select(C.DATE, C.CODE)
                .with_columns([pl.Series(c, v) for c, v in pred.items()])
                .with_columns(part.select([C.target(h) for h in horizons]))
                .select(pl.lit(k, pl.Int32).alias("fold"), pl.all())
            )
        del meta
        models.update({(k, h): b for h, b in model.models_.items()})
        per_fold.append(
            {
                "fold": k,
                "fit_range": [str(x) for x in model.fit_range_],
                "val_range": [str(x) for x in model.val_range_],
                "holdout_range": [str(d) for d in (model.holdout_dates_[0], model.holdout_dates_[-1])]
                if model.holdout_dates_
                else None,
                "test_range": [str(f.test_dates[0]), str(f.test_dates[-1])],
                "fit_date_stride": stride,
                "best_iteration": {str(h): it for h, it in model.best_iteration_.items()},
                "n_train_rows": {str(h): n for h, n in model.n_train_rows_.items()},
                "feature_importance": model.feature_importance_,
                "features": feats,
            }
        )
        log.info(
            "baseline: fold %d fitted (best iterations %s): inputs %.1f s, boosting %.1f s, predictions %.1f s",
            k,
            per_fold[-1]["best_iteration"],
            t_fit_mats,
            t_boost,
            time.perf_counter() - t0,
        )
    norm_report.update({"n_normalized_features": len(floats), "n_unnormalized_flags": len(features) - len(floats)})
    pred_val, pred_test = (pl.concat(p).sort("fold", C.DATE, C.CODE) for p in (vals, tests))
    return BaselineRun(
        fingerprint_,
        horizons,
        features,
        pred_val,
        pred_test,
        per_fold,
        _sum_importance(pf["feature_importance"] for pf in per_fold),
        None,
        norm_report,
        models,
    )


# ---------------------------------------------------------------------------------------------- the shared store
def baseline_fingerprint(
    dataset_fingerprint: str,
    manifest_fingerprint: str,
    folds: Sequence[Fold],
    horizons: Sequence[int],
    entry_lag: int,
    val_days: int,
    baseline_cfg: BaselineSettings,
    validation_cfg: SafeValidationSettings,
    holdout_days: int,
    neutral: Exposures | None = None,
    dataset_rows: int | None = None,
) -> str:
    """The content address of a baseline run: everything that changes its predictions, nothing that does not.
    `dataset_rows`: the dataset's row count; `baseline.max_fit_rows` counts only when the dataset has more rows (a
    fold's fit rows cannot exceed them), so runs stored before the cap existed keep their address."""
    b = {k: v for k, v in to_dict(baseline_cfg).items() if k not in REPORT_ONLY_KEYS and k != "max_fit_rows"}
    cap = baseline_cfg.max_fit_rows
    thins = cap is not None and (dataset_rows is None or dataset_rows > cap)
    v = to_dict(validation_cfg)
    screen = {k: v[k] for k in SCREEN_KEYS}
    split = [
        {
            "index": f.index,
            "train": [d.isoformat() for d in f.train_dates],
            "test": [d.isoformat() for d in f.test_dates],
        }
        for f in folds
    ]
    return fingerprint(
        BASELINE_VERSION,
        lgb.__version__,
        dataset_fingerprint,
        manifest_fingerprint,
        split,
        [int(h) for h in horizons],
        int(entry_lag),
        int(val_days),
        b,
        screen,
        # only where they change a fit, so runs stored before these existed keep their address
        *([int(holdout_days)] if holdout_days else []),
        *(["null screen per fold"] if len({tuple(d) for d in screen_dates(folds).values()}) > 1 else []),
        *([{"neutral_targets": neutral.to_dict()}] if neutral is not None else []),  # neutral.targets
        *([{"max_fit_rows": int(cap)}] if thins and cap is not None else []),
    )


def dataset_rows(dataset: str | Path) -> int:
    """The row count of the dataset at `dataset` (from its files' footers), as `baseline_fingerprint` takes it."""
    return int(pl.scan_parquet(dataset_files(pin(dataset))).select(pl.len()).collect().item())


def baseline_horizons(cfg: Settings, manifest: FeatureManifest) -> list[int]:
    """`baseline.horizons`, or the dataset's horizons (its manifest's) when it is null."""
    return [int(h) for h in (cfg.baseline.horizons or manifest.horizons)]


def baseline_root(cfg: Settings, fingerprint_: str) -> Path:
    return Path(cfg.paths.output_dir) / "baselines" / fingerprint_


def load_or_fit(
    root: Path, fingerprint_: str, wanted: Iterable[int], fit: Callable[[list[int]], BaselineRun]
) -> BaselineRun:
    """The run stored at `root` restricted to `wanted` folds; `fit(missing fold indices)` fits those it lacks, which
    are merged into the stored run and saved back."""
    wanted = [int(k) for k in wanted]
    stored = None
    clean_store(root.parent)
    if (root / RUN_FILE).exists():
        try:
            stored = BaselineRun.load(root)
        except DataError as e:
            log.warning("baseline: %s; refitting", e)
        if stored is not None and stored.fingerprint != fingerprint_:
            log.warning("baseline: %s holds run %s, not %s; refitting", root, stored.fingerprint, fingerprint_)
            stored = None
    have = set(stored.fold_indices) if stored is not None else set()
    missing = [k for k in wanted if k not in have]
    if stored is not None and not missing:
        log.info("baseline: reusing %s (folds %s)", root, wanted)
        stored.reused = True
        return stored.folds(wanted)
    log.info("baseline: fitting fold(s) %s -> %s", missing, root)
    new = fit(missing)
    new.fingerprint = fingerprint_
    run = stored.merge(new) if stored is not None else new
    run.save(root)
    return run.folds(wanted)


def baseline_for_folds(
    cfg: Settings, dataset: Path, manifest: FeatureManifest, folds: list[Fold], wanted: list[int], entry_lag: int
) -> BaselineRun | None:
    """The baseline of `wanted` folds of the split `folds`, from `<paths.output_dir>/baselines/<fingerprint>/` when
    stored there (by `gogooku3 safe` or an earlier call), else fitted, stored and returned; None when
    `baseline.enabled` is false.

    Features: the manifest's, minus those `safe.validation` drops for nulls on fold 0's training dates (as safe does).
    """
    b = cfg.baseline
    if not b.enabled:
        return None
    dataset = Path(dataset)
    horizons, val_days, v = baseline_horizons(cfg, manifest), cfg.split.val_days, cfg.safe.validation
    hold = cfg.split.holdout_days
    neutral = targets_spec(cfg)
    fp = baseline_fingerprint(
        file_fingerprint(dataset),
        manifest.fingerprint,
        folds,
        horizons,
        entry_lag,
        val_days,
        b,
        v,
        hold,
        neutral,
        dataset_rows(dataset),
    )

    def fit(missing: list[int]) -> BaselineRun:
        df, features = baseline_frame(cfg, dataset, manifest, folds)
        per_fold = baseline_fold_features(cfg, df, manifest, folds, str(dataset))
        return fit_baseline(
            df,
            features,
            folds,
            horizons,
            entry_lag,
            val_days,
            b,
            only=missing,
            fingerprint_=fp,
            holdout_days=hold,
            fold_features=per_fold,
            neutral=neutral,
        )

    return load_or_fit(baseline_root(cfg, fp), fp, wanted, fit)


def baseline_frame(
    cfg: Settings, dataset: str | Path, manifest: FeatureManifest, folds: Sequence[Fold]
) -> tuple[pl.DataFrame, list[str]]:
    """The rows every fold reads (meta, manifest features, the baseline's targets) and the baseline's features: the
    manifest's that some fold keeps after its `safe.validation` null screen (`baseline_fold_features`, as safe does)."""
    lo, hi = fold_span(folds)
    df = scan_dataset(dataset, manifest, baseline_horizons(cfg, manifest), lo, hi).collect()
    return df, union_features(manifest.names, _screens(cfg, df, manifest, folds, str(dataset)))


def _screens(
    cfg: Settings, df: pl.DataFrame, manifest: FeatureManifest, folds: Sequence[Fold], source: str
) -> dict[int, tuple[list[str], dict[str, float]]]:
    v = cfg.safe.validation
    return screen_folds(df, manifest.names, folds, v.max_null_share, v.null_action, source)


def baseline_fold_features(
    cfg: Settings, df: pl.DataFrame, manifest: FeatureManifest, folds: Sequence[Fold], source: str = "dataset"
) -> dict[int, list[str]]:
    """Fold index -> the features that fold uses: the manifest's minus those too null on the fold's screening dates
    (`data.validation.screen_dates`: fold 0's training dates under walk-forward, each fold's own under k-fold)."""
    return {k: kept for k, (kept, _) in _screens(cfg, df, manifest, folds, source).items()}
