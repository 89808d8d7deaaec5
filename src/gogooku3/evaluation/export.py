"""`gogooku3 export --to alphalens|quantstats --run RUN`: a run's test predictions as the frames those libraries take.

Neither package is needed to export: the frames are written as parquet + CSV under ``RUN/export/``, the run's own
config (``RUN/config.yaml``) with the command line's ``key=value`` overrides on top. Dates are tz-naive timestamps
(pandas reads them as ``datetime64``, the index both libraries need).

- **alphalens** (``alphalens_factor.*``): one row per (date, asset), ``date`` = the *entry session* of the signal
  (``signal_date`` + ``labels.entry_lag`` sessions: the close the book trades at, which is alphalens' convention: the
  factor on ``date`` is known before ``date``'s price), ``factor`` = ``pred_{portfolio.horizon}d``, one forward-return
  column per horizon named as alphalens names periods (``1D``, ``5D``, ...: the dataset's ``target_{h}d``, from that
  entry close) and ``group`` (``report.sector_column``) when the dataset has it. ``alphalens_prices.*`` (date, asset,
  price: the dataset's adjusted price index) when the dataset exists, for
  ``get_clean_factor_and_forward_returns``.
- **quantstats** (``quantstats_returns.*``): one row per session of the headline backtest (`portfolio.realism`),
  ``date`` = the session the return is *realised* on (the close it is marked at: ``signal_date`` + entry_lag + 1
  sessions), ``strategy`` = its net return, ``benchmark`` = the eligible universe's equal-weight book, ``topix``
  (null without the raw table) and ``signal_date``.

The recipe (README, "Export")::

    f = pd.read_parquet("RUN/export/alphalens_factor.parquet").set_index(["date", "asset"])
    px = pd.read_parquet("RUN/export/alphalens_prices.parquet").pivot(index="date", columns="asset", values="price")
    fd = alphalens.utils.get_clean_factor_and_forward_returns(f["factor"], px, groupby=f["group"], periods=(1, 5))
    r = pd.read_parquet("RUN/export/quantstats_returns.parquet").set_index("date")
    quantstats.reports.html(r["strategy"], r["benchmark"], output="qs.html")
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError
from gogooku3.core.io import crash_point, write_csv, write_parquet
from gogooku3.evaluation.results import run_predictions
from gogooku3.features.published import pin

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings
    from gogooku3.evaluation.backtest.market import Market

log = logging.getLogger(__name__)
TARGETS = ("alphalens", "quantstats")
STAMP = pl.Datetime("ns")  # tz-naive: pandas reads datetime64[ns] (a pl.Date column arrives as datetime.date objects)


def run_config(run: Path, cli: Settings, overrides: Sequence[str]) -> Settings:
    """The run's saved config (RUN/config.yaml) with the command line's ``key=value`` overrides on top; the command
    line's config (`cli`) when the run has none or it no longer loads (a warning says why)."""
    import yaml

    from gogooku3.config.compose import default_groups, load_yaml, with_values
    from gogooku3.config.schema import Settings

    p = run / "config.yaml"
    try:
        base = Settings.from_cfg(load_yaml(p))
    except (OSError, ConfigError) as e:
        log.warning("%s not used (%s); using the command line's config", p, str(e).splitlines()[0])
        return cli
    values = {}
    for o in overrides:
        key, sep, text = o.lstrip("+").partition("=")
        if not sep or key in default_groups():
            raise ConfigError(
                f"{o}: on a run's saved config only key=value overrides apply (portfolio.cost_bps=10), not a group"
            )
        values[key] = yaml.safe_load(text)
    if "paths.dataset" not in values and (trained_on := run_dataset(run)) is not None:
        values["paths.dataset"] = str(trained_on)
    return with_values(base, values) if values else base


def run_dataset(run: Path) -> Path | None:
    """The dataset version the run trained on (RUN/dataset.json, written by `train`), when it is still on disk; None
    (the config's `paths.dataset`, i.e. the current build) when the run names none or it has been removed since
    (`paths.keep_datasets`), which is logged."""
    p = run / "dataset.json"
    if not p.is_file():
        return None
    try:
        path = Path(json.loads(p.read_text(encoding="utf-8"))["path"])
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: unreadable; the report reads paths.dataset", p)
        return None
    if not path.exists():
        log.warning(
            "%s: the run's dataset %s is gone (paths.keep_datasets); using paths.dataset, the current build", p, path
        )
        return None
    return path


