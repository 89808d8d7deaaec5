"""Cross-sectional (per-day) feature normalization: robust z-score or rank-gauss.

Per-day statistics (median, MAD, ranks) use only that day's rows, so they are leak-free by construction.
The only statistic pooled over time is the fallback scale for a day whose MAD and std are both zero; it is
fitted on the training span in `fit` and merely applied in `transform`.

Day-level features (one value shared by every stock on a day: market regime, index returns, calendar flags) carry
nothing across the cross-section, so a per-day z-score turns them into 0. `day_level` says what to do with them:
`time_z` standardises the day's value against its own trailing `day_level_window` sessions (point-in-time), `zero`
keeps the per-day z-score (all 0: the model does not see them). `fit` finds them (constant within >= 95 % of
the training days).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from scipy.special import ndtri

from gogooku3.errors import ConfigError, DataError, SchemaError

log = logging.getLogger(__name__)

MAD_TO_STD = 1.4826
EPS = 1e-12
METHODS = ("robust_z", "rank_gauss")
DAY_LEVEL = ("time_z", "zero")
DAY_LEVEL_SHARE = 0.95   # a feature constant within at least this share of days is day-level
DAY_LEVEL_MIN_DAYS = 20  # trailing sessions needed before a time z-score is defined (else null -> 0 downstream)


def _finite(col: str) -> pl.Expr:
    """The column as Float64 with NaN/±inf turned into null (never propagated as NaN)."""
    x = pl.col(col).cast(pl.Float64)
    return pl.when(x.is_finite()).then(x).otherwise(None)


class CrossSectionalNormalizer:
    """sklearn-style `fit(df, features)` / `transform(df)` on Polars frames (eager or lazy).

    robust_z: (x − median_d) / (1.4826·MAD_d), falling back to the day's std, then to the training-span
    std, clipped to ±clip. rank_gauss: Φ⁻¹((rank_d − 0.5)/n_d), clipped to ±clip. Nulls stay null.
    """

    def __init__(self, method: str = "robust_z", clip: float = 5.0, date_col: str = "Date",
                 day_level: str = "zero", day_level_window: int = 252) -> None:
        if method not in METHODS:
            raise ConfigError(f"normalize.method must be one of {METHODS}, got '{method}'")
        if clip is not None and float(clip) <= 0:
            raise ConfigError(f"normalize.clip must be > 0 or null, got {clip}")
        if day_level not in DAY_LEVEL:
            raise ConfigError(f"normalize.day_level must be one of {DAY_LEVEL}, got '{day_level}'")
        if int(day_level_window) < DAY_LEVEL_MIN_DAYS:
            raise ConfigError(f"normalize.day_level_window must be >= {DAY_LEVEL_MIN_DAYS}, got {day_level_window}")
        self.method = method
        self.clip = None if clip is None else float(clip)
        self.date_col = date_col
        self.day_level = day_level
        self.day_level_window = int(day_level_window)

    # ---- fit --------------------------------------------------------------------------------------
    def fit(self, df: pl.DataFrame | pl.LazyFrame, features: Sequence[str]) -> CrossSectionalNormalizer:
        """Record the features and fit the pooled fallback scale (std over the given training rows)."""
        lf = df.lazy()
        schema = lf.collect_schema()
        missing = [f for f in features if f not in schema]
        if missing:
            raise SchemaError(f"normalizer fit: {len(missing)} feature column(s) missing, e.g. {', '.join(missing[:5])}")
        if self.date_col not in schema:
            raise SchemaError(f"normalizer fit: no '{self.date_col}' column")
        self.features_ = list(features)
        if not self.features_:
            raise DataError("normalizer fit: no features given")
        stats = lf.select([_finite(f).std().alias(f) for f in self.features_]
                          + [pl.col(self.date_col).min().alias("__lo"), pl.col(self.date_col).max().alias("__hi"),
                             pl.len().alias("__n")]).collect()
        if stats["__n"][0] == 0:
            raise DataError("normalizer fit: the training frame is empty")
        row = stats.row(0, named=True)
        self.fallback_std_ = {f: (float(row[f]) if row[f] is not None and row[f] > EPS else 1.0) for f in self.features_}
        self.day_level_ = self._find_day_level(lf)
        self.fit_range_ = (row["__lo"], row["__hi"])
        self.n_fit_rows_ = int(row["__n"])
        return self

    def _find_day_level(self, lf: pl.LazyFrame) -> list[str]:
        d = self.date_col
        spread = lf.group_by(d).agg([(_finite(f).max() - _finite(f).min()).alias(f) for f in self.features_])
        share = spread.select([(pl.col(f).abs() <= EPS).mean().alias(f) for f in self.features_]).collect().row(
            0, named=True)
        return [f for f in self.features_ if share[f] is not None and share[f] >= DAY_LEVEL_SHARE]

    @property
    def history_days(self) -> int:
        """Sessions of history before the first day to transform that `transform` needs to reproduce its values."""
        return self.day_level_window - 1 if self.day_level == "time_z" and getattr(self, "day_level_", []) else 0

    def _time_z(self, f: str) -> pl.Expr:
        x = _finite(f)
        kw = dict(window_size=self.day_level_window, min_samples=DAY_LEVEL_MIN_DAYS)
        mean, sd = x.rolling_mean(**kw), x.rolling_std(**kw)
        z = pl.when(sd > EPS).then((x - mean) / sd).when(mean.is_not_null()).then(0.0).otherwise(None)
        return (z.clip(-self.clip, self.clip) if self.clip is not None else z).alias(f)

    def _day_level_exprs(self, df: pl.DataFrame | pl.LazyFrame) -> list[pl.Expr]:
        """Day-level features as trailing time z-scores of the day's value, mapped back onto every row."""
        d, feats = self.date_col, self.day_level_
        day = (df.lazy().group_by(d).agg([_finite(f).drop_nulls().first().alias(f) for f in feats]).sort(d)
               .with_columns([self._time_z(f) for f in feats]).collect())
        return [pl.col(d).replace_strict(day[d], day[f], default=None, return_dtype=pl.Float64)
                .cast(pl.Float32).alias(f) for f in feats]

    # ---- transform --------------------------------------------------------------------------------
    def _expr(self, f: str) -> pl.Expr:
        d = self.date_col
        x = _finite(f)
        if self.method == "robust_z":
            med = x.median().over(d)
            mad = (x - med).abs().median().over(d) * MAD_TO_STD
            sd = x.std().over(d)
            scale = (pl.when(mad > EPS).then(mad)
                     .when(sd > EPS).then(sd)
                     .otherwise(pl.lit(self.fallback_std_[f])))
            z = (x - med) / scale
        else:
            n = x.count().over(d).cast(pl.Float64)
            u = (x.rank("average").over(d) - 0.5) / n
            z = u.map_batches(lambda s: pl.Series(s.name, ndtri(s.to_numpy()), dtype=pl.Float64),
                              return_dtype=pl.Float64, is_elementwise=True)
            z = pl.when(z.is_finite()).then(z).otherwise(None)
        if self.clip is not None:
            z = z.clip(-self.clip, self.clip)
        return z.cast(pl.Float32).alias(f)

    def transform(self, df: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
        """Replace each fitted feature by its per-day normalized value (a new frame; the input is untouched)."""
        if not hasattr(self, "features_"):
            raise ConfigError("CrossSectionalNormalizer.transform called before fit")
        schema = df.collect_schema() if isinstance(df, pl.LazyFrame) else df.schema
        missing = [f for f in self.features_ if f not in schema]
        if missing:
            raise SchemaError(f"normalizer transform: {len(missing)} fitted feature(s) missing, e.g. {', '.join(missing[:5])}")
        time_z = self.day_level_ if self.day_level == "time_z" else []
        exprs = [self._expr(f) for f in self.features_ if f not in time_z]
        return df.with_columns(exprs + (self._day_level_exprs(df) if time_z else []))

    def fit_transform(self, df: pl.DataFrame | pl.LazyFrame, features: Sequence[str]) -> pl.DataFrame | pl.LazyFrame:
        return self.fit(df, features).transform(df)

    # ---- report / persistence ---------------------------------------------------------------------
    def report(self, normalized: pl.DataFrame, max_warnings: int = 20) -> dict[str, Any]:
        """Mean |per-day mean| and mean per-day std over the normalized features, plus warnings."""
        d = self.date_col
        per_day = normalized.group_by(d).agg(
            [pl.col(f).mean().alias(f"{f}__m") for f in self.features_]
            + [pl.col(f).std().alias(f"{f}__s") for f in self.features_])
        means = per_day.select([pl.col(f"{f}__m").abs().mean().alias(f) for f in self.features_]).row(0)
        stds = per_day.select([pl.col(f"{f}__s").mean().alias(f) for f in self.features_]).row(0)
        nan_count = int(normalized.select(
            pl.sum_horizontal([pl.col(f).is_nan().sum() for f in self.features_])).item())
        warnings = []
        day_level = set(getattr(self, "day_level_", []))
        for f, m, s in zip(self.features_, means, stds):
            if f in day_level:
                continue  # listed under day_level_features
            if s is None or m is None:
                warnings.append(f"{f}: all null after normalization")
            elif s < 0.1:
                warnings.append(f"{f}: nearly constant within days (mean std {s:.3f})")
            elif abs(m) > 0.5:
                warnings.append(f"{f}: per-day mean far from 0 (mean |mean| {m:.3f})")
        if nan_count:
            warnings.append(f"{nan_count} NaN value(s) after normalization")
        ok_m = [m for m in means if m is not None]
        ok_s = [s for s in stds if s is not None]
        return {
            "method": self.method,
            "clip": self.clip,
            "n_features": len(self.features_),
            "mean_abs_deviation": float(np.mean(ok_m)) if ok_m else None,
            "std_deviation": float(np.mean(ok_s)) if ok_s else None,
            "nan_values": nan_count,
            "day_level": self.day_level,
            "day_level_features": list(getattr(self, "day_level_", [])),
            "n_warnings": len(warnings),
            "normalization_warnings": warnings[:max_warnings],
            "fit_range": [str(x) for x in getattr(self, "fit_range_", (None, None))],
        }

    def to_dict(self) -> dict[str, Any]:
        """Settings and fitted state for a model bundle (JSON-safe)."""
        return {"method": self.method, "clip": self.clip, "date_col": self.date_col,
                "day_level": self.day_level, "day_level_window": self.day_level_window,
                "features": list(getattr(self, "features_", [])),
                "fallback_std": dict(getattr(self, "fallback_std_", {})),
                "day_level_features": list(getattr(self, "day_level_", []))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CrossSectionalNormalizer:
        obj = cls(d.get("method", "robust_z"), d.get("clip", 5.0), d.get("date_col", "Date"),
                  d.get("day_level", "zero"), int(d.get("day_level_window", 252)))
        if d.get("features"):
            obj.features_ = list(d["features"])
            fb = d.get("fallback_std", {})
            obj.fallback_std_ = {f: float(fb.get(f, 1.0)) for f in obj.features_}
            obj.day_level_ = list(d.get("day_level_features", []))
        return obj
