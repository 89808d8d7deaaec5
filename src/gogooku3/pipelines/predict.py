"""Next-day inference: ranked scores per stock from a trained run's model bundle.

`gogooku3 predict --run RUN [--date D]` loads RUN/bundle (its feature manifest must match the dataset's, by
fingerprint), builds every stock's window ending at D (default: the dataset's latest date), and writes
``output/predictions/pred_<D>.parquet`` and ``.csv``: Code, CoName (from the raw listed_info when present),
``score_{h}d`` and ``rank_{h}d`` (1 = highest score) per horizon, and ``side`` = long / short / "" by the
portfolio's rule (top/bottom ``portfolio.long_fraction``/``short_fraction`` of ``pred_{predict.horizon}d`` among the
names passing the portfolio's price/liquidity filter; ``filtered`` for names that fail it). The scores are for
positions entered at the close of D + ``labels.entry_lag``.

Beside the scores: ``q{pct}_{h}d`` for each level of ``predict.quantiles`` (the model's quantile heads; they forecast
the training target, the day's rank-gauss or z-scored return (``train.loss.target_transform``), not a return in
yen or percent, so q10 < q50 < q90 orders a stock's outcome within the day's cross-section), and, with
``predict.explain_top`` > 0, ``explain_<D>.parquet`` / ``.csv``: per stock its rank and the top variable-selection
weights of its own window (Code, rank, feature, weight, share = the weight's share of that stock's top list). The
weights are per sample: the TFT selection softmax of that stock and day (an ensemble's mean over members). Both come
from the neural model alone, from the same forward pass as the scores, also when the scores blend it with LightGBM.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import ConfigError, DataError
from gogooku3.core.io import write_csv, write_parquet
from gogooku3.evaluation.backtest.book import side_expr, universe_filter
from gogooku3.evaluation.backtest.config import BacktestConfig
from gogooku3.features.manifest import FeatureManifest
from gogooku3.features.published import pin

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)


def _parse_date(date: str | dt.date | None) -> dt.date | None:
    if date is None or isinstance(date, dt.date):
        return date
    try:
        return dt.date.fromisoformat(str(date))
    except ValueError as e:
        raise ConfigError(f"--date {date!r}: not a YYYY-MM-DD date") from e


def resolve_date(dates: list[dt.date], date: dt.date | None, window: int, source: Any) -> dt.date:
    """The prediction date: `date` (or the latest) if it is a dataset date with `window` sessions up to it."""
    if not dates:
        raise DataError(f"{source}: the dataset has no dates")
    d = dates[-1] if date is None else date
    if d not in set(dates):
        raise DataError(f"{source}: {d} is not a date of the dataset (it covers {dates[0]} .. {dates[-1]})")
    k = dates.index(d)
    if k + 1 < window:
        raise DataError(
            f"{source}: {d} has only {k + 1} session(s) of history; the model needs a {window}-day "
            f"window (first usable date {dates[window - 1] if len(dates) >= window else 'none'})"
        )
    return d


def company_names(raw_dir: str | Path, date: dt.date) -> pl.DataFrame | None:
    """Code, CoName from the newest listed_info snapshot on or before `date` (None when the table is absent)."""
    from gogooku3.sources.schema import scan_table

    lf = scan_table(raw_dir, "listed_info")
    if lf is None or "CoName" not in lf.collect_schema():
        return None
    return (
        lf.select(pl.col(C.DATE).cast(pl.Date), pl.col(C.CODE).cast(pl.String), pl.col("CoName").cast(pl.String))
        .filter(pl.col(C.DATE) <= date)
        .sort(C.DATE)
        .group_by(C.CODE)
        .agg(pl.col("CoName").last())
        .collect()
    )


def rank_table(
    preds: pl.DataFrame, horizons: list[int], horizon: int, c: BacktestConfig, names: pl.DataFrame | None = None
) -> pl.DataFrame:
    """Scores, ranks and the long/short flag for one date's predictions (Date, Code, pred_{h}d, + filter columns)."""
    key = C.pred(horizon)
    if key not in preds.columns:
        raise ConfigError(f"predict.horizon={horizon}: the bundle predicts only {', '.join(f'{h}d' for h in horizons)}")
    ok = universe_filter(preds.columns, c).fill_null(False)
    df = preds.sort(C.DATE, C.CODE).with_columns(_ok=ok)
    sides = (
        df.filter(pl.col("_ok") & pl.col(key).is_not_null())
        .with_columns(_side=side_expr(key, c.long_fraction, c.short_fraction))
        .select(C.CODE, "_side")
    )
    df = df.join(sides, on=C.CODE, how="left").with_columns(
        side=pl.when(~pl.col("_ok"))
        .then(pl.lit("filtered"))
        .when(pl.col("_side") == 1)
        .then(pl.lit("long"))
        .when(pl.col("_side") == -1)
        .then(pl.lit("short"))
        .otherwise(pl.lit(""))
    )
    if names is not None:
        df = df.join(names, on=C.CODE, how="left")
    else:
        df = df.with_columns(CoName=pl.lit(None, dtype=pl.String))
    out = df.select(
        C.DATE,
        C.CODE,
        "CoName",
        *[pl.col(C.pred(h)).cast(pl.Float64).alias(C.score(h)) for h in horizons],
        *[pl.col(C.pred(h)).rank("ordinal", descending=True).cast(pl.UInt32).alias(C.rank(h)) for h in horizons],
        "side",
    )
    return out.sort(C.rank(horizon))