def shifted(sessions: Sequence[dt.date], dates: pl.Series, k: int) -> pl.Series:
    """Each date's session `k` sessions later on the calendar `sessions` (null past its end or off it)."""
    pos = {d: i for i, d in enumerate(sessions)}
    n = len(sessions)
    out = [sessions[pos[d] + k] if d in pos and pos[d] + k < n else None for d in dates.cast(pl.Date).to_list()]
    return pl.Series(dates.name, out, dtype=pl.Date)


def _calendar(preds: pl.DataFrame, market: Market | None, cfg: Settings) -> tuple[list[dt.date], int]:
    """The sessions and entry lag: the dataset's (its market) or, without it, the predictions' dates and labels'."""
    if market is not None:
        return list(market.sessions), market.entry_lag
    return preds[C.DATE].cast(pl.Date).unique().sort().to_list(), cfg.labels.entry_lag


def _stamped(frame: pl.DataFrame, dates: pl.Series, what: str, level: int = logging.INFO) -> pl.DataFrame:
    """`frame` with date = `dates` as tz-naive timestamps, rows without one (past the calendar) dropped (logged at
    `level`)."""
    out = frame.with_columns(date=dates.cast(STAMP), signal_date=pl.col("signal_date").cast(STAMP))
    out = out.filter(pl.col("date").is_not_null())
    if out.height < frame.height:
        n = frame.height - out.height
        log.log(level, "export: %d %s rows dropped: their session lies beyond the dataset's calendar", n, what)
    return out


def alphalens_frame(
    preds: pl.DataFrame, horizon: int, groups: pl.DataFrame | None = None, calendar: tuple[list[dt.date], int] = ([], 0)
) -> pl.DataFrame:
    """date (entry session), asset, factor, <h>D forward returns (+ group), signal_date: alphalens' layout.
    `calendar`: (sessions, entry lag); empty sessions: the predictions' own dates."""
    hs = C.pred_horizons(preds.columns)
    if horizon not in hs:
        raise ConfigError(f"portfolio.horizon={horizon}: the run predicts {', '.join(f'{h}d' for h in hs)}")
    out = preds.select(
        pl.col(C.DATE).cast(pl.Date).alias("signal_date"),
        pl.col(C.CODE).cast(pl.String).alias("asset"),
        pl.col(C.pred(horizon)).cast(pl.Float64).alias("factor"),
        *[pl.col(C.target(h)).cast(pl.Float64).alias(f"{h}D") for h in hs if C.target(h) in preds.columns],
    )
    if groups is not None:
        g = groups.rename({C.DATE: "signal_date", C.CODE: "asset"})
        out = out.join(g, on=["signal_date", "asset"], how="left").with_columns(pl.col("group").fill_null("unknown"))
    out = out.filter(pl.col("factor").is_not_null() & pl.col("factor").is_not_nan())
    sessions, lag = calendar
    sessions = sessions or out["signal_date"].unique().sort().to_list()
    out = _stamped(out, shifted(sessions, out["signal_date"], lag), "alphalens")
    return out.select("date", *[c for c in out.columns if c != "date"]).sort("date", "asset")


def alphalens_prices(market: Market, factor: pl.DataFrame) -> pl.DataFrame:
    """date, asset, price (the dataset's adjusted price index) from the factor's first date, its assets only."""
    first = factor["date"].min()
    return (
        market.rows.select(
            pl.col(C.DATE).cast(STAMP).alias("date"), pl.col(C.CODE).cast(pl.String).alias("asset"), price="px"
        )
        .filter((pl.col("date") >= first) & pl.col("asset").is_in(factor["asset"].unique().implode()))
        .drop_nulls()
        .sort("date", "asset")
    )


