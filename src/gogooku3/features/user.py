"""User features: extra numeric `x_*` columns of daily_quotes (from the `files` source) pass through as group `user`."""

from __future__ import annotations

import polars as pl

from gogooku3.features.common import Block, c

PREFIX = "x_"


def user_columns(schema: pl.Schema | dict) -> list[str]:
    return [n for n, dt in schema.items() if n.startswith(PREFIX) and dt.is_numeric()]


def user(cols: list[str]) -> Block:
    b = Block("user")
    for n in cols:
        b.add(n, c(n).cast(pl.Float64))
    return b
