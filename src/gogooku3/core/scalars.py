"""Typed views of polars scalars.

`Series.mean()`, `.min()`, `.item()` and the like are typed by polars as any Python literal (int, float, Decimal,
date, str, ... or None) because the value depends on the column's dtype. Where the dtype is known these say so to
the type checker: `as_float(x)` is exactly `float(x)` at run time (None still raises TypeError) and `as_date(x)`
returns `x` itself.
"""

from __future__ import annotations

import datetime as dt
from typing import SupportsFloat, cast


def as_float(x: object) -> float:
    """`float(x)` of a numeric polars scalar."""
    return float(cast(SupportsFloat, x))


def as_date(x: object) -> dt.date:
    """A polars Date scalar (`Series.min()` / `.max()` / `.item()` of a Date column), typed as the date it is."""
    return cast(dt.date, x)
