"""Column and metric names every stage shares: the row keys, labels, predictions, oracle and monitor keys.

The ground floor of the package (imports nothing of it), so a name is spelled once.
"""

from __future__ import annotations

import re

DATE, CODE = "Date", "Code"
KEYS = (DATE, CODE)

# Listing meta columns (`features.sector`), carried next to the features.
SECTION = "Section"  # the market segment (from listed_info's market code); keys the investor-flow table
S33 = "S33"  # the 33-industry sector code
S17 = "S17"  # the 17-industry sector code

# The base frame's split-adjusted daily series (`features.plan`, `features.common.BASE_SERIES`).
OPEN, HIGH, LOW, CLOSE = "Open", "High", "Low", "Close"  # adjusted OHLC prices
VOLUME = "Volume"  # adjusted share volume
TURNOVER_VALUE = "TurnoverValue"  # traded value in yen (unadjusted)

# Features that other stages read by name (defined in `features.price` / `features.statements`).
RETURNS_1D = "returns_1d"  # close-to-close 1-day return
VOLUME_MA_20 = "volume_ma_20"  # 20-day mean of `VOLUME`
DOLLAR_VOLUME = "dollar_volume"  # CLOSE x VOLUME
VOLATILITY_20D = "volatility_20d"  # annualised 20-day volatility of daily returns
MARKET_CAP = "market_cap"  # unadjusted close x shares outstanding

PRED_RE = re.compile(r"^pred_(\d+)d$")
TARGET_RE = re.compile(r"^target_(\d+)d$")


def target(h: int) -> str:
    """The label `target_{h}d` (see `features.targets`)."""
    return f"target_{int(h)}d"


def pred(h: int) -> str:
    """A model's (or baseline's) prediction of `target(h)`."""
    return f"pred_{int(h)}d"


def oracle(h: int) -> str:
    """The synthetic market's expected `target(h)` (the ceiling)."""
    return f"oracle_{int(h)}d"


def score(h: int) -> str:
    """`predict`'s output score column."""
    return f"score_{int(h)}d"


def rank(h: int) -> str:
    """`predict`'s output rank column (1 = highest score)."""
    return f"rank_{int(h)}d"


def monitor(h: int) -> str:
    """The validation metric early stopping, checkpoints and pruning watch: the day-mean RankIC of horizon h."""
    return f"val_rank_ic_{int(h)}d"


def pred_horizons(columns) -> list[int]:
    """Horizons h with both `pred(h)` and `target(h)` among `columns`, sorted."""
    have = set(columns)
    return sorted(int(m.group(1)) for c in have if (m := PRED_RE.match(c)) and target(int(m.group(1))) in have)