def quantstats_frame(cfg: Settings, preds: pl.DataFrame) -> pl.DataFrame:
    """date (realisation session), strategy (headline backtest, net), benchmark (equal-weight universe), topix (null
    without the table), signal_date."""
    from gogooku3.evaluation.backtest.benchmarks import benchmark_returns, topix_closes
    from gogooku3.evaluation.backtest.config import BacktestConfig
    from gogooku3.evaluation.backtest.engine import backtest_both

    c = BacktestConfig.from_any(cfg)
    preds, market, dataset = _with_market(cfg, preds, c.vol_column)
    both, headline = backtest_both(preds, c, market, _source(cfg, dataset))
    br = benchmark_returns(both[headline], market, topix_closes(cfg.paths.raw_dir))
    sessions, lag = _calendar(preds, market, cfg)
    # the backtest's row t runs from the entry close of t (t + lag) to the next close: realised at t + lag + 1
    out = br.select(
        pl.col(C.DATE).cast(pl.Date).alias("signal_date"),
        "strategy",
        pl.col("equal_weight").alias("benchmark"),
        "topix",
    )
    out = _stamped(out, shifted(sessions, out["signal_date"], lag + 1), "quantstats", logging.WARNING)
    return out.select("date", "strategy", "benchmark", "topix", "signal_date")


def _with_market(cfg: Settings, preds: pl.DataFrame, vol_column: str) -> tuple[pl.DataFrame, Market | None, Path]:
    """The predictions with the dataset's universe columns, the dataset's market (None without it), the dataset."""
    from gogooku3.evaluation.backtest.market import UNIVERSE_COLUMNS, attach_dataset_columns, market_for

    dataset = pin(cfg.paths.dataset)  # resolved once: every read below is of one version
    if dataset.exists():
        preds = attach_dataset_columns(preds, dataset, (*UNIVERSE_COLUMNS, vol_column), check_keys=False)
    return preds, market_for(cfg, preds, dataset, vol_column), dataset


def _source(cfg: Settings, dataset: Path) -> str:
    from gogooku3.evaluation.backtest.market import data_source

    return data_source(cfg, dataset)


def _groups(cfg: Settings, preds: pl.DataFrame, dataset: Path) -> pl.DataFrame | None:
    """signal Date, Code, group (`report.sector_column` of the dataset) of the predictions' rows; None without it."""
    col = cfg.report.sector_column
    if not dataset.exists() or col not in pl.scan_parquet(dataset).collect_schema():
        return None
    keys = preds.select(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String)).unique()
    return (
        pl.scan_parquet(dataset)
        .select(
            pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String), pl.col(col).cast(pl.String).alias("group")
        )
        .join(keys.lazy(), on=[C.DATE, C.CODE], how="semi")
        .collect()
    )


def _alphalens(cfg: Settings, preds: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The factor frame and, with the dataset, its prices."""
    from gogooku3.evaluation.backtest.market import market_for

    dataset = pin(cfg.paths.dataset)
    market = market_for(cfg, preds, dataset, cfg.portfolio.vol_column)
    factor = alphalens_frame(preds, cfg.portfolio.horizon, _groups(cfg, preds, dataset), _calendar(preds, market, cfg))
    frames = {"alphalens_factor": factor}
    if market is not None and market.has("px"):
        frames["alphalens_prices"] = alphalens_prices(market, factor)
    return frames


def export_run(cfg: Settings, run_dir: str | Path, to: str) -> list[Path]:
    """Write RUN/export/alphalens_factor.* (+ alphalens_prices.*) or quantstats_returns.* (parquet + csv); return the
    paths."""
    if to not in TARGETS:
        raise ConfigError(f"--to {to!r}: one of {'|'.join(TARGETS)}")
    run = Path(run_dir)
    name, src = next(iter(run_predictions(run).items()))  # the product predictor's
    log.info("export %s: the product predictor %s (%s)", to, name, src)
    preds = pl.read_parquet(src)
    frames = _alphalens(cfg, preds) if to == "alphalens" else {"quantstats_returns": quantstats_frame(cfg, preds)}
    paths = []
    for name, frame in frames.items():
        out = run / "export" / f"{name}.parquet"
        write_parquet(frame, out)
        write_csv(frame, out.with_suffix(".csv"))
        crash_point(f"export {name}")
        log.info("export %s: %d rows, columns %s -> %s (+ .csv)", to, frame.height, ", ".join(frame.columns), out)
        paths += [out, out.with_suffix(".csv")]
    return paths
