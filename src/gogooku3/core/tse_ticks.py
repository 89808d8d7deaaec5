"""The TSE tick-size table (呼値の単位), shared by the backtest's spread floor and the synthetic market's spreads.

JPX "Tick Size" table for issues other than the narrow-tick ones (tick table 01): a price up to TICK_BOUNDS[i] yen
inclusive trades in TICKS[i] yen; above the last bound, TICKS[-1]. TOPIX 100 constituents (since 2014-01-14) and
TOPIX Mid400 ones (since 2023-06-05), i.e. TOPIX 500, use a 5-10x finer table (0.1 yen up to 1,000 yen, 0.5 up to
3,000, ...); the datasets here do not say which names are in TOPIX 500, so a floor from this table is conservative
(too high) for the ~500 largest names.
"""

from __future__ import annotations

import numpy as np

TICK_BOUNDS = (3_000, 5_000, 30_000, 50_000, 300_000, 500_000, 3_000_000, 5_000_000, 30_000_000, 50_000_000)
TICKS = (1, 5, 10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000)


def tick_size_np(price: np.ndarray) -> np.ndarray:
    """The tick (yen) at each `price` (yen, the day's own share basis)."""
    idx = np.searchsorted(np.asarray(TICK_BOUNDS, dtype=float), np.asarray(price, dtype=float), side="left")
    return np.asarray(TICKS, dtype=float)[idx]
