"""Risk-neutral scoring and learning: a column residualised per day against the stocks' factor exposures.

    residual(y) on day d = y − ŷ,   ŷ = OLS of y on [sector dummies, log size, beta, ...] over day d's stocks

Point in time: only day d's exposures and day d's values enter day d's regression (the dataset's `S33`,
`market_cap` and `beta_60d` of that row are known at its close). The regression is solved by Frisch–Waugh: y and the
numeric exposures are demeaned within (day, sector), then y is regressed on the demeaned exposures (one k × k system
per day, batched), which is the OLS with one dummy per sector. Vectorised over days (Polars `over`, one batched
`numpy.linalg.pinv`); no loop over days.

Rules (`Exposures`):
- **Sample.** A row takes part in its day's regression when y is finite; the others get a null residual.
- **Missing exposure.** A stock without a numeric exposure (null, non-finite, or ≤ 0 for a `log` one) is set to its
  sector's mean of that exposure that day: it does not move that slope and gets no correction for it (the sector
  dummy still applies). A null sector is a group of its own.
- **Small sectors.** Stocks of a sector with fewer than `min_sector_size` sampled stocks that day are pooled into one
  group (a sector of one stock would otherwise get a residual of exactly 0).
- **Small days.** A day with fewer than `min_stocks` sampled stocks gets null residuals: a neutral value that is not
  one is never passed off as one (`daily_ic` does not score days under 5 stocks anyway).
- **Collinearity.** The per-day system is solved with a pseudo-inverse: an exposure without spread that day (after
  the sector demeaning) gets slope 0.

`book_exposures` measures the other side: a backtest book's net exposure to each sector, size and beta per cohort.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, SchemaError
from gogooku3.evaluation import metrics
from gogooku3.features.published import dataset_files

if TYPE_CHECKING:
    from gogooku3.config.schema import NeutralSettings, Settings
    from gogooku3.data.panel import PanelStore

POOLED = "__pooled__"  # the group of the small sectors' stocks
NULL_SECTOR = "__none__"  # the group of stocks without a sector
RCOND = 1e-10  # pseudo-inverse cut-off, relative to the day's largest singular value

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exposures:
    """What a column is neutralised against: `sector` (categorical: one dummy per value; None: an intercept only),
    numeric exposures entered as their log (`log`) or as they are (`linear`), and the small-group rules."""

    sector: str | None
    log: tuple[str, ...]
    linear: tuple[str, ...]
    min_sector_size: int
    min_stocks: int

    def __post_init__(self) -> None:
        if self.min_sector_size < 1 or self.min_stocks < 2:
            raise ConfigError(
                f"neutral: min_sector_size >= 1 and min_stocks >= 2, got {self.min_sector_size}, {self.min_stocks}"
            )
        both = set(self.log) & set(self.linear)
        if both:
            raise ConfigError(f"neutral: {', '.join(sorted(both))} listed under both log and linear")

    @classmethod
    def from_settings(cls, s: NeutralSettings) -> Exposures:
        return cls(s.sector, tuple(s.log), tuple(s.linear), s.min_sector_size, s.min_stocks)

    @property
    def numeric(self) -> list[str]:
        return [*self.log, *self.linear]

    @property
    def columns(self) -> list[str]:
        """The dataset columns the exposures are read from."""
        return [*([self.sector] if self.sector else []), *self.numeric]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _x(name: str, log: bool) -> pl.Expr:
    x = pl.col(name).cast(pl.Float64)
    if log:
        x = pl.when(x > 0).then(x.log())
    return pl.when(x.is_finite()).then(x)


def exposure_frame(dataset: str | Path, days: Sequence[dt.date], ex: Exposures) -> pl.DataFrame:
    """Date, Code and the exposure columns of `dataset` on `days` (the rows of those days only: point in time)."""
    lf = pl.scan_parquet(dataset_files(dataset))  # a plain file or a partitioned folder
    have = lf.collect_schema()
    missing = [c for c in ex.columns if c not in have]
    if missing:
        raise SchemaError(f"{dataset}: neutral exposure column(s) {', '.join(missing)} missing (see conf neutral)")
    return (
        lf.select(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String), *ex.columns)
        .filter(pl.col(C.DATE).is_in(pl.Series(sorted(set(days)), dtype=pl.Date).implode()))
        .collect()
    )


def _design(df: pl.DataFrame, ex: Exposures) -> pl.DataFrame:
    """Date, __sec (String, never null), __x0.. (Float64, null where missing) in `df`'s row order."""
    sec = pl.col(ex.sector).cast(pl.String).fill_null(NULL_SECTOR) if ex.sector else pl.lit(NULL_SECTOR)
    xs = [_x(n, True) for n in ex.log] + [_x(n, False) for n in ex.linear]
    return df.select(pl.col(C.DATE), sec.alias("__sec"), *[x.alias(f"__x{j}") for j, x in enumerate(xs)])


