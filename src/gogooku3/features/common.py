"""Small expression helpers shared by the feature modules, and the `Block` every group returns.

Every per-stock window goes through `per_code(...)`, i.e. `.over("Code")`: rolling windows, shifts and EWMs never
cross from one stock into the next (the bug of the original builder).

Price and volume *levels* are computed on the split-adjusted series (continuous across splits) and only put into
the day's own share basis at the very end (`day_basis`): adjusted(t) = raw(t)·Π_{s>t} AdjFactor(s) depends on splits
after t, so an adjusted level would tell a model about a future split. Multiplying by k(t) = C(t)/AdjC(t) (volumes:
Vo(t)/AdjVo(t)) is exact for windows too, because k is constant over a window ending at t for every split after t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import polars as pl

from gogooku3.core import columns as C

EPS = 1e-12  # spec §1.3: epsilon in every division
SQRT252 = math.sqrt(252.0)
PRICE, VOLUME = "price", "volume"  # kinds of level features
SCALE = {PRICE: "_kp", VOLUME: "_kv"}  # helper columns of the base frame: day-t basis / adjusted basis
BASE_SERIES = (C.OPEN, C.HIGH, C.LOW, C.CLOSE, C.VOLUME)  # the adjusted series of the base frame


def per_code(e: pl.Expr) -> pl.Expr:
    """A per-stock window: the frame is sorted by (Code, Date), so `over("Code")` keeps row order."""
    return e.over(C.CODE)


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


def zscore_rolling(e: pl.Expr, w: int, min_samples: int | None = None, partition: str | None = C.CODE) -> pl.Expr:
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

    `cross_sectional`: the block reads other stocks' rows of the same day (a window over Date, or Date and sector:
    day means, ranks and z-scores across stocks), so a chunk of codes cannot compute it alone; the chunked build runs
    it once on the whole universe. Set where the block is defined; every other block is per stock (its windows are
    over Code only).
    """

    group: str
    stages: list[dict[str, pl.Expr]] = field(default_factory=lambda: [{}])
    flags: set[str] = field(default_factory=set)  # Int8 columns; the other features are Float32
    levels: dict[str, str] = field(default_factory=dict)  # price/volume level features -> PRICE | VOLUME
    skipped: str | None = None  # why the group, or part of it, was not built
    cross_sectional: bool = False  # reads the same day's other stocks (see above)

    def add(self, name: str, e: pl.Expr, *, is_flag: bool = False, level: str | None = None) -> None:
        """`level`: PRICE or VOLUME for a level feature; it stays adjusted Float64 (later stages may read it) until
        the builder puts it into the day's basis with `day_basis`."""
        self.stages[-1][name] = e.alias(name)
        if is_flag:
            self.flags.add(name)
        if level is not None:
            self.levels[name] = level

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
        for i, st in enumerate(self.stages):
            if st:
                later = {r for s in self.stages[i + 1 :] for e in s.values() for r in e.meta.root_names()}
                lf = lf.with_columns([self._typed(n, e, n in later) for n, e in st.items()])
        return lf

    def _typed(self, name: str, e: pl.Expr, read_later: bool = False) -> pl.Expr:
        if name.startswith("_"):
            return e
        if name in self.flags:
            return e.cast(pl.Int8).alias(name)
        if name in self.levels:
            # unscaled until day_basis; Float64 where other features still read it (the base series every block
            # reads, MACD whose histogram is a difference of levels), else Float32 to save memory
            keep64 = read_later or name in BASE_SERIES
            return e.cast(pl.Float64 if keep64 else pl.Float32).alias(name)
        return finite32(e).alias(name)


def finite32(e: pl.Expr) -> pl.Expr:
    """Float32 with ±inf and NaN as null: they never reach the dataset."""
    x = e.cast(pl.Float64)
    return pl.when(x.is_finite()).then(x).cast(pl.Float32)


def narrow(df: pl.DataFrame, cols) -> pl.DataFrame:
    """Float64 feature columns of a table about to be joined, as the dataset's Float32 (non-finite → null) at once:
    the joined columns then occupy half the memory while the rest of the frame is built."""
    return df.with_columns(finite32(c(n)).alias(n) for n in cols if df.schema[n] == pl.Float64)


def day_basis(levels: dict[str, str]) -> list[pl.Expr]:
    """Level features in the day's own share basis (Float32): price levels × k(t), volume levels × Vo(t)/AdjVo(t)."""
    return [finite32(c(n) * c(SCALE[kind])).alias(n) for n, kind in levels.items()]


def lookup(lf: pl.LazyFrame, right: pl.DataFrame, key: pl.Expr, right_key: str, cols: list[str]) -> pl.LazyFrame:
    """A left join 1:1 on a key that is unique in `right`, done as a binary search + gather (no hash join, and the
    left frame, however wide, is not copied): adds `cols` of the matching `right` row, null where none matches.

    `key` is an expression on `lf`; `right_key` a column of `right` of the same dtype.
    """
    right = right.sort(right_key)
    n = right.height
    if n == 0:
        return lf.with_columns(pl.lit(None, right.schema[x]).alias(x) for x in cols)
    rk = pl.lit(right[right_key])
    lf = lf.with_columns(rk.search_sorted(key).clip(upper_bound=n - 1).alias("_lk_at"))
    at = c("_lk_at")
    hit = rk.gather(at) == key
    return lf.with_columns(pl.when(hit).then(pl.lit(right[x]).gather(at)).alias(x) for x in cols).drop("_lk_at")


def missing(available, *cols: str) -> list[str]:
    return [x for x in cols if x not in available]
