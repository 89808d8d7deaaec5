"""Trading days: from an exchange calendar (exchange_calendars) or a raw `trading_calendar` table.

Never weekday arithmetic: every "next trading day" in the project goes through `TradingCalendar`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import polars as pl

from gogooku3.errors import ConfigError, DataError

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
        return cls(pl.Series("Date", sessions, dtype=pl.Date))

    @classmethod
    def from_table(cls, df: pl.DataFrame) -> TradingCalendar:
        """From a raw `trading_calendar` table (Date, HolDiv)."""
        holdiv = df["HolDiv"].cast(pl.Utf8)
        sessions = df.filter(holdiv.is_in(SESSION_HOLDIV))["Date"].unique().sort()
        half = df.filter(holdiv == HALF_DAY_HOLDIV)["Date"].to_list()
        if sessions.len() == 0:
            raise DataError("trading_calendar: no trading sessions (HolDiv 1 or 2)")
        return cls(sessions.alias("Date"), frozenset(half))

    @classmethod
    def from_dates(cls, dates: pl.Series) -> TradingCalendar:
        """From the dates present in a data file (used when no exchange calendar is configured)."""
        return cls(dates.cast(pl.Date).unique().sort().alias("Date"))

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
        return pl.DataFrame({"Date": self.sessions, "HolDiv": pl.Series(
            ["2" if d in self.half_days else "1" for d in self.sessions.to_list()], dtype=pl.Utf8)})

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
    import exchange_calendars as xcals

    try:
        cal = xcals.get_calendar(name)
    except Exception as e:  # InvalidCalendarName and friends
        raise ConfigError(f"unknown exchange calendar '{name}' (e.g. XTKS, XNYS)") from e
    lo = max(dt.date.fromisoformat(start), cal.first_session.date())
    hi = min(dt.date.fromisoformat(end), cal.last_session.date())
    if lo > hi:
        raise ConfigError(
            f"calendar {name} covers {cal.first_session.date()}..{cal.last_session.date()}, "
            f"not {start}..{end}")
    return [ts.date() for ts in cal.sessions_in_range(lo.isoformat(), hi.isoformat())]
