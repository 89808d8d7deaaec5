"""`gogooku3 export --to alphalens|quantstats RUN`: a run's test predictions as the frames those libraries take.

Neither package is needed (nor imported): the frames are written as parquet + CSV under ``RUN/export/``.

- **alphalens** (``alphalens_factor.*``): one row per (date, asset) with ``factor`` = ``pred_{portfolio.horizon}d``,
  one forward-return column per horizon named as alphalens names periods (``1D``, ``5D``, ...; the dataset's
  ``target_{h}d``, entered ``labels.entry_lag`` sessions after the signal) and ``group`` (``report.sector_column`` of
  the dataset) when present. In pandas: ``df = pd.read_parquet(p).set_index(["date", "asset"]);
  factor_data = alphalens.utils.get_clean_factor(df["factor"], df.filter(regex="^\\d+D$"), groupby=df.get("group"))``.
- **quantstats** (``quantstats_returns.*``): one row per rebalance with ``strategy`` = the headline backtest's net
  return (`portfolio.realism`), ``benchmark`` = the eligible universe's equal-weight return and ``topix`` when the raw
  table exists: ``qs.reports.html(df.set_index("date")["strategy"], df.set_index("date")["benchmark"])``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError
from gogooku3.core.io import write_csv, write_parquet
from gogooku3.evaluation.results import run_predictions
from gogooku3.features.published import pin

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)
TARGETS = ("alphalens", "quantstats")


def alphalens_frame(preds: pl.DataFrame, horizon: int, groups: pl.DataFrame | None = None) -> pl.DataFrame:
    """date, asset, factor, <h>D forward returns (+ group): alphalens' factor and forward-returns layout."""
    hs = C.pred_horizons(preds.columns)
    if horizon not in hs:
        raise ConfigError(f"portfolio.horizon={horizon}: the run predicts {', '.join(f'{h}d' for h in hs)}")
    out = preds.select(
        pl.col(C.DATE).cast(pl.Date).alias("date"),
        pl.col(C.CODE).cast(pl.String).alias("asset"),
        pl.col(C.pred(horizon)).cast(pl.Float64).alias("factor"),
        *[pl.col(C.target(h)).cast(pl.Float64).alias(f"{h}D") for h in hs if C.target(h) in preds.columns],
    )
    if groups is not None:
        out = out.join(groups.rename({C.DATE: "date", C.CODE: "asset"}), on=["date", "asset"], how="left")
    return out.filter(pl.col("factor").is_not_null() & pl.col("factor").is_not_nan()).sort("date", "asset")


def quantstats_frame(cfg: Settings, preds: pl.DataFrame) -> pl.DataFrame:
    """date, strategy (headline backtest, net), benchmark (equal-weight universe), topix (null without the table)."""
    from gogooku3.evaluation.backtest.benchmarks import benchmark_returns, topix_closes
    from gogooku3.evaluation.backtest.config import BacktestConfig
    from gogooku3.evaluation.backtest.engine import backtest_both
    from gogooku3.evaluation.backtest.market import UNIVERSE_COLUMNS, attach_dataset_columns, data_source, market_for

    c = BacktestConfig.from_any(cfg)
    dataset = pin(cfg.paths.dataset)  # resolved once: every read below is of one version
    if dataset.exists():
        preds = attach_dataset_columns(preds, dataset, (*UNIVERSE_COLUMNS, c.vol_column), check_keys=False)
    market = market_for(cfg, preds, dataset, c.vol_column)
    both, headline = backtest_both(preds, c, market, data_source(cfg, dataset))
    br = benchmark_returns(both[headline], market, topix_closes(cfg.paths.raw_dir))
    return br.select(pl.col(C.DATE).alias("date"), "strategy", pl.col("equal_weight").alias("benchmark"), "topix")


def export_run(cfg: Settings, run_dir: str | Path, to: str) -> list[Path]:
    """Write RUN/export/alphalens_factor.{parquet,csv} or quantstats_returns.{parquet,csv}; return the paths."""
    if to not in TARGETS:
        raise ConfigError(f"--to {to!r}: one of {'|'.join(TARGETS)}")
    run = Path(run_dir)
    name, src = next(iter(run_predictions(run).items()))  # the product predictor's
    log.info("export %s: the product predictor %s (%s)", to, name, src)
    preds = pl.read_parquet(src)
    if to == "alphalens":
        dataset, col = pin(cfg.paths.dataset), cfg.report.sector_column
        groups = None
        if dataset.exists() and col in pl.scan_parquet(dataset).collect_schema():
            keys = preds.select(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String)).unique()
            groups = (
                pl.scan_parquet(dataset)
                .select(
                    pl.col(C.DATE).cast(pl.Date),
                    pl.col(C.CODE).cast(pl.String),
                    pl.col(col).cast(pl.String).alias("group"),
                )
                .join(keys.lazy(), on=[C.DATE, C.CODE], how="semi")
                .collect()
            )
        frame, name = alphalens_frame(preds, cfg.portfolio.horizon, groups), "alphalens_factor"
    else:
        frame, name = quantstats_frame(cfg, preds), "quantstats_returns"
    out = run / "export" / f"{name}.parquet"
    write_parquet(frame, out)
    write_csv(frame, out.with_suffix(".csv"))
    log.info("export %s: %d rows, columns %s -> %s (+ .csv)", to, frame.height, ", ".join(frame.columns), out)
    return [out, out.with_suffix(".csv")]