def _residual(design: pl.DataFrame, y: pl.Series, ex: Exposures) -> pl.Series:
    """The per-day residual of `y` (aligned with `design`'s rows) under the module's rules."""
    k = len(ex.numeric)
    xs = [f"__x{j}" for j in range(k)]
    yv = y.cast(pl.Float64)
    f = design.with_columns(__y=pl.when(yv.is_finite()).then(yv))
    ok = pl.col("__y").is_not_null()
    n_sec = ok.sum().over(C.DATE, "__sec")
    f = f.with_columns(__g=pl.when(n_sec >= ex.min_sector_size).then(pl.col("__sec")).otherwise(pl.lit(POOLED)))
    g = [C.DATE, "__g"]
    f = f.with_columns(
        (pl.col("__y") - pl.col("__y").mean().over(g)).alias("__yt"),
        # a missing exposure sits at its group's mean: demeaned, 0 (and 0 where the whole group lacks it)
        *[(pl.col(x) - pl.when(ok).then(pl.col(x)).mean().over(g)).fill_null(0.0).alias(x) for x in xs],
    )
    sums = (
        f.filter(ok)
        .group_by(C.DATE)
        .agg(
            pl.len().alias("__n"),
            *[(pl.col(xs[a]) * pl.col(xs[b])).sum().alias(f"__s{a}_{b}") for a in range(k) for b in range(a, k)],
            *[(pl.col(x) * pl.col("__yt")).sum().alias(f"__b{j}") for j, x in enumerate(xs)],
        )
        .sort(C.DATE)
    )
    if k:
        s = np.zeros((sums.height, k, k))
        for a in range(k):
            for b in range(a, k):
                s[:, a, b] = s[:, b, a] = sums[f"__s{a}_{b}"].to_numpy()
        rhs = np.stack([sums[f"__b{j}"].to_numpy() for j in range(k)], axis=1)[:, :, None]
        beta = (np.linalg.pinv(s, rcond=RCOND, hermitian=True) @ rhs)[:, :, 0]
        sums = sums.with_columns(*[pl.Series(f"__beta{j}", beta[:, j]) for j in range(k)])
    fitted = pl.sum_horizontal([pl.col(x) * pl.col(f"__beta{j}") for j, x in enumerate(xs)]) if k else pl.lit(0.0)
    out = f.join(
        sums.select(C.DATE, "__n", *[f"__beta{j}" for j in range(k)]), on=C.DATE, how="left", maintain_order="left"
    )
    return out.select(
        pl.when(ok & (pl.col("__n") >= ex.min_stocks)).then(pl.col("__yt") - fitted).alias(y.name)
    ).to_series()


def residualize(df: pl.DataFrame, cols: Sequence[str], ex: Exposures) -> pl.DataFrame:
    """`df` (Date, the exposure columns, `cols`) with each of `cols` replaced by its per-day residual against the
    exposures (Float64; the module's rules); row order kept."""
    missing = [c for c in [C.DATE, *ex.columns, *cols] if c not in df.columns]
    if missing:
        raise SchemaError(f"neutral: frame lacks column(s) {', '.join(missing)}")
    design = _design(df, ex)
    return df.with_columns(*[_residual(design, df[c], ex) for c in cols])


