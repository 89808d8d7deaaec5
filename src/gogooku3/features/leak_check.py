"""The content check of user columns (`x_*`, files source): a column that tracks a FUTURE return is refused.

A name can be innocent (`signal`) while its values are tomorrow's return. For each user column and each forward
return of the dataset's own horizons (from t to t+k sessions for k in the horizons and the entry lag, and the labels
themselves, from t+lag to t+lag+h; computed from the adjusted close as the labels are), the daily rank correlation
(RankIC: the correlation of the day's ranks) over the day's stocks is taken on at most `features.user.max_days` days
spread over the history. A column whose |daily RankIC| exceeds `features.user.max_abs_rankic` on more than
`features.user.max_share_of_days` of the days with at least `features.user.min_stocks` stocks is refused with the
figures; `features.user.allow` keeps a column anyway.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.calendar import TradingCalendar
from gogooku3.core.errors import DataError
from gogooku3.features.plan import Tables, base_frame, plain_config
from gogooku3.features.targets import add_targets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Leak:
    column: str
    window: tuple[int, int]  # forward return from session t+a to t+b
    median_abs: float  # median |daily RankIC| over the counted days
    share: float  # share of the counted days with |RankIC| above the threshold
    days: int  # days with enough stocks


def forward_windows(horizons: list[int], entry_lag: int) -> list[tuple[int, int]]:
    """(a, b): the forward returns from session t+a to t+b the check compares with (the labels among them)."""
    ends = sorted({*horizons, entry_lag} - {0})
    out = [(0, k) for k in ends]
    out += [(entry_lag, entry_lag + h) for h in horizons if entry_lag > 0]
    return list(dict.fromkeys(out))


def _name(w: tuple[int, int]) -> str:
    return f"_fwd_{w[0]}_{w[1]}"


def with_forward_returns(lf: pl.LazyFrame, cal: TradingCalendar, windows: list[tuple[int, int]]) -> pl.LazyFrame:
    """`lf` (Code, Date, Close sorted by Code, Date) with one column per window, built as the labels are."""
    for lag in sorted({a for a, _ in windows}):
        hs = [b - a for a, b in windows if a == lag]
        lf = add_targets(lf, cal, hs, lag).rename({C.target(h): _name((lag, lag + h)) for h in hs})
    return lf


def sample_days(df: pl.DataFrame, max_days: int) -> pl.DataFrame:
    """The rows of at most `max_days` days spread evenly over the history, sorted by Date."""
    days = df[C.DATE].unique().sort()
    step = -(-len(days) // max_days)
    return df.filter(pl.col(C.DATE).is_in(days.gather_every(step).implode())).sort(C.DATE)


def daily_rankic(df: pl.DataFrame, users: list[str], windows: list[tuple[int, int]], min_stocks: int) -> pl.DataFrame:
    """Long frame: column, window name, Date, ic (the correlation of the day's ranks over the stocks holding both;
    days with fewer than `min_stocks` such stocks or a constant column left out)."""
    cols = [*users, *(_name(w) for w in windows)]
    ranked = df.with_columns(pl.col(x).fill_nan(None).rank().over(C.DATE) for x in cols)
    aggs = []
    for u in users:
        for w in windows:
            f = _name(w)
            both = pl.col(u).is_not_null() & pl.col(f).is_not_null()
            ic = pl.corr(pl.col(u).filter(both), pl.col(f).filter(both))
            aggs.append(pl.when(both.sum() >= min_stocks).then(ic).alias(f"{u}\t{f}"))
    wide = ranked.group_by(C.DATE).agg(aggs)
    long = wide.unpivot(index=C.DATE, variable_name="pair", value_name="ic")
    return (
        long.filter(pl.col("ic").is_not_null() & pl.col("ic").is_not_nan())
        .with_columns(pl.col("pair").str.split_exact("\t", 1).struct.rename_fields(["column", "window"]).alias("pair"))
        .unnest("pair")
    )


def find_leaks(
    df: pl.DataFrame, users: list[str], windows: list[tuple[int, int]], threshold: float, min_stocks: int
) -> list[Leak]:
    """Per user column, its worst window (the largest share of days above `threshold`), worst first."""
    long = daily_rankic(df, users, windows, min_stocks)
    if long.height == 0:
        return []
    stats = (
        long.group_by("column", "window")
        .agg(
            pl.col("ic").abs().median().alias("median_abs"),
            (pl.col("ic").abs() > threshold).mean().alias("share"),
            pl.len().alias("days"),
        )
        .sort("share", "median_abs", descending=True)
        .unique("column", keep="first", maintain_order=True)
    )
    by_name = {_name(w): w for w in windows}
    return [
        Leak(r["column"], by_name[r["window"]], float(r["median_abs"]), float(r["share"]), int(r["days"]))
        for r in stats.iter_rows(named=True)
    ]


def _window_text(w: tuple[int, int], entry_lag: int) -> str:
    a, b = w
    label = f" = target_{b - a}d" if a == entry_lag else ""
    return f"the forward return from t+{a} to t+{b} sessions{label}"


def check_user_columns(tables: Tables, calendar: TradingCalendar, features_cfg: Any, labels_cfg: Any) -> None:
    """Refuse (DataError) a user column of daily_quotes whose daily RankIC with a forward return is implausibly
    high on most days (`features.user`); nothing to do without user columns or with the user group off."""
    f, lab = plain_config(features_cfg), plain_config(labels_cfg)
    if not bool(f["groups"]["user"]):
        return
    cfg = f["user"]
    dq = tables["daily_quotes"]
    lf, users = base_frame(dq.lazy() if isinstance(dq, pl.DataFrame) else dq)
    users = [u for u in users if u not in set(cfg["allow"])]
    if not users:
        return
    horizons, entry_lag = [int(h) for h in lab["horizons"]], int(lab["entry_lag"])
    windows = forward_windows(horizons, entry_lag)
    frame = with_forward_returns(lf.select(C.CODE, C.DATE, C.CLOSE, *users), calendar, windows).collect()
    frame = sample_days(frame, int(cfg["max_days"]))
    threshold, most = float(cfg["max_abs_rankic"]), float(cfg["max_share_of_days"])
    leaks = find_leaks(frame, users, windows, threshold, int(cfg["min_stocks"]))
    bad = [x for x in leaks if x.share > most]
    for x in leaks:
        log.info(
            "user column %s: median |daily RankIC| %.3f with %s (%d days)",
            x.column,
            x.median_abs,
            _window_text(x.window, entry_lag),
            x.days,
        )
    if bad:
        x = bad[0]
        others = f" (also: {', '.join(b.column for b in bad[1:])})" if len(bad) > 1 else ""
        raise DataError(
            f"daily_quotes column '{x.column}' tracks a future return: median |daily RankIC| {x.median_abs:.2f} with "
            f"{_window_text(x.window, entry_lag)}, above {threshold:g} on {x.share:.0%} of {x.days} days "
            f"(features.user.max_abs_rankic / max_share_of_days){others}. As a feature it would leak the label: "
            f"remove it from the price file and import again, or keep it with features.user.allow=[{x.column}] only "
            "if its values are known at each day's close"
        )
