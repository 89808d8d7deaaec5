"""The synthetic TSE market: every raw table of `gogooku3.sources.schema` plus the oracle, in seconds.

`simulate_market(params)` is pure and in memory; `synthesize(cfg)` writes the tables (CLI `gogooku3 data synth`).
Module map: `params` (knobs), `universe` (codes, sectors, segments, events), `market` (returns, volatility,
volume, planted alpha), `statements`, `tables` (quotes, listed_info, topix, calendar), `flows` (weekly
investor types and margin), `oracle` (expected labels).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.calendar import TradingCalendar
from gogooku3.core.errors import ConfigError
from gogooku3.core.scalars import as_float
from gogooku3.sources import schema
from gogooku3.sources.synthetic.flows import investor_types, margin_interest
from gogooku3.sources.synthetic.market import simulate_paths
from gogooku3.sources.synthetic.oracle import oracle_expectations
from gogooku3.sources.synthetic.params import SynthParams
from gogooku3.sources.synthetic.statements import make_statements
from gogooku3.sources.synthetic.tables import (
    daily_quotes,
    listed_info,
    stock_major_index,
    topix,
    trading_calendar,
)
from gogooku3.sources.synthetic.universe import cum_adj_factor, make_universe

__all__ = [
    "ORACLE_FILE",
    "SynthParams",
    "market_sessions",
    "oracle_ic_daily",
    "oracle_rank_ic",
    "realized_labels",
    "simulate_market",
    "synthesize",
]

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)
ORACLE_FILE = "oracle.parquet"


def market_sessions(p: SynthParams) -> pl.Series:
    """The last `n_days` XTKS sessions up to `end_date`."""
    try:
        end = dt.date.fromisoformat(p.end_date)
    except ValueError as e:
        raise ConfigError(f"data.end_date must be an ISO date, got '{p.end_date}'") from e
    start = end - dt.timedelta(days=int(p.n_days * 1.5) + 60)
    sessions = TradingCalendar.from_exchange("XTKS", start, end).sessions
    if len(sessions) < p.n_days:
        raise ConfigError(f"XTKS has only {len(sessions)} sessions up to {end}; data.n_days={p.n_days} is too many")
    return sessions.tail(p.n_days).alias("Date")


def simulate_market(
    params: SynthParams,
    horizons: Sequence[int] = (1, 5, 10, 20),
    entry_lag: int = 1,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, pl.DataFrame]:
    """Simulate the market: {table name: frame} for every raw table, plus "oracle" (Code, Date, oracle_{h}d).

    Deterministic for `params.seed`. `on_step(i)` is called after each simulated session (progress bars).
    """
    p = params
    horizons = tuple(int(h) for h in horizons)
    if not horizons or min(horizons) < 1 or entry_lag < 0:
        raise ConfigError(f"horizons must be >= 1 and entry_lag >= 0, got {horizons}, {entry_lag}")
    if p.momentum_window < entry_lag + max(horizons):
        raise ConfigError("data.momentum_window must cover entry_lag + the longest horizon")
    rng = np.random.default_rng(p.seed)
    sessions = market_sessions(p)
    ses_np = sessions.to_numpy().astype("datetime64[D]")
    u = make_universe(p, rng)
    k = cum_adj_factor(u, p.n_days)
    stm = make_statements(p, u, ses_np, k, rng)
    paths = simulate_paths(p, u, stm.earn_z, rng, on_step)
    quotes, rows, adj = daily_quotes(u, paths, k, sessions, rng)
    caps = u.shares * np.exp(paths.log_price)
    oracle = oracle_expectations(p, paths, caps, u.sector, u.lag_weight, horizons, entry_lag)
    flat = stock_major_index(rows)
    oracle_df = quotes.select("Code", "Date").with_columns(
        pl.Series(C.oracle(h), np.take(oracle[h], flat).astype(np.float64)) for h in horizons
    )
    return {
        "daily_quotes": quotes,
        "listed_info": listed_info(u, sessions),
        "topix": topix(u, rows, adj, sessions),
        "trading_calendar": trading_calendar(sessions),
        "statements": stm.table,
        "investor_types": investor_types(u, quotes, paths.log_price, paths.observed, sessions, rng),
        "margin_interest": margin_interest(u, paths.log_price, paths.observed, k, sessions, rng),
        "oracle": oracle_df,
    }


# ---- realized labels and the oracle RankIC --------------------------------------------------------------------
def realized_labels(
    quotes: pl.DataFrame, horizon: int, entry_lag: int = 1, calendar: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Code, Date, target = AdjC(t+lag+h)/AdjC(t+lag) - 1 on the trading calendar (null when a row is missing)."""
    ses = TradingCalendar.from_table(calendar).sessions if calendar is not None else quotes["Date"].unique().sort()
    idx = pl.DataFrame({"Date": ses, "_i": np.arange(len(ses))})
    px = quotes.select("Code", "Date", "AdjC").join(idx, on="Date")
    at = lambda off, name: px.select("Code", (pl.col("_i") - off).alias("_i"), pl.col("AdjC").alias(name))
    return (
        px.join(at(entry_lag, "_entry"), on=["Code", "_i"], how="left")
        .join(at(entry_lag + horizon, "_exit"), on=["Code", "_i"], how="left")
        .select("Code", "Date", (pl.col("_exit") / pl.col("_entry") - 1.0).alias(C.target(horizon)))
    )


