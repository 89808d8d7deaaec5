"""Small expression helpers shared by the feature modules, and the `Block` every group returns.

Every per-stock window goes through `per_code(...)`, i.e. `.over("Code")`: rolling windows, shifts and EWMs never
cross from one stock into the next (the bug of the original builder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import polars as pl

EPS = 1e-12  # spec §1.3: epsilon in every division
SQRT252 = math.sqrt(252.0)


def per_code(e: pl.Expr) -> pl.Expr:
    """A per-stock window: the frame is sorted by (Code, Date), so `over("Code")` keeps row order."""
    return e.over("Code")


def c(name: str) -> pl.Expr:
    return pl.col(name)


def div(a: pl.Expr, b: pl.Expr) -> pl.Expr:
    """a / (b + ε)."""
    return a / (b + EPS)


def lag(name: str, n: int = 1) -> pl.Expr:
    return per_code(c(name).shift(n))


def roll_mean(e: pl.Expr, w: int, min_samples: int | None = None) -> pl.Expr:
    return per_code(e.rolling_mean(w, min_samples=min_samples or w))


def roll_std(e: pl.Expr, w: int, min_samples: int | None = None, ddof: int = 1) -> pl.Expr:
    return per_code(e.rolling_std(w, min_samples=min_samples or w, ddof=ddof))


def ema(e: pl.Expr, span: int, min_samples: int | None = None) -> pl.Expr:
    """EWM with span, adjust=False, nulls ignored (spec §1.4); per stock."""
    return per_code(e.ewm_mean(span=span, adjust=False, min_samples=min_samples or 1, ignore_nulls=True))


def wilder(e: pl.Expr, n: int) -> pl.Expr:
    """Wilder smoothing (RMA): EWM with alpha = 1/n, adjust=False, at least n observations; per stock."""
    return per_code(e.ewm_mean(alpha=1.0 / n, adjust=False, min_samples=n, ignore_nulls=True))


def zscore_rolling(e: pl.Expr, w: int, min_samples: int | None = None, partition: str | None = "Code") -> pl.Expr:
    """(x − mean_w) / (std_w + ε), trailing window only."""
    m = min_samples or w
    mean, std = e.rolling_mean(w, min_samples=m), e.rolling_std(w, min_samples=m)
    if partition:
        mean, std = mean.over(partition), std.over(partition)
    return (e - mean) / (std + EPS)


def flag(cond: pl.Expr) -> pl.Expr:
    """Boolean condition as an Int8 flag; unknown (null) is 0."""
    return cond.fill_null(False).cast(pl.Int8)


@dataclass
class Block:
    """What a feature module returns: expressions in dependent stages, the feature columns, why anything was skipped.

    Each stage is one `with_columns` context (its expressions may only read columns of earlier stages). Columns whose
    name starts with "_" are helpers and are dropped from the dataset.
    """

    group: str
    stages: list[dict[str, pl.Expr]] = field(default_factory=lambda: [{}])
    flags: set[str] = field(default_factory=set)  # Int8 columns; the other features are Float32
    skipped: str | None = None  # why the group, or part of it, was not built

    def add(self, name: str, e: pl.Expr, *, is_flag: bool = False) -> None:
        self.stages[-1][name] = e.alias(name)
        if is_flag:
            self.flags.add(name)

    def next_stage(self) -> None:
        if self.stages[-1]:
            self.stages.append({})

    def skip(self, reason: str) -> None:
        self.skipped = reason if self.skipped is None else f"{self.skipped}; {reason}"

    @property
    def features(self) -> list[str]:
        return [n for st in self.stages for n in st if not n.startswith("_")]

    def apply(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        """Add the stages; features get their dataset dtype at once (Float32, or Int8 for flags) to save memory."""
        for st in self.stages:
            if st:
                lf = lf.with_columns([self._typed(n, e) for n, e in st.items()])
        return lf

    def _typed(self, name: str, e: pl.Expr) -> pl.Expr:
        if name.startswith("_"):
            return e
        if name in self.flags:
            return e.cast(pl.Int8).alias(name)
        x = e.cast(pl.Float64)
        return pl.when(x.is_finite()).then(x).cast(pl.Float32).alias(name)  # ±inf never reaches the dataset


def missing(available, *cols: str) -> list[str]:
    return [x for x in cols if x not in available]
