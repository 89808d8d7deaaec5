"""Trading days: from an exchange calendar (exchange_calendars) or a raw `trading_calendar` table.

Never weekday arithmetic: every "next trading day" in the project goes through `TradingCalendar`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError

# J-Quants HolidayDivision: 0 closed, 1 full session, 2 half-day session, 3 closed (holiday trading of derivatives).
SESSION_HOLDIV = ("1", "2")
HALF_DAY_HOLDIV = "2"


@dataclass(frozen=True)
class TradingCalendar:
    """Sorted trading sessions (and half days). Vectorised look-ups via `search_sorted`."""

    sessions: pl.Series  # pl.Date, sorted, unique
    half_days: frozenset[dt.date] = frozenset()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_exchange(cls, name: str, start: dt.date | str, end: dt.date | str) -> TradingCalendar:
        """Sessions of an exchange (XTKS, XNYS, ...) between start and end inclusive."""
        sessions = _exchange_sessions(name, str(start), str(end))
        return cls(pl.Series(C.DATE, sessions, dtype=pl.Date))

    @classmethod
    def from_table(cls, df: pl.DataFrame) -> TradingCalendar:
        """From a raw `trading_calendar` table (Date, HolDiv)."""
        holdiv = df["HolDiv"].cast(pl.Utf8)
        sessions = df.filter(holdiv.is_in(SESSION_HOLDIV))[C.DATE].unique().sort()
        half = df.filter(holdiv == HALF_DAY_HOLDIV)[C.DATE].to_list()
        if sessions.len() == 0:
            raise DataError("trading_calendar: no trading sessions (HolDiv 1 or 2)")
        return cls(sessions.alias(C.DATE), frozenset(half))

    @classmethod
    def from_dates(cls, dates: pl.Series) -> TradingCalendar:
        """From the dates present in a data file (used when no exchange calendar is configured)."""
        return cls(dates.cast(pl.Date).unique().sort().alias(C.DATE))

    # ---- queries --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.sessions.len()

    @property
    def first(self) -> dt.date:
        return self.sessions[0]

    @property
    def last(self) -> dt.date:
        return self.sessions[-1]

    def to_frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                C.DATE: self.sessions,
                "HolDiv": pl.Series(
                    ["2" if d in self.half_days else "1" for d in self.sessions.to_list()], dtype=pl.Utf8
                ),
            }
        )

    def is_session(self, dates: pl.Series) -> pl.Series:
        return dates.cast(pl.Date).is_in(self.sessions.implode())

    def index_of(self, dates: pl.Series) -> np.ndarray:
        """Position of each date among sessions; -1 for non-sessions."""
        dates = dates.cast(pl.Date)
        idx = self.sessions.search_sorted(dates, side="left").to_numpy().astype(np.int64)
        ok = idx < len(self)
        hit = np.zeros(len(dates), dtype=bool)
        s = self.sessions.to_numpy()
        d = dates.to_numpy()
        hit[ok] = s[idx[ok]] == d[ok]
        return np.where(hit, idx, -1)

    def next_on_or_after(self, dates: pl.Series) -> pl.Series:
        """First session >= date (null past the calendar's end)."""
        return self._take(self.sessions.search_sorted(dates.cast(pl.Date), side="left"), dates.name)

    def next_after(self, dates: pl.Series) -> pl.Series:
        """First session > date (null past the calendar's end)."""
        return self._take(self.sessions.search_sorted(dates.cast(pl.Date), side="right"), dates.name)

    def shift(self, dates: pl.Series, n: int) -> pl.Series:
        """The session n trading days after (n<0: before) each session date; null off the calendar."""
        idx = self.index_of(dates)
        target = np.where(idx >= 0, idx + n, -1)
        return self._take(pl.Series(target), dates.name)

    def between(self, start: dt.date, end: dt.date) -> pl.Series:
        s = self.sessions
        return s.filter((s >= start) & (s <= end))

    def _take(self, idx: pl.Series, name: str) -> pl.Series:
        idx_np = idx.to_numpy().astype(np.int64)
        valid = (idx_np >= 0) & (idx_np < len(self))
        out = self.sessions.gather(np.where(valid, idx_np, 0))
        return out.set(pl.Series(~valid), None).alias(name) if (~valid).any() else out.alias(name)


@lru_cache(maxsize=16)
def _exchange_sessions(name: str, start: str, end: str) -> list[dt.date]:
    """Sessions of `name` in [start, end]. The calendar is built for exactly this span (exchange_calendars' default
    window covers only about the last 20 years); a span beyond what the exchange's calendar can evaluate is a
    ConfigError naming its limits."""
    import exchange_calendars as xcals

    if name not in xcals.get_calendar_names(include_aliases=True):
        raise ConfigError(
            f"unknown exchange calendar '{name}' (e.g. XTKS, XNYS; or 'dates' for a file's own "
            f"dates: data.calendar=dates)"
        )
    lo, hi = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if lo > hi:
        raise ConfigError(f"calendar {name}: start {start} is after end {end}")
    # the class's own limits (XTKS: from 1997); not every version of exchange_calendars exposes the factories
    factories = getattr(xcals.calendar_utils.global_calendar_dispatcher, "_calendar_factories", {})
    factory = factories.get(xcals.resolve_alias(name))
    bmin = factory.bound_min() if factory is not None else None
    bmax = factory.bound_max() if factory is not None else None
    for bound, outside, side in (
        (bmin, bmin is not None and lo < bmin.date(), "starts"),
        (bmax, bmax is not None and hi > bmax.date(), "ends"),
    ):
        if outside:
            assert bound is not None  # outside only where the calendar has that bound
            reach = "back to" if side == "starts" else "up to"
            raise ConfigError(
                f"calendar {name} (exchange_calendars) reaches only {reach} {bound.date()}, but the data {side} "
                f"{start if side == 'starts' else end}: set data.calendar=dates to use the file's own dates (or "
                f"features.calendar_exchange for raw tables without a trading_calendar), or drop the rows "
                f"{'before' if side == 'starts' else 'after'} {bound.date()}"
            )
    # a margin of a week on each side: exchange_calendars needs start < end and at least one session between them
    pad_lo, pad_hi = lo - dt.timedelta(days=7), hi + dt.timedelta(days=7)
    if bmin is not None:
        pad_lo = max(pad_lo, bmin.date())
    if bmax is not None:
        pad_hi = min(pad_hi, bmax.date())
    try:
        cal = xcals.get_calendar(name, start=pad_lo.isoformat(), end=pad_hi.isoformat())
    except Exception as e:  # NoSessionsError, bounds
        raise ConfigError(f"calendar {name} has no sessions between {start} and {end} ({type(e).__name__})") from e
    days = [ts.date() for ts in cal.sessions]
    out = [d for d in days if lo <= d <= hi]
    if not out:
        raise ConfigError(f"calendar {name} has no sessions between {start} and {end}")
    return out
