"""Load the ML dataset lazily (projection + date filter pushed down) and validate it before training.

Checks: required columns, enough manifest features, rows > 0, unique (Code, Date), Close > 0, per-feature
null share in the training span (too-null features are dropped and listed, or rejected), target sanity
(constant target -> error; |target| > 100 % flagged with codes and dates).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError, SchemaError, rows_hint
from gogooku3.features.manifest import META_COLUMNS, FeatureManifest

log = logging.getLogger(__name__)


@dataclass
class ValidationResult:
    features: list[str]  # features kept (manifest order)
    dropped: dict[str, float] = field(default_factory=dict)  # feature -> null share in the training span
    flagged_targets: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.stats,
            "n_features_kept": len(self.features),
            "dropped_features": self.dropped,
            "flagged_targets": self.flagged_targets,
        }


def scan_dataset(
    path: str | Path,
    manifest: FeatureManifest,
    horizons: Sequence[int],
    start: dt.date | None = None,
    end: dt.date | None = None,
    extra: Sequence[str] = (),
) -> pl.LazyFrame:
    """Lazy scan with only meta + manifest features + targets (+ extra) and an optional date window."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset not found; build it with `gogooku3 data build`")
    lf = pl.scan_parquet(path)
    schema = lf.collect_schema()
    missing = [c for c in (C.CODE, C.DATE) if c not in schema]
    if missing:
        raise SchemaError(f"{path}: required column(s) missing: {', '.join(missing)}")
    targets = [C.target(h) for h in horizons]
    no_target = [t for t in targets if t not in schema]
    if no_target:
        raise SchemaError(f"{path}: target column(s) missing: {', '.join(no_target)}")
    want = [c for c in META_COLUMNS if c in schema]
    want += [f for f in manifest.names if f in schema and f not in want]
    want += [c for c in [*extra, *targets] if c in schema and c not in want]
    lf = lf.select(want)
    if start is not None:
        lf = lf.filter(pl.col(C.DATE) >= start)
    if end is not None:
        lf = lf.filter(pl.col(C.DATE) <= end)
    return lf


def drop_too_null(
    df: pl.DataFrame,
    features: Sequence[str],
    train_dates: Sequence[dt.date] | None,
    max_null_share: float,
    null_action: str,
    source: str = "dataset",
) -> tuple[list[str], dict[str, float], dict[str, float]]:
    """The features a model may use: those at most `max_null_share` null (or NaN) on `train_dates` (all rows if None).

    Returns (kept in input order, dropped -> null share, every feature's null share). The safe pipeline and the
    shared LightGBM baseline both pick their features with this rule (on fold 0's training dates);
    `null_action="error"` refuses too-null features instead of dropping them.
    """
    if null_action not in ("drop", "error"):
        raise ConfigError(f"safe.validation.null_action must be 'drop' or 'error', got '{null_action}'")
    # a row mask per column, not a filtered copy of the frame (the whole frame at ten years)
    span = pl.lit(True)
    if train_dates is not None:
        span = pl.col(C.DATE).is_in(pl.Series(list(train_dates), dtype=pl.Date).implode())
        if not df.select(span.any()).item():
            raise DataError(f"{source}: no rows in the training span")
    nulls = (
        df.select(
            [(pl.col(f).is_null() | pl.col(f).cast(pl.Float64).is_nan()).filter(span).mean().alias(f) for f in features]
        ).row(0, named=True)
        if features
        else {}
    )
    too_null = {f: round(float(s), 4) for f, s in nulls.items() if s is not None and s > max_null_share}
    if too_null and null_action == "error":
        worst = sorted(too_null.items(), key=lambda kv: -kv[1])
        raise DataError(
            f"{source}: {len(too_null)} feature(s) above safe.validation.max_null_share={max_null_share} "
            f"in the training span: {rows_hint([f'{f} ({s:.0%})' for f, s in worst])}; raise it or set "
            f"safe.validation.null_action=drop"
        )
    if too_null:
        log.warning(
            "dropping %d feature(s) with null share > %.2f: %s", len(too_null), max_null_share, rows_hint(too_null)
        )
    return [f for f in features if f not in too_null], too_null, nulls


def screen_dates(folds: Sequence[Any]) -> dict[int, list[dt.date]]:
    """Fold index -> the training dates its null screen reads: fold 0's for every fold when they precede every test
    block (walk-forward), else each fold's own (purged k-fold: fold 0's training dates hold other folds' test
    blocks, so a screen there would pick a fold's features with its own test days)."""
    first = folds[0]
    if all(first.train_dates[-1] < f.test_dates[0] for f in folds):
        return {int(f.index): list(first.train_dates) for f in folds}
    return {int(f.index): list(f.train_dates) for f in folds}


def screen_folds(
    df: pl.DataFrame,
    features: Sequence[str],
    folds: Sequence[Any],
    max_null_share: float,
    null_action: str,
    source: str = "dataset",
) -> dict[int, tuple[list[str], dict[str, float]]]:
    """Fold index -> (kept features, dropped -> null share): `drop_too_null` on each fold's `screen_dates`."""
    out: dict[int, tuple[list[str], dict[str, float]]] = {}
    done: dict[tuple[dt.date, dt.date, int], tuple[list[str], dict[str, float]]] = {}
    for k, dates in screen_dates(folds).items():
        key = (dates[0], dates[-1], len(dates))
        if key not in done:
            kept, dropped, _ = drop_too_null(df, features, dates, max_null_share, null_action, f"{source} fold {k}")
            done[key] = (kept, dropped)
        out[k] = done[key]
    return out