def neutralize(frame: pl.DataFrame, cols: Sequence[str], exposures: pl.DataFrame, ex: Exposures) -> pl.DataFrame:
    """`frame` (Date, Code, `cols`, ...) with `cols` residualised per day against `exposures` (`exposure_frame`,
    joined on Date, Code; a row without one has missing exposures: the module's rule). Same rows, same order."""
    keys = [C.DATE, C.CODE]
    missing = [c for c in [*keys, *ex.columns] if c not in exposures.columns]
    if missing:
        raise SchemaError(f"neutral: the exposures lack column(s) {', '.join(missing)}")
    drop = [c for c in ex.columns if c in frame.columns]
    j = frame.drop(drop).join(exposures.select(*keys, *ex.columns), on=keys, how="left", maintain_order="left")
    out = residualize(j, cols, ex)
    return out.select(frame.columns).with_columns(*[out[c].cast(frame.schema[c]) for c in cols])


# ---- the report's tables ---------------------------------------------------------------------------------------
def _summary(daily: pl.DataFrame, h: int) -> dict[str, Any]:
    s = metrics.summarize_ic(daily, h)
    return {k: s[k] for k in ("ic_mean", "rank_ic_mean", "rank_ic_std", "rank_icir", "rank_ic_tstat", "n_days")}


