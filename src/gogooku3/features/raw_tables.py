"""The raw tables a build reads: each one read and validated against its schema (`read_raw_tables`), the
cross-table checks (`validate_tables`) and their trading calendar (`make_calendar`); `load_tables` does all three."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.calendar import TradingCalendar
from gogooku3.core.errors import DataError, SchemaError, rows_hint
from gogooku3.core.scalars import as_date
from gogooku3.sources.schema import TABLES, conform, scan_table, table_path

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings


def read_raw_tables(raw_dir: str | Path) -> dict[str, pl.DataFrame]:
    """Read and validate every raw table present (projection: the schema's columns, plus x_* of daily_quotes)."""
    out: dict[str, pl.DataFrame] = {}
    for name, spec in TABLES.items():
        lf = scan_table(raw_dir, name)
        if lf is None:
            continue
        path = table_path(raw_dir, name)
        names = lf.collect_schema().names()
        keep = [n for n in names if n in spec.columns or (name == "daily_quotes" and n.startswith("x_"))]
        try:
            df = lf.select(keep).collect()
        except Exception as e:  # corrupt row groups surface only on read
            raise DataError(f"{path}: cannot read parquet ({type(e).__name__}: {str(e).splitlines()[0]})") from e
        out[name] = conform(df, name, path)
    if "daily_quotes" not in out:
        raise DataError(
            f"{table_path(raw_dir, 'daily_quotes')}: file not found (run `gogooku3 data synth|fetch|import`)"
        )
    return out


def make_calendar(tables: dict[str, pl.DataFrame], exchange: str) -> TradingCalendar:
    """The trading calendar: the trading_calendar table where there is one, else the exchange's over the quotes."""
    if "trading_calendar" in tables:
        return TradingCalendar.from_table(tables["trading_calendar"])
    d = tables["daily_quotes"][C.DATE]
    return TradingCalendar.from_exchange(exchange, as_date(d.min()), as_date(d.max()))


def validate_tables(tables: dict[str, pl.DataFrame], cal: TradingCalendar, raw_dir: str | Path) -> None:
    """Cross-table checks beyond the per-table schema: quotes only on sessions, statements only for known codes."""
    dq = tables["daily_quotes"]
    off = ~cal.is_session(dq[C.DATE])
    if off.any():
        ex = dq.filter(off).select(C.CODE, C.DATE).head(3).rows()
        raise DataError(
            f"{table_path(raw_dir, 'daily_quotes')}: {int(off.sum())} row(s) on non-trading days at rows "
            f"{rows_hint(off.arg_true().to_list())}, e.g. {ex}"
        )
    if "statements" in tables:
        st = tables["statements"]
        unknown = ~st[C.CODE].is_in(dq[C.CODE].unique().implode())
        if unknown.any():
            ex = st.filter(unknown)[C.CODE].unique(maintain_order=True).head(3).to_list()
            raise SchemaError(
                f"{table_path(raw_dir, 'statements')}: column 'Code' has codes absent from daily_quotes "
                f"at rows {rows_hint(unknown.arg_true().to_list())}, e.g. {ex}"
            )


def calendar_name(tables: dict, cfg: Settings) -> str:
    """Where the calendar came from, as the manifest records it."""
    return "trading_calendar table" if "trading_calendar" in tables else cfg.features.calendar_exchange


def load_tables(cfg: Settings) -> tuple[Path, dict[str, pl.DataFrame], TradingCalendar]:
    """Read and validate the raw tables of `cfg.paths.raw_dir`; their trading calendar."""
    raw_dir = Path(cfg.paths.raw_dir)
    tables = read_raw_tables(raw_dir)
    cal = make_calendar(tables, cfg.features.calendar_exchange)
    validate_tables(tables, cal, raw_dir)
    return raw_dir, tables, cal