def quantile_columns(
    details: pl.DataFrame, horizons: list[int], levels: list[float], available: list[float]
) -> list[pl.Expr]:
    """q{pct}_{h}d columns for each requested level (each must be one of the model's `available` levels)."""
    from gogooku3.training.inference import quantile_col

    have = {round(float(a), 6) for a in available}
    bad = [lv for lv in levels if round(float(lv), 6) not in have]
    if bad:
        raise ConfigError(
            f"predict.quantiles: {bad} not among the model's quantile levels "
            f"{[float(a) for a in available]} (model.quantiles at training time)"
        )
    return [pl.col(quantile_col(h, lv)).alias(f"q{round(100 * lv):02d}_{h}d") for h in horizons for lv in levels]


def explain_table(details: pl.DataFrame, ranks: pl.DataFrame, features: list[str], top: int) -> pl.DataFrame:
    """Long table Code, rank, feature, weight, share: each stock's `top` largest variable-selection weights."""
    from gogooku3.training.inference import EXPLAIN_COL

    names = pl.DataFrame(
        {"_f": list(range(len(features))), "feature": features}, schema={"_f": pl.Int64, "feature": pl.String}
    )
    long = (
        details.select(C.CODE, pl.col(EXPLAIN_COL).arr.to_list().alias("weight"))
        .explode("weight")
        .with_columns(_f=pl.int_range(pl.len(), dtype=pl.Int64).over(C.CODE))
        .join(names, on="_f", how="left")
        .with_columns(pl.col("weight").rank("ordinal", descending=True).over(C.CODE).alias("_k"))
        .filter(pl.col("_k") <= top)
    )
    long = long.with_columns(share=pl.col("weight") / pl.col("weight").sum().over(C.CODE))
    return (
        long.join(ranks, on=C.CODE, how="left").sort("rank", "_k").select(C.CODE, "rank", "feature", "weight", "share")
    )