def oracle_ic_daily(tables: dict[str, pl.DataFrame], horizon: int, entry_lag: int = 1) -> pl.DataFrame:
    """Date, n, rank_ic: the daily RankIC (`evaluation.metrics.daily_ic`) of `oracle_{h}d` with the realized
    `target_{h}d`."""
    from gogooku3.evaluation import metrics

    tgt = C.target(horizon)
    labels = realized_labels(tables["daily_quotes"], horizon, entry_lag, tables.get("trading_calendar"))
    df = tables["oracle"].join(labels, on=[C.CODE, C.DATE])
    return metrics.daily_ic(df, C.oracle(horizon), tgt).select(C.DATE, "n", "rank_ic")


def oracle_rank_ic(tables: dict[str, pl.DataFrame], horizon: int = 1, entry_lag: int = 1) -> float:
    """Mean daily RankIC of the oracle with the realized labels: the ceiling any model can reach."""
    daily = oracle_ic_daily(tables, horizon, entry_lag)
    return as_float(daily["rank_ic"].mean()) if daily.height else float("nan")


# ---- writing ------------------------------------------------------------------------------------------------
def synthesize(cfg: Settings) -> dict[str, Path]:
    """Simulate and write every raw table to `cfg.paths.raw_dir` and the oracle to `cfg.paths.oracle_dir`."""
    from gogooku3.core.io import write_parquet
    from gogooku3.core.progress import bar as progress_bar

    p = SynthParams.from_config(cfg)
    # the oracle is written for the labels the dataset will be built with (labels.*: read by the data producers only)
    horizons, entry_lag = tuple(cfg.labels.horizons), cfg.labels.entry_lag
    raw_dir, oracle_dir = Path(cfg.paths.raw_dir), Path(cfg.paths.oracle_dir)
    if raw_dir.resolve() == oracle_dir.resolve():
        raise ConfigError("paths.oracle_dir must differ from paths.raw_dir (no model may see the oracle)")
    with progress_bar() as bar:
        task = bar.add_task("simulating market", total=p.burn_in + p.n_days)
        tables = simulate_market(p, horizons, entry_lag, on_step=lambda i: bar.update(task, completed=i + 1))
        names = [n for n in tables if n != "oracle"]
        wtask = bar.add_task("writing tables", total=len(names) + 1)
        # replaces the raw directory: a previous source's tables that this one does not write are removed
        paths = schema.replace_raw_tables(
            {n: tables[n] for n in names}, raw_dir, "synthetic", on_table=lambda _: bar.advance(wtask)
        )
        paths["oracle"] = write_parquet(tables["oracle"].sort("Code", "Date"), oracle_dir / ORACLE_FILE)
        bar.advance(wtask)
    quotes = tables["daily_quotes"]
    ic = oracle_rank_ic(tables, 1, entry_lag)
    log.info(
        "synthetic market: %d stocks x %d days, %d quote rows, %d statements -> %s (oracle in %s); "
        "oracle RankIC(1d) %.4f at signal_strength %.2f",
        quotes["Code"].n_unique(),
        p.n_days,
        quotes.height,
        tables["statements"].height,
        raw_dir,
        oracle_dir / ORACLE_FILE,
        ic,
        p.signal_strength,
    )
    return paths
