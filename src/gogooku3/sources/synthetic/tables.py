"""Price tables of the synthetic market: daily_quotes, listed_info, topix, trading_calendar."""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.special import erf

from gogooku3.core.tse_ticks import tick_size_np
from gogooku3.sources.synthetic.market import Paths
from gogooku3.sources.synthetic.universe import SECTORS33, Universe, base_half_spread

TOPIX_BASE = 2200.0
OVERNIGHT_SHARE = 0.3  # share of the day's return realised at the open (gap)


def intraday(paths: Paths, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Adjusted O/H/L/C [n_days, n_stocks] with H >= max(O, C) and L <= min(O, C).

    The high and low are the extremes of a Brownian bridge from the open to the close with the session's variance
    s² = (1 − OVERNIGHT_SHARE)² · σ² (σ: the day's idiosyncratic sd): max = (a + b + √((a − b)² − 2 s² ln U)) / 2 in
    logs (a, b: log open and close; U uniform, the min alike), the range a Brownian path has, which range-based
    estimators (Parkinson volatility, the Corwin-Schultz spread) assume. U = 2Φ(|z|) − 1 of the normal draws z.
    """
    close = np.exp(paths.log_price)
    prev = np.exp(paths.log_price - paths.ret)
    sig = paths.sigma
    normal = lambda: rng.standard_normal(close.shape, dtype=np.float32)
    open_ = prev * np.exp(OVERNIGHT_SHARE * paths.ret + 0.3 * sig * normal())
    a, b = np.log(open_), paths.log_price
    s2 = ((1.0 - OVERNIGHT_SHARE) * sig.astype(np.float64)) ** 2
    uniform = lambda: np.clip(erf(np.abs(normal().astype(np.float64)) / np.sqrt(2.0)), 1e-12, 1.0 - 1e-12)
    reach = lambda: np.sqrt((a - b) ** 2 - 2.0 * s2 * np.log(uniform()))
    high = np.exp((a + b + reach()) / 2.0)
    low = np.exp((a + b - reach()) / 2.0)
    return open_, high, low, close


def stock_major_index(rows: np.ndarray) -> np.ndarray:
    """Flat indices into [n_days, n_stocks] arrays of the True cells, stock-major (= sorted by Code, Date)."""
    d, n = rows.shape
    cells = np.arange(d * n, dtype=np.int64).reshape(d, n).T
    return cells[np.ascontiguousarray(rows.T)]


def _raw(adj: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Raw price on the day's share basis, 0.1-yen grid (monotone, so OHLC ordering survives)."""
    return np.maximum(np.round(adj / k, 1), 0.1)


def daily_quotes(
    u: Universe, paths: Paths, k: np.ndarray, sessions: pl.Series, rng: np.random.Generator
) -> tuple[pl.DataFrame, np.ndarray, dict[str, np.ndarray]]:
    """The daily_quotes table (sorted by Code, Date), the row mask [n_days, n_stocks] it was cut with and the
    adjusted O/H/L/C arrays."""
    o, h, lo, c = intraday(paths, rng)
    # the day's high trades at the ask and its low at the bid (Corwin-Schultz's model): widened by the half-spread
    half = np.maximum(base_half_spread(u)[None, :], tick_size_np(c / k) / (2.0 * (c / k)))
    h, lo = h * (1.0 + half), lo * (1.0 - half)
    raw = {name: _raw(a, k) for name, a in (("O", o), ("H", h), ("L", lo), ("C", c))}
    vo = np.maximum(np.round(np.exp(paths.log_volume) * k / 100.0), 1.0) * 100.0
    factor = np.ones_like(k)
    sp = np.flatnonzero(u.split_day >= 0)
    factor[u.split_day[sp], sp] = u.split_factor[sp]
    rows = paths.observed & ~u.suspended
    flat = stock_major_index(rows)
    take = lambda a: np.take(a, flat)
    n_rows = len(flat)
    date_idx, code_idx = np.divmod(flat, u.n)
    cols: dict[str, pl.Series | np.ndarray] = {
        "Date": sessions.gather(date_idx),
        "Code": pl.Series("Code", u.codes, dtype=pl.Utf8).gather(code_idx),
        **{name: take(a) for name, a in raw.items()},
        "Vo": take(vo),
        "Va": take(raw["C"] * vo),
        "AdjFactor": take(factor),
        **{f"Adj{name}": take(a * k) for name, a in raw.items()},
        "AdjVo": take(vo / k),
    }
    assert all(len(v) == n_rows for v in cols.values())
    return pl.DataFrame(cols), rows, {name: a * k for name, a in raw.items()}


def listed_info(u: Universe, sessions: pl.Series) -> pl.DataFrame:
    """One snapshot per stock dated at its first listed session (as-of joins pick it up from there)."""
    names = {k: v[1] for k, v in SECTORS33.items()}
    cap_rank = np.argsort(np.argsort(-(u.shares * u.price0) * (u.segment == 0)))
    scale = np.select(
        [cap_rank < 30, cap_rank < 100, cap_rank < 500, cap_rank < 1000],
        ["TOPIX Core30", "TOPIX Large70", "TOPIX Mid400", "TOPIX Small 1"],
        "TOPIX Small 2",
    )
    scale = np.where(u.segment == 0, scale, "-")
    return pl.DataFrame(
        {
            "Date": sessions.gather(u.first),
            "Code": u.codes,
            "CoName": [f"{names[s]} Synthetic {c[:4]}" for s, c in zip(u.s33, u.codes, strict=True)],
            "S17": u.s17,
            "S33": u.s33,
            "Mkt": u.mkt,
            "ScaleCat": scale,
        }
    )


def topix(u: Universe, quotes_rows: np.ndarray, adj: dict[str, np.ndarray], sessions: pl.Series) -> pl.DataFrame:
    """Cap-weighted index of the listed stocks from adjusted (split-continuous) prices x current shares.

    A stock enters the day after its listing; a suspended stock carries its last close (ratio 1).
    """
    d = quotes_rows.shape[0]
    close = np.where(quotes_rows, adj["C"], np.nan)
    # forward-fill each stock's last observed close
    idx = np.where(quotes_rows, np.arange(d)[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    last = np.take_along_axis(close, idx, axis=0)
    seen = np.maximum.accumulate(quotes_rows, axis=0)
    last = np.where(seen, last, np.nan)
    level = np.empty(d)
    o = np.empty(d)
    hi = np.empty(d)
    lo = np.empty(d)
    level[0] = o[0] = hi[0] = lo[0] = TOPIX_BASE
    prev_last, cur_last = last[:-1], last[1:]
    live = ~np.isnan(prev_last) & ~np.isnan(cur_last) & (np.arange(1, d)[:, None] <= u.last[None, :])
    w = np.where(live, u.shares * np.nan_to_num(prev_last), 0.0)
    w /= np.maximum(w.sum(axis=1, keepdims=True), 1e-300)
    base = np.where(live, prev_last, 1.0)
    ratio = {}
    for name, fallback in (("O", cur_last), ("H", cur_last), ("L", cur_last), ("C", cur_last)):
        px = np.where(quotes_rows[1:], adj[name][1:], fallback)
        ratio[name] = (w * np.where(live, px / base, 1.0)).sum(axis=1)
    level[1:] = TOPIX_BASE * np.cumprod(ratio["C"])
    o[1:], hi[1:], lo[1:] = (level[:-1] * ratio[nm] for nm in ("O", "H", "L"))
    hi = np.maximum(hi, np.maximum(o, level))
    lo = np.minimum(lo, np.minimum(o, level))
    return pl.DataFrame({"Date": sessions, "O": o, "H": hi, "L": lo, "C": level})


def trading_calendar(sessions: pl.Series) -> pl.DataFrame:
    """Every calendar day from the first to the last session: HolDiv "1" session, "0" closed (XTKS has no
    half days in exchange_calendars)."""
    days = pl.date_range(sessions[0], sessions[-1], "1d", eager=True).alias("Date")
    return pl.DataFrame({"Date": days}).with_columns(
        pl.when(pl.col("Date").is_in(sessions.implode())).then(pl.lit("1")).otherwise(pl.lit("0")).alias("HolDiv")
    )
