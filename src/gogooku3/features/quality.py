"""Quality features added by the SafeTrainingPipeline (the original's `QualityFinancialFeaturesGenerator`).

Every value is point-in-time: per-stock windows are trailing (`.over("Code")` on rows sorted by Code, Date)
and per-day quantities use only that day's cross-section. Sub-groups (each switchable):

- risk_adjusted: `sharpe_{h}d` = past h-day return / (20-day daily vol · √h)
- smart_money:   `smart_money_index` = z_d(log dollar-volume surprise) − z_d(|returns_1d|) (heavy trading
                  without a price move), and its 5-day change `smi_delta_5d`
- outlier_flags: `ret_outlier_up_flag` / `ret_outlier_down_flag` when the day's cross-sectional z of
                  returns_1d is beyond ±sigma_threshold
- cs_quantiles:  `vol_cs_quantile` (per-day rank of 20-day vol in (0, 1]), `high_vol_flag`, `low_vol_flag`
- excess_returns: `excess_ret_1d` = returns_1d − the day's equal-weighted mean, `excess_ret_5d` its 5-day sum
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import polars as pl

from gogooku3.errors import SchemaError

log = logging.getLogger(__name__)

EPS = 1e-12
GROUP = "quality"


def _z_day(x: pl.Expr) -> pl.Expr:
    return (x - x.mean().over("Date")) / (x.std().over("Date") + EPS)


class QualityFinancialFeaturesGenerator:
    def __init__(self, risk_adjusted: bool = True, smart_money: bool = True, outlier_flags: bool = True,
                 use_cross_sectional_quantiles: bool = True, excess_returns: bool = True,
                 sigma_threshold: float = 2.0, sharpe_horizons: Sequence[int] = (5, 10, 20), vol_window: int = 20,
                 high_quantile: float = 0.8, low_quantile: float = 0.2) -> None:
        self.risk_adjusted = risk_adjusted
        self.smart_money = smart_money
        self.outlier_flags = outlier_flags
        self.use_cross_sectional_quantiles = use_cross_sectional_quantiles
        self.excess_returns = excess_returns
        self.sigma_threshold = float(sigma_threshold)
        self.sharpe_horizons = [int(h) for h in sharpe_horizons]
        self.vol_window = int(vol_window)
        self.high_quantile = float(high_quantile)
        self.low_quantile = float(low_quantile)

    @classmethod
    def from_config(cls, cfg: Any) -> QualityFinancialFeaturesGenerator:
        get = cfg.get
        return cls(bool(get("risk_adjusted", True)), bool(get("smart_money", True)), bool(get("outlier_flags", True)),
                   bool(get("use_cross_sectional_quantiles", True)), bool(get("excess_returns", True)),
                   float(get("sigma_threshold", 2.0)), list(get("sharpe_horizons", [5, 10, 20])),
                   int(get("vol_window", 20)), float(get("high_quantile", 0.8)), float(get("low_quantile", 0.2)))

    def _exprs(self, schema: pl.Schema) -> tuple[list[list[pl.Expr]], dict[str, str]]:
        """Stages of expressions (a later stage may use an earlier stage's columns) and skipped sub-groups."""
        r1 = pl.col("returns_1d").cast(pl.Float64)
        w = self.vol_window
        skipped: dict[str, str] = {}
        stage1: list[pl.Expr] = [r1.rolling_std(w, min_samples=w).over("Code").alias("__vol_d")]
        stage2: list[pl.Expr] = []
        stage3: list[pl.Expr] = []
        if self.risk_adjusted:
            for h in self.sharpe_horizons:
                ret_h = (pl.col(f"returns_{h}d").cast(pl.Float64) if f"returns_{h}d" in schema
                         else r1.rolling_sum(h, min_samples=h).over("Code"))
                stage2.append((ret_h / (pl.col("__vol_d") * math.sqrt(h) + EPS)).cast(pl.Float32).alias(f"sharpe_{h}d"))
        if self.smart_money:
            if "dollar_volume" in schema:
                dv = pl.col("dollar_volume").cast(pl.Float64)
                surprise = (dv / (dv.rolling_mean(w, min_samples=w).over("Code") + EPS) + EPS).log()
                stage1.append((_z_day(surprise) - _z_day(r1.abs())).alias("__smi"))
                stage2.append(pl.col("__smi").cast(pl.Float32).alias("smart_money_index"))
                stage3.append((pl.col("smart_money_index") - pl.col("smart_money_index").shift(5).over("Code"))
                              .cast(pl.Float32).alias("smi_delta_5d"))
            else:
                skipped["smart_money"] = "no dollar_volume column"
        if self.outlier_flags:
            z = _z_day(r1)
            stage2 += [(z > self.sigma_threshold).cast(pl.Int8).alias("ret_outlier_up_flag"),
                       (z < -self.sigma_threshold).cast(pl.Int8).alias("ret_outlier_down_flag")]
        if self.use_cross_sectional_quantiles:
            q = pl.col("__vol_d").rank("average").over("Date") / pl.col("__vol_d").count().over("Date")
            stage2 += [q.cast(pl.Float32).alias("vol_cs_quantile"),
                       (q >= self.high_quantile).cast(pl.Int8).alias("high_vol_flag"),
                       (q <= self.low_quantile).cast(pl.Int8).alias("low_vol_flag")]
        if self.excess_returns:
            ex = r1 - r1.mean().over("Date")
            stage2.append(ex.cast(pl.Float32).alias("excess_ret_1d"))
            stage3.append(pl.col("excess_ret_1d").cast(pl.Float64).rolling_sum(5, min_samples=5).over("Code")
                          .cast(pl.Float32).alias("excess_ret_5d"))
        return [stage1, stage2, stage3], skipped

    def generate(self, df: pl.DataFrame | pl.LazyFrame) -> tuple[pl.DataFrame | pl.LazyFrame, list[str], dict[str, Any]]:
        """(frame with the new columns, new feature names, report). The input is not modified."""
        schema = df.collect_schema() if isinstance(df, pl.LazyFrame) else df.schema
        missing = [c for c in ("Code", "Date", "returns_1d") if c not in schema]
        if missing:
            raise SchemaError(f"quality features: dataset lacks column(s) {', '.join(missing)}")
        stages, skipped = self._exprs(schema)
        planned = [e.meta.output_name() for st in stages for e in st]
        clash = [c for c in planned if c in schema]
        if clash:
            raise SchemaError(f"quality features: would overwrite existing column(s) {', '.join(clash)}")
        out = df.sort("Code", "Date")
        for st in stages:
            if st:
                out = out.with_columns(st)
        out = out.drop([c for c in planned if c.startswith("__")])
        new = [c for c in planned if not c.startswith("__")]
        new_schema_len = len(schema) + len(new)
        report = {"original_columns": len(schema), "enhanced_columns": new_schema_len, "new_features": new,
                  "n_new_features": len(new), "skipped_groups": skipped,
                  "enabled": {"risk_adjusted": self.risk_adjusted, "smart_money": self.smart_money,
                              "outlier_flags": self.outlier_flags,
                              "cs_quantiles": self.use_cross_sectional_quantiles,
                              "excess_returns": self.excess_returns}}
        return out, new, report