def predict(cfg: Settings, run_dir: str | Path, date: str | dt.date | None = None) -> Path:
    """`gogooku3 predict`: write output/predictions/pred_<date>.parquet and .csv; return the parquet path."""
    from gogooku3.predictors.bundle import load_bundle, predict_product

    dataset = pin(cfg.paths.dataset)  # resolved once: every read below is of one version
    if not dataset.exists():
        raise DataError(f"{dataset}: dataset not found; build it with `gogooku3 data build`")
    want = _parse_date(date)
    bundle = load_bundle(run_dir, dataset)  # DataError when the manifest fingerprint differs
    FeatureManifest.for_dataset(dataset).check_frame(pl.scan_parquet(dataset), dataset)
    window = int(bundle.meta["window"])
    dates = (
        pl.scan_parquet(dataset)
        .select(pl.col(C.DATE).cast(pl.Date).unique().sort())
        .collect()
        .get_column(C.DATE)
        .to_list()
    )
    d = resolve_date(dates, want, window, dataset)

    pc = cfg.predict
    horizon = pc.horizon
    c = BacktestConfig.from_any(cfg)
    levels, top = list(pc.quantiles), pc.explain_top
    # the product predictor, the network run once (its quantiles / variable-selection weights from the same pass)
    preds = predict_product(bundle, dataset, [d], quantiles=bool(levels), explain=top > 0)
    details = preds
    if bundle.meta.get("blend"):
        log.info(
            "predict: scores blend the model and LightGBM (weight on the model per horizon: %s)",
            ", ".join(f"{h}d {w:.2f}" for h, w in bundle.meta["blend"]["weights"].items()),
        )
    extra = [
        col for col in (C.CLOSE, C.DOLLAR_VOLUME, C.VOLUME_MA_20) if col in pl.scan_parquet(dataset).collect_schema()
    ]
    if extra:
        cols = (
            pl.scan_parquet(dataset)
            .filter(pl.col(C.DATE).cast(pl.Date) == d)
            .select(pl.col(C.CODE).cast(pl.String), *extra)
            .collect()
        )
        preds = preds.join(cols, on=C.CODE, how="left")
    table = rank_table(preds, bundle.horizons, horizon, c, company_names(cfg.paths.raw_dir, d))
    if levels:
        qcols = quantile_columns(details, bundle.horizons, levels, list(bundle.model.cfg.quantiles))
        table = table.join(details.select(C.CODE, *qcols), on=C.CODE, how="left")
    explain = None
    if top > 0:
        explain = explain_table(
            details, table.select(C.CODE, pl.col(C.rank(horizon)).alias("rank")), bundle.features, top
        )

    out_dir = Path(cfg.paths.output_dir) / pc.output_subdir
    pq, csv = out_dir / f"pred_{d.isoformat()}.parquet", out_dir / f"pred_{d.isoformat()}.csv"
    write_parquet(table, pq)
    write_csv(table, csv)
    if explain is not None:
        epq = out_dir / f"explain_{d.isoformat()}.parquet"
        write_parquet(explain, epq)
        write_csv(explain, epq.with_suffix(".csv"))
        first = explain.filter(pl.col("rank") == 1)
        if first.height:
            log.info(
                "explain -> %s; rank 1 (%s) selects %s",
                epq,
                first[C.CODE][0],
                ", ".join(f"{r['feature']} {r['weight']:.3f}" for r in first.iter_rows(named=True)),
            )
    n_show = pc.log_top
    lag = int(bundle.meta["manifest"]["entry_lag"])  # a fact of the dataset the model was trained on

    def show(t: pl.DataFrame) -> str:
        return ", ".join(
            f"{r[C.CODE]} {r['CoName'] or ''}".strip() + f" ({r[C.score(horizon)]:+.4f})"
            for r in t.iter_rows(named=True)
        )

    log.info(
        "predict %s (%d stocks, %dd horizon, entry at the close %d session(s) later)", d, table.height, horizon, lag
    )
    log.info("top %d: %s", n_show, show(table.head(n_show)))
    log.info("bottom %d: %s", n_show, show(table.tail(n_show).reverse()))
    log.info("long %d / short %d names -> %s", (table["side"] == "long").sum(), (table["side"] == "short").sum(), pq)
    return pq
