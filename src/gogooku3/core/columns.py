"""Column and metric names every stage shares: the row keys, labels, predictions, oracle and monitor keys.

The ground floor of the package (imports nothing of it), so a name is spelled once.
"""

from __future__ import annotations

import re

DATE, CODE = "Date", "Code"
KEYS = (DATE, CODE)

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
