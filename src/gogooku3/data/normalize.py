"""Cross-sectional (per-day) feature normalization: robust z-score or rank-gauss.

Per-day statistics (median, MAD, ranks) use only that day's rows, so they are leak-free by construction.
The only statistic pooled over time is the fallback scale for a day whose MAD and std are both zero; it is
fitted on the training span in `fit` and merely applied in `transform`.

Day-level features (one value shared by every stock on a day: market regime, index returns, calendar flags) carry
nothing across the cross-section, so a per-day z-score turns them into 0. `day_level` says what to do with them:
`time_z` standardises the day's value against its own trailing `day_level_window` sessions (point-in-time), `zero`
keeps the per-day z-score (all 0: the model does not see them). `fit` finds them (constant within >= 95 % of
the training days).

Two implementations of the same formulas: `transform` (Polars expressions on a long frame: the LightGBM baseline and
the bundle's baseline path) and `DenseNormalization` (NumPy kernels on a dense day × stock × feature panel, fed day
blocks in date order: the PanelStore, in memory or chunked from the dataset file, so every block size gives the same
bits). They agree exactly except where a day's MAD is <= EPS and its std decides the scale (the two sum in
different orders: at most 1 float32 ulp there) and in the pooled fallback std (relative 1e-12); tests pin both.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, cast, overload

import numpy as np
import polars as pl
from scipy.special import ndtri

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError, SchemaError

log = logging.getLogger(__name__)

MAD_TO_STD = 1.4826
EPS = 1e-12
METHODS = ("robust_z", "rank_gauss")
DAY_LEVEL = ("time_z", "zero")
DAY_LEVEL_SHARE = 0.95  # a feature constant within at least this share of days is day-level
DAY_LEVEL_MIN_DAYS = 20  # trailing sessions needed before a time z-score is defined (else null -> 0 downstream)
_Engine = Literal["auto", "streaming"]  # the polars collect engines used here


def _finite(col: str) -> pl.Expr:
    """The column as Float64 with NaN/±inf turned into null (never propagated as NaN)."""
    x = pl.col(col).cast(pl.Float64)
    return pl.when(x.is_finite()).then(x).otherwise(None)


class CrossSectionalNormalizer:
    """sklearn-style `fit(df, features)` / `transform(df)` on Polars frames (eager or lazy).

    robust_z: (x − median_d) / (1.4826·MAD_d), falling back to the day's std, then to the training-span
    std, clipped to ±clip. rank_gauss: Φ⁻¹((rank_d − 0.5)/n_d), clipped to ±clip. Nulls stay null.
    """

    def __init__(
        self,
        method: str = "robust_z",
        clip: float = 5.0,
        date_col: str = C.DATE,
        day_level: str = "zero",
        day_level_window: int = 252,
    ) -> None:
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
            raise SchemaError(
                f"normalizer fit: {len(missing)} feature column(s) missing, e.g. {', '.join(missing[:5])}"
            )
        if self.date_col not in schema:
            raise SchemaError(f"normalizer fit: no '{self.date_col}' column")
        self.features_ = list(features)
        if not self.features_:
            raise DataError("normalizer fit: no features given")
        # a scan is aggregated, never collected
        engine: _Engine = "streaming" if isinstance(df, pl.LazyFrame) else "auto"
        stats = lf.select(
            [_finite(f).std().alias(f) for f in self.features_]
            + [
                pl.col(self.date_col).min().alias("__lo"),
                pl.col(self.date_col).max().alias("__hi"),
                pl.len().alias("__n"),
            ]
        ).collect(engine=engine)
        if stats["__n"][0] == 0:
            raise DataError("normalizer fit: the training frame is empty")
        row = stats.row(0, named=True)
        self.fallback_std_ = {
            f: (float(row[f]) if row[f] is not None and row[f] > EPS else 1.0) for f in self.features_
        }
        self.day_level_ = self._find_day_level(lf, engine)
        self.fit_range_ = (row["__lo"], row["__hi"])
        self.n_fit_rows_ = int(row["__n"])
        return self

    def _find_day_level(self, lf: pl.LazyFrame, engine: _Engine = "auto") -> list[str]:
        d = self.date_col
        spread = lf.group_by(d).agg([(_finite(f).max() - _finite(f).min()).alias(f) for f in self.features_])
        share = (
            spread.select([(pl.col(f).abs() <= EPS).mean().alias(f) for f in self.features_])
            .collect(engine=engine)
            .row(0, named=True)
        )
        return [f for f in self.features_ if share[f] is not None and share[f] >= DAY_LEVEL_SHARE]

    @property
    def history_days(self) -> int:
        """Sessions of history before the first day to transform that `transform` needs to reproduce its values."""
        return self.day_level_window - 1 if self.day_level == "time_z" and getattr(self, "day_level_", []) else 0

    def _time_z(self, f: str) -> pl.Expr:
        x = _finite(f)
        kw: dict[str, Any] = dict(window_size=self.day_level_window, min_samples=DAY_LEVEL_MIN_DAYS)
        mean, sd = x.rolling_mean(**kw), x.rolling_std(**kw)
        z = pl.when(sd > EPS).then((x - mean) / sd).when(mean.is_not_null()).then(0.0).otherwise(None)
        return (z.clip(-self.clip, self.clip) if self.clip is not None else z).alias(f)

    def day_time_z(self, day: pl.DataFrame) -> pl.DataFrame:
        """A per-day table (one row per session in date order, a column per day-level feature holding the day's
        value) -> the trailing time z-scores (Float64, null while undefined). Shared by both paths."""
        return day.with_columns([self._time_z(f) for f in self.day_level_ if f in day.columns])

    def _day_level_exprs(self, df: pl.DataFrame | pl.LazyFrame) -> list[pl.Expr]:
        """Day-level features as trailing time z-scores of the day's value, mapped back onto every row."""
        d, feats = self.date_col, self.day_level_
        day = self.day_time_z(
            df.lazy().group_by(d).agg([_finite(f).drop_nulls().first().alias(f) for f in feats]).sort(d).collect()
        )
        return [
            pl.col(d).replace_strict(day[d], day[f], default=None, return_dtype=pl.Float64).cast(pl.Float32).alias(f)
            for f in feats
        ]

    # ---- transform --------------------------------------------------------------------------------
    def _expr(self, f: str) -> pl.Expr:
        d = self.date_col
        x = _finite(f)
        if self.method == "robust_z":
            med = x.median().over(d)
            mad = (x - med).abs().median().over(d) * MAD_TO_STD
            sd = x.std().over(d)
            scale = pl.when(mad > EPS).then(mad).when(sd > EPS).then(sd).otherwise(pl.lit(self.fallback_std_[f]))
            z = (x - med) / scale
        else:
            n = x.count().over(d).cast(pl.Float64)
            u = (x.rank("average").over(d) - 0.5) / n
            z = u.map_batches(
                lambda s: pl.Series(s.name, ndtri(s.to_numpy()), dtype=pl.Float64),
                return_dtype=pl.Float64,
                is_elementwise=True,
            )
            z = pl.when(z.is_finite()).then(z).otherwise(None)
        if self.clip is not None:
            z = z.clip(-self.clip, self.clip)
        return z.cast(pl.Float32).alias(f)

    @overload
    def transform(self, df: pl.DataFrame) -> pl.DataFrame: ...
    @overload
    def transform(self, df: pl.LazyFrame) -> pl.LazyFrame: ...
    def transform(self, df: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
        """Replace each fitted feature by its per-day normalized value (a new frame; the input is untouched)."""
        if not hasattr(self, "features_"):
            raise ConfigError("CrossSectionalNormalizer.transform called before fit")
        schema = df.collect_schema() if isinstance(df, pl.LazyFrame) else df.schema
        missing = [f for f in self.features_ if f not in schema]
        if missing:
            raise SchemaError(
                f"normalizer transform: {len(missing)} fitted feature(s) missing, e.g. {', '.join(missing[:5])}"
            )
        time_z = self.day_level_ if self.day_level == "time_z" else []
        exprs = [self._expr(f) for f in self.features_ if f not in time_z]
        return df.with_columns(exprs + (self._day_level_exprs(df) if time_z else []))

    @overload
    def fit_transform(self, df: pl.DataFrame, features: Sequence[str]) -> pl.DataFrame: ...
    @overload
    def fit_transform(self, df: pl.LazyFrame, features: Sequence[str]) -> pl.LazyFrame: ...
    def fit_transform(self, df: pl.DataFrame | pl.LazyFrame, features: Sequence[str]) -> pl.DataFrame | pl.LazyFrame:
        return self.fit(df, features).transform(df)

    def subset(self, features: Sequence[str]) -> CrossSectionalNormalizer:
        """A fitted copy restricted to `features` (each feature's statistics are its own: transforming a block of
        columns with it gives the same values as transforming them with the whole normalizer)."""
        if not hasattr(self, "features_"):
            raise ConfigError("CrossSectionalNormalizer.subset called before fit")
        keep = set(features)
        out = CrossSectionalNormalizer.from_dict(self.to_dict())
        out.features_ = [f for f in self.features_ if f in keep]
        out.fallback_std_ = {f: self.fallback_std_[f] for f in out.features_}
        out.day_level_ = [f for f in self.day_level_ if f in keep]
        return out

    # ---- report / persistence ---------------------------------------------------------------------
    def report_stats(self, normalized: pl.DataFrame) -> tuple[list[Any], list[Any], int]:
        """(mean |per-day mean|, mean per-day std) of each fitted feature, and the NaN count: what `report` reads.
        Per feature, so a report can be assembled from blocks of columns (`report(stats=...)`)."""
        d = self.date_col
        per_day = normalized.group_by(d).agg(
            [pl.col(f).mean().alias(f"{f}__m") for f in self.features_]
            + [pl.col(f).std().alias(f"{f}__s") for f in self.features_]
        )
        means = per_day.select([pl.col(f"{f}__m").abs().mean().alias(f) for f in self.features_]).row(0)
        stds = per_day.select([pl.col(f"{f}__s").mean().alias(f) for f in self.features_]).row(0)
        nan_count = int(normalized.select(pl.sum_horizontal([pl.col(f).is_nan().sum() for f in self.features_])).item())
        return list(means), list(stds), nan_count

    def report(
        self,
        normalized: pl.DataFrame | None,
        max_warnings: int = 20,
        stats: tuple[list[Any], list[Any], int] | None = None,
    ) -> dict[str, Any]:
        """Mean |per-day mean| and mean per-day std over the normalized features, plus warnings; `stats`: the
        `report_stats` of every fitted feature in order (given instead of `normalized`)."""
        means, stds, nan_count = stats if stats is not None else self.report_stats(cast(pl.DataFrame, normalized))
        warnings = []
        day_level = set(getattr(self, "day_level_", []))
        for f, m, s in zip(self.features_, means, stds, strict=True):
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
        return {
            "method": self.method,
            "clip": self.clip,
            "date_col": self.date_col,
            "day_level": self.day_level,
            "day_level_window": self.day_level_window,
            "features": list(getattr(self, "features_", [])),
            "fallback_std": dict(getattr(self, "fallback_std_", {})),
            "day_level_features": list(getattr(self, "day_level_", [])),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CrossSectionalNormalizer:
        obj = cls(
            d.get("method", "robust_z"),
            d.get("clip", 5.0),
            d.get("date_col", C.DATE),
            d.get("day_level", "zero"),
            int(d.get("day_level_window", 252)),
        )
        if d.get("features"):
            obj.features_ = list(d["features"])
            fb = d.get("fallback_std", {})
            obj.fallback_std_ = {f: float(fb.get(f, 1.0)) for f in obj.features_}
            obj.day_level_ = list(d.get("day_level_features", []))
        return obj


# ---- dense panel path ---------------------------------------------------------------------------------------
SUB_BLOCK_ELEMS = 1 << 22  # values per kernel call (~4 M: ~130 MB of reused work arrays per thread)


class _Workspace:
    """Work arrays reused across kernel calls: a fresh large array costs a page fault per 4 KB page on first touch
    (half the kernel's time on a VM), a reused one nothing."""

    def __init__(self) -> None:
        self.bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype, size = np.dtype(dtype), int(np.prod(shape))
        b = self.bufs.get(name)
        if b is None or b.dtype != dtype or b.size < size:
            b = self.bufs[name] = np.empty(size, dtype)
        return b[:size].reshape(shape)


def _sorted_median(s: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Median of each ascending row of s [R, M] (NaN last) over its n[r] values, as Polars computes it:
    lo + (hi - lo)·0.5 of the two middle order statistics, in float64; NaN where n == 0."""
    r, M = np.arange(len(s)), s.shape[1]
    lo = s[r, np.maximum(n - 1, 0) // 2].astype(np.float64)
    hi = s[r, np.minimum(n // 2, M - 1)].astype(np.float64)
    med = lo + (hi - lo) * 0.5
    med[n == 0] = np.nan
    return med


def _sorted_kth_distance(s: np.ndarray, n: np.ndarray, c: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The k[r]-th smallest (0-based) of |s[r, j] - c[r]| (float64) over the n[r] values of each ascending row of s,
    without forming or sorting the distances: those of the values below c, read outwards, and those of the rest
    are two ascending lists, and the k-th of their merge is found by bisection (O(log M) gathers per row)."""
    R, M = s.shape
    r, n = np.arange(R), n.astype(np.int64)

    def dist(j: np.ndarray) -> np.ndarray:
        return np.abs(s[r, np.clip(j, 0, M - 1)].astype(np.float64) - c)

    lo, hi = np.zeros(R, np.int64), n.copy()  # p = how many values are < c
    with np.errstate(invalid="ignore"):
        while (act := lo < hi).any():
            mid = (lo + hi) // 2
            less = s[r, np.minimum(mid, M - 1)].astype(np.float64) < c
            lo, hi = np.where(act & less, mid + 1, lo), np.where(act & ~less, mid, hi)
    p = lo
    k = np.maximum(k, 0)
    ilo, ihi = np.maximum(0, k + 1 - (n - p)), np.minimum(k + 1, p)  # i: how many of the k+1 smallest are below c
    while (act := ilo < ihi).any():
        i = (ilo + ihi) // 2
        j = k + 1 - i
        more = (i < p) & (j > 0) & (dist(p + j - 1) > dist(p - 1 - i))
        ilo, ihi = np.where(act & more, i + 1, ilo), np.where(act & ~more, i, ihi)
    i, j = ilo, k + 1 - ilo
    out = np.maximum(np.where(i > 0, dist(p - i), -np.inf), np.where(j > 0, dist(p + j - 1), -np.inf))
    out[n == 0] = np.nan
    return out


def _average_ranks(y: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """1-based average ranks (ties share the mean rank) of each row's non-NaN values; NaN elsewhere."""
    order = np.argsort(y, axis=-1, kind="stable")  # NaN last
    s = np.take_along_axis(y, order, axis=-1)
    M = y.shape[1]
    pos = np.broadcast_to(np.arange(M), y.shape)
    new = np.ones(y.shape, bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]  # a new tie group starts (NaN != NaN: own groups)
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=-1)
    last = np.ones(y.shape, bool)
    last[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(last, pos, M - 1)[:, ::-1], axis=-1)[:, ::-1]
    ranks = np.empty(y.shape, np.float64)
    np.put_along_axis(ranks, order, (start + end) / 2.0 + 1.0, axis=-1)
    ranks[~ok] = np.nan
    return ranks


class DenseNormalization:
    """The normalizer applied to a dense panel, one block of days at a time in date order.

    `block(y, present)` takes y [F, b, N] (panel features × days × stocks, any strides, e.g. a [b, N, F] block
    transposed; the raw values, NaN/±inf = null, NaN for a stock without a row that day) and present [b, N] (the
    row exists) and yields (day offset, out) with out [sb, N, F] float32, nulls as 0 — the panel's layout; `out` is
    reused: use it before the next iteration. Every statistic is per day, except two fitted ones: the day-level
    features (from each day's max − min) and the pooled fallback std (each day's count, mean and squared
    deviations, combined in date order). Neither depends on how the days are split into blocks, so a chunked
    conversion and an in-memory one give identical arrays. When the normalizer is not fitted yet it is fitted on
    the panel (leak-free: only the fallback scale is pooled, see `fit`); the few values that need the fallback
    before it is known come back from `finish` as patches. With day_level=time_z the day-level features must be
    known first: pass every day's `spread` to `set_day_level` before the first block.
    """

    def __init__(
        self,
        norm: CrossSectionalNormalizer,
        features: Sequence[str],
        workers: int | None = None,
        sub_block_elems: int | None = None,
    ) -> None:
        self.norm, self.features = norm, list(features)
        self.fitting = not hasattr(norm, "features_")
        if self.fitting:
            if not self.features:
                raise DataError("normalizer fit: no features given")
            norm.features_ = list(self.features)
            norm.fallback_std_ = {}
            norm.day_level_ = []
            self._day_level_known = norm.day_level != "time_z"
        else:
            self._day_level_known = True
        self.workers = max(1, min(8, os.cpu_count() or 1)) if workers is None else max(1, int(workers))
        self.sub_block_elems = int(sub_block_elems or SUB_BLOCK_ELEMS)
        self.day0 = 0
        self._moments: list[np.ndarray] = []  # per day [3, F]: count, mean, M2 of each feature's finite values
        self._spread: list[np.ndarray] = []  # per day [F]: max - min
        self._history: list[np.ndarray] = []  # per day [k]: the day-level features' day values (time_z)
        self._pending: list[tuple[int, int, np.ndarray]] = []
        self._rows = 0
        self._local = threading.local()  # each worker thread's _Workspace
        self._outs = [_Workspace() for _ in range(2 * self.workers)]  # one output array per task slot
        self._pool: ThreadPoolExecutor | None = None
        self._layout()

    @property
    def needs_day_level(self) -> bool:
        """True until `set_day_level` ran, when the day-level features decide the output (day_level=time_z)."""
        return not self._day_level_known

    def _layout(self) -> None:
        norm, fitted = self.norm, set(self.norm.features_)
        time_z = set(norm.day_level_) if norm.day_level == "time_z" else set()
        self.time_z_cols = [k for k, f in enumerate(self.features) if f in time_z]
        self.norm_cols = [k for k, f in enumerate(self.features) if f in fitted and f not in time_z]
        self.raw_cols = [k for k, f in enumerate(self.features) if f not in fitted]
        self.fit_cols = [k for k, f in enumerate(self.features) if f in fitted]
        fb = getattr(norm, "fallback_std_", {})
        self.fallback = np.array([fb.get(self.features[k], np.nan) for k in self.norm_cols], np.float64)

    # ---- the day-level pre-pass (time_z) -----------------------------------------------------------------
    @staticmethod
    def spread(y: np.ndarray, chunk_days: int = 64) -> np.ndarray:
        """[F, b, N] raw -> [b, F] float64: each day's max − min of each feature's finite values (NaN if none)."""
        out = []
        for s in range(0, y.shape[1], chunk_days):
            v = y[:, s : s + chunk_days]
            x = np.where(np.isfinite(v), v, np.nan)
            with np.errstate(invalid="ignore"):
                out.append((np.fmax.reduce(x, axis=-1).astype(np.float64) - np.fmin.reduce(x, axis=-1)).T)
        return np.concatenate(out) if out else np.zeros((0, y.shape[0]))

    def set_day_level(self, spread: np.ndarray) -> list[str]:
        """Find the day-level features from every day's `spread` [D, F] (what `fit` does on a frame)."""
        if self.fitting:
            self.norm.day_level_ = _day_level_from_spread(spread, self.features)
            self._layout()
        self._day_level_known = True
        return self.norm.day_level_

    # ---- blocks ----------------------------------------------------------------------------------------------
    def block(self, y: np.ndarray, present: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        if self.needs_day_level:
            raise ConfigError("DenseNormalization: day_level=time_z needs set_day_level before the first block")
        F, b, N = y.shape
        if F != len(self.features) or present.shape != (b, N):
            raise ValueError(f"DenseNormalization.block: shapes {y.shape} / {present.shape} do not match")
        day_z = self._day_z(y, present) if self.time_z_cols else None
        step = max(1, self.sub_block_elems // max(1, F * N))
        subs = [(s, min(s + step, b)) for s in range(0, b, step)]

        def run(slot: int, se: tuple[int, int]) -> tuple[np.ndarray, list, list, list]:
            s, e = se
            return self._sub(
                y[:, s:e], present[s:e], None if day_z is None else day_z[s:e], self.day0 + s, self._outs[slot]
            )

        def take(group: list, results: Iterable) -> Iterator[tuple[int, np.ndarray]]:
            for (s, _), (out, moments, spread, patches) in zip(group, results, strict=True):
                self._moments.extend(moments)
                self._spread.extend(spread)
                self._pending.extend(patches)
                yield s, out

        w = self.workers
        if w > 1 and len(subs) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(w, thread_name_prefix="normalize")
            # one group of sub-blocks computes while the caller consumes the previous one (two sets of outputs)
            pending: tuple[list, list] | None = None
            for n_group, g in enumerate(range(0, len(subs), w)):
                group = subs[g : g + w]
                futures = [self._pool.submit(run, (n_group % 2) * w + k, se) for k, se in enumerate(group)]
                if pending is not None:
                    yield from take(pending[0], (f.result() for f in pending[1]))
                pending = (group, futures)
            if pending is not None:
                yield from take(pending[0], (f.result() for f in pending[1]))
        else:
            for se in subs:
                yield from take([se], [run(0, se)])
        self._rows += int(np.count_nonzero(present))
        self.day0 += b

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _day_z(self, y: np.ndarray, present: np.ndarray) -> np.ndarray:
        """[b, k] float64 time z-scores of this block's days: each day's value is the first finite one in stock
        order; the trailing statistics run over every day seen so far (the same table as a single pass)."""
        v = y[self.time_z_cols].astype(np.float64)  # [k, b, N]
        ok = np.isfinite(v)
        first = np.take_along_axis(v, ok.argmax(-1)[..., None], -1)[..., 0]
        self._history.append(np.where(ok.any(-1), first, np.nan).T)
        hist = np.concatenate(self._history)
        names = [self.features[k] for k in self.time_z_cols]
        table = pl.DataFrame({f: hist[:, j] for j, f in enumerate(names)})
        z = self.norm.day_time_z(table).select(names).to_numpy().astype(np.float64)
        return z[-y.shape[1] :]

    def _sub(
        self, y: np.ndarray, present: np.ndarray, day_z: np.ndarray | None, d0: int, outs: _Workspace
    ) -> tuple[np.ndarray, list, list, list]:
        ws = getattr(self._local, "ws", None)
        if ws is None:
            ws = self._local.ws = _Workspace()
        F, sb, N = y.shape
        out = outs.get("out", (sb, N, F), np.float32)  # every column is written below
        norm, clip = self.norm, self.norm.clip
        for k in self.raw_cols:  # not normalised: as is, NaN -> 0
            v = y[k]
            out[:, :, k] = np.where(np.isnan(v), 0.0, v)
        nf = len(self.fit_cols)
        R = nf * sb
        x3 = ws.get("x", (nf, sb, N), y.dtype)  # rows (feature, day), a copy
        src = y if nf == F else y[self.fit_cols]
        for j in range(0, N, 32):  # in tiles of stocks: y is often a transposed view
            np.copyto(x3[:, :, j : j + 32], src[:, :, j : j + 32])
        x = x3.reshape(R, N)
        ok = np.isfinite(x, out=ws.get("ok", (R, N), bool))
        nok = np.logical_not(ok, out=ws.get("nok", (R, N), bool))
        np.copyto(x, np.nan, where=nok)  # ±inf is null too
        n = np.count_nonzero(ok, axis=-1)
        with np.errstate(invalid="ignore"):
            spread = np.fmax.reduce(x, axis=-1).astype(np.float64) - np.fmin.reduce(x, axis=-1)
        dev = ws.get("dev", (R, N), np.float64)  # x - shift, 0 where null
        np.copyto(dev, x)
        robust = norm.method == "robust_z"
        with np.errstate(invalid="ignore", divide="ignore"):
            if robust:
                x.sort(axis=-1)  # NaN last; x is scratch from here
                shift = _sorted_median(x, n)
                dev -= shift[:, None]
                np.copyto(dev, 0.0, where=nok)
            else:
                np.copyto(dev, 0.0, where=nok)
                shift = dev.sum(-1) / n
                dev -= shift[:, None]
                np.copyto(dev, 0.0, where=nok)
            s1 = dev.sum(-1)  # per-day moments about the shift (|mean - median|
            m2 = np.maximum(np.einsum("ij,ij->i", dev, dev) - s1 * s1 / n, 0.0)  # <= std: no cancellation)
            mean = shift + s1 / n
            sd = np.sqrt(m2 / (n - 1))
        moments = list(np.stack([n.astype(np.float64), mean, m2]).reshape(3, nf, sb).transpose(2, 0, 1))
        spreads = list(spread.reshape(nf, sb).T)
        patches: list[tuple[int, int, np.ndarray]] = []
        if self.norm_cols:
            whole = len(self.norm_cols) == nf  # every fitted feature normalised here (the usual)
            rows = (
                slice(None)
                if whole
                else (
                    np.asarray([self.fit_cols.index(k) for k in self.norm_cols])[:, None] * sb + np.arange(sb)
                ).ravel()
            )
            dv, ns, sds, nk = (dev, n, sd, nok) if whole else (dev[rows], n[rows], sd[rows], nok[rows])
            if robust:
                xs, c = x[rows], shift[rows]
                lo = _sorted_kth_distance(xs, ns, c, (ns - 1) // 2)
                hi = _sorted_kth_distance(xs, ns, c, ns // 2)
                mad = (lo + (hi - lo) * 0.5) * MAD_TO_STD
                fb = np.repeat(self.fallback, sb)
                use_fb = ~(mad > EPS) & ~(sds > EPS)
                if self.fitting:  # the fallback is known once every day is seen
                    for r in np.flatnonzero(use_fb & (ns > 0)):
                        if (dv[r] != 0).any():
                            patches.append((d0 + int(r % sb), self.norm_cols[int(r // sb)], dv[r].copy()))
                    fb = np.ones_like(fb)  # exact for the rest: their deviations are all 0
                scale = np.where(mad > EPS, mad, np.where(sds > EPS, sds, fb))
                dv /= scale[:, None]  # nulls stay 0
                z = dv
            else:
                xs = np.array(src, order="C").reshape(R, N)[rows]
                xs[~np.isfinite(xs)] = np.nan
                with np.errstate(invalid="ignore", divide="ignore"):
                    z = ndtri((_average_ranks(xs, ~np.isnan(xs)) - 0.5) / ns[:, None])
                np.copyto(z, 0.0, where=nk | ~np.isfinite(z))  # null -> 0
            if clip is not None:
                np.clip(z, -clip, clip, out=z)
            z3 = z.reshape(len(self.norm_cols), sb, N).transpose(1, 2, 0)
            if len(self.norm_cols) == F:
                np.copyto(out, z3, casting="same_kind")  # float64 -> float32 in the transposing copy
            else:
                out[:, :, self.norm_cols] = z3
        if day_z is not None:  # the day's time z on every row present that day
            zz = np.where(np.isnan(day_z), 0.0, day_z).astype(np.float32)  # [sb, k]
            out[:, :, self.time_z_cols] = np.where(present[..., None], zz[:, None, :], np.float32(0.0))
        return out, moments, spreads, patches

    # ---- end ---------------------------------------------------------------------------------------------
    def finish(self, date_range: tuple[Any, Any] | None = None) -> list[tuple[int, int, np.ndarray]]:
        """Complete the fit (pooled fallback std, day-level features) when the normalizer was not fitted and return
        the patches: (day, feature column, float32 [N] values) to write over the yielded blocks."""
        self.close()
        if not self.fitting:
            return []
        norm = self.norm
        if self._rows == 0:
            raise DataError("normalizer fit: the training frame is empty")
        mom = np.stack(self._moments) if self._moments else np.zeros((0, 3, len(self.fit_cols)))
        cnt, _, m2 = _combine_days(mom)
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.where(cnt >= 2, np.sqrt(m2 / (cnt - 1)), np.nan)
        norm.fallback_std_ = {
            self.features[k]: (float(std[j]) if std[j] > EPS else 1.0) for j, k in enumerate(self.fit_cols)
        }
        if norm.day_level != "time_z":
            norm.day_level_ = _day_level_from_spread(np.stack(self._spread), [self.features[k] for k in self.fit_cols])
        norm.fit_range_ = date_range if date_range is not None else (None, None)
        norm.n_fit_rows_ = self._rows
        self._layout()
        out = []
        for d, k, dev in self._pending:  # dev: 0 where null
            z = dev / norm.fallback_std_[self.features[k]]
            if norm.clip is not None:
                z = np.clip(z, -norm.clip, norm.clip)
            out.append((d, k, z.astype(np.float32)))
        self._pending = []
        return out


def _combine_days(mom: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-day (count, mean, M2) [D, 3, F] combined in date order (Chan et al.) -> pooled count, mean, M2 [F]."""
    F = mom.shape[2]
    cnt, mean, m2 = np.zeros(F), np.zeros(F), np.zeros(F)
    for n_d, mean_d, m2_d in mom:
        has = n_d > 0
        tot = cnt + n_d
        with np.errstate(invalid="ignore", divide="ignore"):
            delta = mean_d - mean
            mean = np.where(has, mean + delta * (n_d / tot), mean)
            m2 = np.where(has, m2 + m2_d + delta * delta * (cnt * n_d / tot), m2)
        cnt = tot
    return cnt, mean, m2


def _day_level_from_spread(spread: np.ndarray, features: Sequence[str]) -> list[str]:
    """Features constant (max − min <= EPS) within >= DAY_LEVEL_SHARE of the days where they have a value."""
    out = []
    for j, f in enumerate(features):
        s = spread[:, j]
        s = s[~np.isnan(s)]
        if len(s) and float(np.mean(np.abs(s) <= EPS)) >= DAY_LEVEL_SHARE:
            out.append(f)
    return out