def raw_and_neutral(
    frames: Mapping[str, pl.DataFrame], horizons: Sequence[int], exposures: pl.DataFrame, ex: Exposures
) -> dict[str, dict[str, dict[str, Any]]]:
    """name -> horizon -> {"raw": ..., "neutral": ..., "rows": n}: IC, RankIC mean/std, ICIR and HAC t of each
    predictor's predictions as they are and after `neutralize`, on the same rows (those with a neutral value; pass
    frames aligned on identical rows, `compare.align`)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name, f in frames.items():
        hs = [int(h) for h in horizons if C.pred(h) in f.columns and C.target(h) in f.columns]
        n = neutralize(f, [C.pred(h) for h in hs], exposures, ex)
        out[name] = {}
        for h in hs:
            p, y = C.pred(h), C.target(h)
            both = f.select(C.DATE, p, y).with_columns(n[p].alias("__n")).filter(pl.col("__n").is_not_null())
            raw = metrics.daily_ic(both, p, y)
            neu = metrics.daily_ic(both, "__n", y)
            out[name][str(h)] = {"raw": _summary(raw, h), "neutral": _summary(neu, h), "rows": both.height}
    return out


def book_exposures(positions: pl.DataFrame, exposures: pl.DataFrame, ex: Exposures) -> dict[str, Any]:
    """A book's net factor exposure per cohort (positions: Date = the cohort's signal date, Code, signed weight `w`
    per unit of the cohort's capital): Σ w per sector, Σ w · z(log size) and Σ w · x for the other numeric exposures
    (z: the day's cross-sectional z-score over the stocks with a value, so a size exposure is in cross-sectional sd),
    summarised over cohorts as mean and mean of |·| (a book that swings from one side to the other has a small mean
    and a large |mean|)."""
    keys = [C.DATE, C.CODE]
    std = [
        ((x - x.mean().over(C.DATE)) / x.std().over(C.DATE)).alias(n) if n in ex.log else x.alias(n)
        for n, x in ((n, _x(n, n in ex.log)) for n in ex.numeric)
    ]
    e = exposures.select(*keys, *([pl.col(ex.sector).cast(pl.String)] if ex.sector else []), *std)
    pos = positions.select(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String), "w").join(
        e, on=keys, how="left"
    )
    numeric = {}
    if pos.height:
        per = pos.group_by(C.DATE).agg(*[(pl.col("w") * pl.col(n)).sum().alias(n) for n in ex.numeric])
        numeric = {n: _mean_abs(per[n]) for n in ex.numeric}
    sectors: dict[str, dict[str, float]] = {}
    if ex.sector and pos.height:
        cohorts = pos.select(C.DATE).unique()
        per_s = pos.group_by(C.DATE, ex.sector).agg(pl.col("w").sum())
        for (s,), part in per_s.partition_by(ex.sector, as_dict=True).items():
            full = cohorts.join(part.select(C.DATE, "w"), on=C.DATE, how="left").fill_null(0.0)
            sectors[str(s)] = _mean_abs(full["w"])
    return {
        "cohorts": pos.select(C.DATE).n_unique() if pos.height else 0,
        "numeric": numeric,
        "sectors": dict(sorted(sectors.items(), key=lambda kv: -kv[1]["mean_abs"])),
        "sector_mean_abs_total": sum(v["mean_abs"] for v in sectors.values()),
    }


def _mean_abs(x: pl.Series) -> dict[str, float]:
    v = x.cast(pl.Float64).drop_nulls()
    mean = float(v.mean()) if v.len() else math.nan  # type: ignore[arg-type]
    return {"mean": mean, "mean_abs": float(v.abs().mean()) if v.len() else math.nan}  # type: ignore[arg-type]


# ---- residualised labels for training (`neutral.targets`) -------------------------------------------------------
def targets_spec(cfg: Settings) -> Exposures | None:
    """The exposures the models' training labels are residualised against, or None (`neutral.targets` false)."""
    return Exposures.from_settings(cfg.neutral) if cfg.neutral.targets else None


def neutral_labels(df: pl.DataFrame, horizons: Sequence[int], ex: Exposures) -> pl.DataFrame:
    """Date, Code, target_{h}d residualised per day against `df`'s own exposure columns (raw, not normalised)."""
    cols = [C.target(h) for h in horizons]
    return residualize(df.select(C.DATE, C.CODE, *ex.columns, *cols), cols, ex).select(C.DATE, C.CODE, *cols)


def with_labels(frame: pl.DataFrame, labels: pl.DataFrame) -> pl.DataFrame:
    """`frame` with its target columns replaced by those of `labels` (joined on Date, Code; row order kept)."""
    cols = [c for c in labels.columns if c not in (C.DATE, C.CODE)]
    return frame.drop(cols).join(labels, on=[C.DATE, C.CODE], how="left", maintain_order="left")


def neutral_panel(panel: PanelStore, dataset: str | Path, ex: Exposures) -> PanelStore:
    """A copy of `panel` whose targets are residualised per day against the dataset's exposures of the same rows
    (`neutral.targets` for the deep models; the cached panel on disk is left as it is). The copy has no `root`: its
    targets live in memory only, so the ensemble's members train in this process (worker processes would load the
    cached panel's raw targets)."""
    days, codes = panel.dates, panel.codes
    di, ci = np.nonzero(np.asarray(panel.mask))
    y = np.asarray(panel.targets)[di, ci]  # [rows, H]
    cols = [C.target(h) for h in panel.horizons]
    long = pl.DataFrame(
        {
            C.DATE: pl.Series(C.DATE, days, dtype=pl.Date).gather(di),
            C.CODE: pl.Series(C.CODE, codes, dtype=pl.String).gather(ci),
            **{c: pl.Series(c, y[:, j], dtype=pl.Float64, nan_to_null=True) for j, c in enumerate(cols)},
        }
    )
    res = neutralize(long, cols, exposure_frame(dataset, days, ex), ex)
    out = np.full(np.asarray(panel.targets).shape, np.nan, dtype=np.float32)
    for j, c in enumerate(cols):
        out[di, ci, j] = res[c].fill_null(np.nan).to_numpy().astype(np.float32)
    return dataclasses.replace(panel, targets=out, root=None)


def with_neutral_targets(cfg: Settings, dataset: str | Path, panel: PanelStore) -> PanelStore:
    """`panel` as it is, or with residualised targets when `neutral.targets` is on (`data.dataset.load_panel`)."""
    ex = targets_spec(cfg)
    if ex is None:
        return panel
    log.info("neutral.targets: the deep models train on labels residualised against %s", ", ".join(ex.columns))
    return neutral_panel(panel, dataset, ex)


def report_tables(
    frames: Mapping[str, pl.DataFrame],
    horizons: Sequence[int],
    positions: Mapping[str, pl.DataFrame | None],
    dataset: str | Path,
    ex: Exposures,
) -> dict[str, Any]:
    """The report's risk-neutral view: the exposures, `raw_and_neutral` of every predictor (aligned frames in) and
    `book_exposures` of each predictor's backtest book (`positions`: name -> the book's positions, or None)."""
    days = sorted({d for f in frames.values() for d in f[C.DATE].unique().to_list()})
    expo = exposure_frame(dataset, days, ex)
    return {
        "exposures": ex.to_dict(),
        "ic": raw_and_neutral(frames, horizons, expo, ex),
        "book": {k: book_exposures(p, expo, ex) for k, p in positions.items() if p is not None},
    }