def union_features(features: Sequence[str], per_fold: dict[int, tuple[list[str], dict[str, float]]]) -> list[str]:
    """The features some fold keeps, in the order of `features`."""
    kept = {f for fs, _ in per_fold.values() for f in fs}
    return [f for f in features if f in kept]


def validate_dataset(
    df: pl.DataFrame,
    manifest: FeatureManifest,
    horizons: Sequence[int],
    train_dates: Sequence[dt.date] | None = None,
    *,
    min_features: int,
    max_null_share: float,
    null_action: str,
    max_abs_target: float,
    max_listed: int,
    source: str = "dataset",
) -> ValidationResult:
    """Run every check; raise DataError/SchemaError with one clear line on unusable input. The thresholds are the
    `safe.validation` keys (the caller passes the config's values)."""
    if null_action not in ("drop", "error"):
        raise ConfigError(f"safe.validation.null_action must be 'drop' or 'error', got '{null_action}'")
    if df.height == 0:
        raise DataError(f"{source}: no rows")
    targets = [C.target(h) for h in horizons]
    missing = [c for c in [C.CODE, C.DATE, *targets] if c not in df.columns]
    if missing:
        raise SchemaError(f"{source}: required column(s) missing: {', '.join(missing)}")
    present = [f for f in manifest.names if f in df.columns]
    absent = [f for f in manifest.names if f not in df.columns]
    if absent:
        raise SchemaError(f"{source}: {len(absent)} manifest feature(s) missing, e.g. {', '.join(absent[:5])}")
    if len(present) < min_features:
        raise DataError(
            f"{source}: only {len(present)} features in the manifest, need at least {min_features} "
            f"(safe.validation.min_features); pass safe.validation.min_features={len(present)} to use "
            f"this dataset as it is, or add inputs so the builder can make more features (its coverage "
            f"report lists the skipped groups)"
        )

    # one Int64 key per row: a group_by on (Code, Date) cost ~0.8 GB per million rows (+2.2 GB at 2.86 M), this 0.1 GB
    key = pl.col(C.CODE).cast(pl.String).cast(pl.Categorical).to_physical().cast(pl.Int64) * 2**32 + pl.col(
        C.DATE
    ).cast(pl.Date).cast(pl.Int32).cast(pl.Int64)
    is_dup = df.select(key.is_duplicated()).to_series()
    if is_dup.any():
        dup = df.filter(is_dup).select(C.CODE, C.DATE).unique(maintain_order=True)
        rows = [f"{c}@{d}" for c, d in dup.head(5).iter_rows()]
        raise DataError(f"{source}: {dup.height} duplicate (Code, Date) key(s): {rows_hint(rows)}")
    if C.CLOSE in df.columns:
        bad = df.filter(pl.col(C.CLOSE) <= 0)
        if bad.height:
            rows = [f"{c}@{d}" for c, d in bad.select(C.CODE, C.DATE).head(5).iter_rows()]
            raise DataError(f"{source}: column Close has {bad.height} non-positive value(s): {rows_hint(rows)}")

    kept, too_null, nulls = drop_too_null(df, present, train_dates, max_null_share, null_action, source)
    if len(kept) < min_features:
        worst = max(too_null.values(), default=0.0)
        raise DataError(
            f"{source}: only {len(kept)} features left after dropping {len(too_null)} too-null ones "
            f"(null share > safe.validation.max_null_share={max_null_share} in the training span), need "
            f"at least {min_features} (safe.validation.min_features); pass "
            f"safe.validation.min_features={len(kept)}, or keep them all with "
            f"safe.validation.max_null_share={min(1.0, math.ceil(worst * 100) / 100):g}"
        )

    flagged: dict[str, Any] = {}
    tstats = df.select(
        [pl.col(t).cast(pl.Float64).fill_nan(None).std().alias(t) for t in targets]
        + [pl.col(t).is_not_null().sum().alias(f"{t}__n") for t in targets]
    ).row(0, named=True)
    for t in targets:
        if tstats[f"{t}__n"] == 0:
            raise DataError(f"{source}: target {t} is entirely null")
        if tstats[t] is None or tstats[t] == 0:
            raise DataError(f"{source}: target {t} is constant (std 0); labels were not built correctly")
        big = df.filter(pl.col(t).abs() > max_abs_target).select(C.CODE, C.DATE, t)
        if big.height:
            flagged[t] = {
                "n": big.height,
                "threshold": max_abs_target,
                "rows": [
                    {C.CODE: c, C.DATE: str(d), "value": float(v)}
                    for c, d, v in big.sort(pl.col(t).abs(), descending=True).head(max_listed).iter_rows()
                ],
            }
            log.warning(
                "%s: %d |value| > %.0f%% (e.g. %s)",
                t,
                big.height,
                max_abs_target * 100,
                rows_hint([f"{r[C.CODE]}@{r[C.DATE]}" for r in flagged[t]["rows"]], 3),
            )

    dates = df[C.DATE]
    stats = {
        "n_rows": df.height,
        "n_columns": df.width,
        "n_features_manifest": len(present),
        "n_dates": dates.n_unique(),
        "n_stocks": df[C.CODE].n_unique(),
        "date_range": [str(dates.min()), str(dates.max())],
        "null_share_training_span": {
            "max": max(nulls.values(), default=0.0),
            "mean": sum(nulls.values()) / max(len(nulls), 1),
        },
        "max_null_share": max_null_share,
    }
    return ValidationResult(kept, too_null, flagged, stats)
