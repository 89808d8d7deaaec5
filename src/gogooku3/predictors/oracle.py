"""The synthetic market's oracle as a predictor: pred_{h}d = the generator's expected h-day return (`oracle_{h}d`,
written by `gogooku3 data synth` into `paths.oracle_dir`). The ceiling any model can reach on that market; not
fitted, and absent (None) for any other data source.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from gogooku3.config.compose import path
from gogooku3.core import columns as C
from gogooku3.predictors.base import Fitted, Predictor
from gogooku3.training.fit import Plan

log = logging.getLogger(__name__)


def find_oracle(oracle_dir: Path, horizons: Sequence[int]) -> pl.LazyFrame | None:
    """The synthetic market's oracle (Date, Code, oracle_{h}d) if one lies in `oracle_dir`."""
    if not oracle_dir.is_dir():
        return None
    for p in sorted(oracle_dir.glob("*.parquet")):
        lf = pl.scan_parquet(p)
        names = lf.collect_schema().names()
        if {C.DATE, C.CODE} <= set(names) and any(C.oracle(h) in names for h in horizons):
            return lf
    return None


def oracle_predictions(
    lf: pl.LazyFrame, horizons: Sequence[int], days: Sequence[dt.date] | None = None
) -> pl.DataFrame:
    """Date, Code, pred_{h}d = oracle_{h}d for the horizons the oracle has (on `days`, or all)."""
    names = lf.collect_schema().names()
    hs = [int(h) for h in horizons if C.oracle(h) in names]
    out = lf.select(
        pl.col(C.DATE).cast(pl.Date),
        pl.col(C.CODE).cast(pl.String),
        *[pl.col(C.oracle(h)).cast(pl.Float64).alias(C.pred(h)) for h in hs],
    )
    if days is not None:
        out = out.filter(pl.col(C.DATE).is_in(pl.Series(sorted(days), dtype=pl.Date).implode()))
    return out.collect()


class OraclePredictor(Predictor):
    def fit(self, plan: Plan, inputs: Mapping[str, Fitted]) -> OracleFitted | None:
        lf = find_oracle(path(self.ctx.cfg, "paths.oracle_dir"), self.ctx.horizons)
        if lf is None:
            log.info("train: no oracle in paths.oracle_dir (synthetic market only); %s skipped", self.name)
            return None
        names = lf.collect_schema().names()
        return OracleFitted(self.name, [h for h in self.ctx.horizons if C.oracle(h) in names], plan, lf)


class OracleFitted(Fitted):
    def __init__(self, name: str, horizons: list[int], plan: Plan, lf: pl.LazyFrame):
        super().__init__(name, horizons, plan)
        self.lf = lf

    def _predict(self, days: list[dt.date]) -> pl.DataFrame:
        return oracle_predictions(self.lf, self.horizons, days)
