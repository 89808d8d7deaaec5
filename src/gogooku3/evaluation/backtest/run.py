"""`gogooku3 backtest --predictions PATH`: read and check a predictions file, run the ideal and the realistic
backtest on the dataset's market and write the report JSON and the headline's per-period parquet.
`backtest_frame` does the same for predictions already in memory (`gogooku3 run`: every predictor of a run on the
aligned rows the report scores), each output named by its predictor."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from gogooku3.core import columns as C
from gogooku3.core.io import timestamp, write_json, write_parquet
from gogooku3.evaluation.backtest.config import BacktestConfig
from gogooku3.evaluation.backtest.engine import backtest_both
from gogooku3.evaluation.backtest.market import (
    UNIVERSE_COLUMNS,
    attach_dataset_columns,
    data_source,
    market_for,
)
from gogooku3.evaluation.backtest.predictions import check_input, read_predictions
from gogooku3.features.published import pin

if TYPE_CHECKING:
    import polars as pl

    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)


def run_backtest(cfg: Settings, predictions_path: str | Path) -> dict:
    """`gogooku3 backtest --predictions PATH`: the ideal and the realistic backtest; writes
    output/portfolio/report_<ts>.json (`summary` = the headline one, both under `ideal` / `realistic`) + the
    headline's daily parquet.

    Checks the predictions' (Date, Code) against `paths.dataset` when it exists and takes the filter columns, the
    calendar and the prices from it. Nothing is written unless every check passes.
    """
    path = Path(predictions_path)
    return backtest_frame(cfg, read_predictions(path), str(path))


def output_tag(name: str) -> str:
    """A predictor's name as a file-name part: letters, digits, '-' and '_' only."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "predictor"


def backtest_frame(cfg: Settings, preds: pl.DataFrame, source: str, name: str | None = None) -> dict:
    """`run_backtest` on predictions in memory (`source` says where they came from). With a predictor `name` the
    outputs are report_<name>_<ts>.json / daily_returns_<name>_<ts>.parquet and every log line names it."""
    c = BacktestConfig.from_any(cfg)
    check_input(preds, C.pred(c.horizon), C.target(c.horizon))
    dataset = pin(cfg.paths.dataset)  # resolved once: every read below is of one version
    vol_cols = (c.vol_column,) if c.method == "mean_variance" else ()
    if dataset is not None and dataset.exists():
        preds = attach_dataset_columns(preds, dataset, UNIVERSE_COLUMNS + vol_cols)
    elif dataset is not None:
        log.warning(
            "backtest%s: dataset %s not found; (Date, Code) not checked against it, no prices for names that "
            "stop trading, no realism inputs",
            "" if name is None else f" {name}",
            dataset,
        )
    market = market_for(cfg, preds, dataset, c.vol_column)
    both, headline = backtest_both(preds, c, market, data_source(cfg, dataset))
    res = both[headline]
    ts = timestamp() if name is None else f"{output_tag(name)}_{timestamp()}"
    out_dir = Path(cfg.paths.output_dir) / "portfolio"
    daily_path = out_dir / f"daily_returns_{ts}.parquet"
    report_path = out_dir / f"report_{ts}.json"
    report = {
        "input": source,
        "predictor": name,
        "rows": preds.height,
        "days": preds[C.DATE].n_unique(),
        "dataset": str(dataset) if dataset is not None else None,
        **res.to_dict(),
        "headline": headline,
        "ideal": both["ideal"].summary,
        "realistic": both["realistic"].summary,
        "daily_path": str(daily_path),
        "report_path": str(report_path),
    }
    write_parquet(res.daily, daily_path)
    write_json(report_path, report)
    s = res.summary
    log.info(
        "backtest %sh=%dd (%s): Sharpe %.3f (net, sqrt(%g); ideal %.3f, realistic %.3f), ann return %.2f%%, "
        "max DD %.2f%%, avg turnover %.2f -> %s",
        "" if name is None else f"{name} ",
        c.horizon,
        headline,
        s["sharpe"],
        s["periods_per_year"],
        both["ideal"].summary["sharpe"],
        both["realistic"].summary["sharpe"],
        100 * s["ann_return"],
        100 * s["max_drawdown"],
        s["avg_turnover"],
        report_path,
    )
    return report
