"""Cross-sectional (per-day) feature normalization: robust z-score or rank-gauss.

Per-day statistics (median, MAD, ranks) use only that day's rows, so they are leak-free by construction.
The only statistic pooled over time is the fallback scale for a day whose MAD and std are both zero; it is
fitted on the training span in `fit` and merely applied in `transform`.
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


def _finite(col: str) -> pl.Expr:
    """The column as Float64 with NaN/±inf turned into null (never propagated as NaN)."""
    x = pl.col(col).cast(pl.Float64)
    return pl.when(x.is_finite()).then(x).otherwise(None)


class CrossSectionalNormalizer:
    """sklearn-style `fit(df, features)` / `transform(df)` on Polars frames (eager or lazy).

    robust_z: (x − median_d) / (1.4826·MAD_d), falling back to the day's std, then to the training-span
    std, clipped to ±clip. rank_gauss: Φ⁻¹((rank_d − 0.5)/n_d), clipped to ±clip. Nulls stay null.
    """

    def __init__(self, method: str = "robust_z", clip: float = 5.0, date_col: str = "Date") -> None:
        if method not in METHODS:
            raise ConfigError(f"normalize.method must be one of {METHODS}, got '{method}'")
        if clip is not None and float(clip) <= 0:
            raise ConfigError(f"normalize.clip must be > 0 or null, got {clip}")
        self.method = method
        self.clip = None if clip is None else float(clip)
        self.date_col = date_col

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
        self.fit_range_ = (row["__lo"], row["__hi"])
        self.n_fit_rows_ = int(row["__n"])
        return self

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
        return df.with_columns([self._expr(f) for f in self.features_])

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
        for f, m, s in zip(self.features_, means, stds):
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
            "n_warnings": len(warnings),
            "normalization_warnings": warnings[:max_warnings],
            "fit_range": [str(x) for x in getattr(self, "fit_range_", (None, None))],
        }

    def to_dict(self) -> dict[str, Any]:
        """Settings and fitted state for a model bundle (JSON-safe)."""
        return {"method": self.method, "clip": self.clip, "date_col": self.date_col,
                "features": list(getattr(self, "features_", [])),
                "fallback_std": dict(getattr(self, "fallback_std_", {}))}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CrossSectionalNormalizer:
        obj = cls(d.get("method", "robust_z"), d.get("clip", 5.0), d.get("date_col", "Date"))
        if d.get("features"):
            obj.features_ = list(d["features"])
            fb = d.get("fallback_std", {})
            obj.fallback_std_ = {f: float(fb.get(f, 1.0)) for f in obj.features_}
        return obj
