"""Run report: every figure of a training run as JSON plus one self-contained HTML tear sheet.

The page (no network, matplotlib PNGs inline) opens with tiles saying what was run (model config, parameters; the
original's targets only for `model=full`), then IC decay over horizons with HAC bands, the monthly RankIC
heatmap, RankIC by sector (`report.sector_column` of the dataset), signal turnover and rank autocorrelation, mean and
cumulative return per prediction quantile, the log-scale equity curve of the ideal and realistic books, the rolling
Sharpe, benchmark-relative figures (TOPIX from the raw `topix` table, and the universe's equal-weight return), the
data summary, feature importance and training curves.

Reads the run directory contract (``metrics.json`` as `results.TrainResult`, ``comparison.json`` as
`compare.Comparison`, ``predictions/<name>/test.parquet`` per predictor, ``logs/metrics.csv``,
``variable_importance.json``, ``config.yaml``, ``bundle/``) and, through the run's own `BaselineRef`, the LightGBM
run it was compared with and the safe report that fitted it. At least one ``predictions/<name>/test.parquet`` is
required; a missing optional input is listed under ``missing`` and its section says so.

The headline is the product predictor (``comparison.json``'s ``product``, `predictors.product` at training time), with
every other predictor beside it. Every score of a predictor (IC, RankIC, t-stats, paired tests) is the stored
comparison's (`evaluation.compare`, computed by `train` on identical (Date, Code) rows); the report adds backtests and
figures drawn from the same aligned rows. Each predictor gets the ideal and the realistic backtest side by side (the
headline one by `portfolio.realism`), with the positions carried through suspensions and delistings and the orders the
realism rules skipped.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import polars as pl

from gogooku3.core import columns as C
from gogooku3.core.errors import DataError
from gogooku3.core.io import peak_rss_mb, read_json, timestamp, to_json, write_text
from gogooku3.evaluation import metrics
from gogooku3.evaluation import report_html as H
from gogooku3.evaluation.backtest.benchmarks import benchmark_returns, relative_figures, topix_closes
from gogooku3.evaluation.backtest.capacity import capacity, capacity_row
from gogooku3.evaluation.backtest.config import BacktestConfig
from gogooku3.evaluation.backtest.engine import backtest_both
from gogooku3.evaluation.backtest.market import (
    UNIVERSE_COLUMNS,
    Market,
    attach_dataset_columns,
    data_source,
    market_for,
)
from gogooku3.evaluation.backtest.summary import (
    BacktestResult,
    monthly_returns,
    rolling_beta,
    rolling_sharpe,
    rolling_vol,
    worst_drawdowns,
)
from gogooku3.evaluation.bench import report_view
from gogooku3.evaluation.compare import Comparison, align, compare
from gogooku3.evaluation.compare import daily as daily_ic
from gogooku3.evaluation.neutral import Exposures, report_tables
from gogooku3.evaluation.results import SafeSummary, TrainResult
from gogooku3.features.manifest import FeatureManifest
from gogooku3.features.published import pin

if TYPE_CHECKING:
    from gogooku3.config.schema import Settings

log = logging.getLogger(__name__)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf -> None, dates -> ISO strings, tuples -> lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    return obj


def _horizons(df: pl.DataFrame) -> list[int]:
    return C.pred_horizons(df.columns)


def _read_parquet(path: Path, required: bool) -> pl.DataFrame | None:
    if not path.exists():
        if required:
            raise DataError(f"{path}: not found (is this a training run directory?)")
        return None
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # broad on purpose: polars raises several types for corrupt files
        raise DataError(f"{path}: cannot read parquet ({type(e).__name__})") from e
    if not _horizons(df) or C.DATE not in df.columns or C.CODE not in df.columns:
        raise DataError(
            f"{path}: needs Date, Code and pred_{{h}}d/target_{{h}}d columns (has {', '.join(df.columns[:10])})"
        )
    return df


def predictions(run: Path, comp: Comparison | None) -> dict[str, pl.DataFrame]:
    """name -> RUN/predictions/<name>/test.parquet: the comparison's predictors (product first), else every folder."""
    folder = run / "predictions"
    names = comp.names if comp is not None else sorted(p.name for p in folder.glob("*") if p.is_dir())
    out = {n: f for n in names if (f := _read_parquet(folder / n / "test.parquet", required=False)) is not None}
    if not out:
        raise DataError(f"{folder}/<predictor>/test.parquet: no predictions in the run; run `gogooku3 train` first")
    return out


def _read_json_opt(path: Path) -> Any:
    return read_json(path) if path.exists() else None


def training_curves(path: Path) -> pl.DataFrame | None:
    """Per epoch: the mean of each logged numeric column of a Lightning CSVLogger metrics.csv."""
    if not path.exists():
        return None
    try:
        df = pl.read_csv(path, infer_schema_length=None, null_values=["", "nan", "NaN"])
    except Exception as e:  # broad on purpose: polars raises several types for a malformed CSV
        raise DataError(f"{path}: cannot read training log ({type(e).__name__})") from e
    if "epoch" not in df.columns or df.height == 0:
        return None
    num = [c for c, t in df.schema.items() if t.is_numeric() and c not in ("epoch", "step")]
    return (
        df.filter(pl.col("epoch").is_not_null())
        .group_by("epoch")
        .agg(pl.col(num).cast(pl.Float64).mean())
        .sort("epoch")
    )


def run_curves(run: Path) -> pl.DataFrame | None:
    """The run's training curves; for a seed ensemble (logs/member*/), each epoch's mean over the members."""
    single = run / "logs" / "metrics.csv"
    if single.exists():
        return training_curves(single)
    parts = [c for p in sorted((run / "logs").glob("member*/metrics.csv")) if (c := training_curves(p)) is not None]
    if not parts:
        return None
    return pl.concat(parts, how="diagonal_relaxed").group_by("epoch").agg(pl.all().mean()).sort("epoch")


def param_count(run_dir: Path, result: TrainResult | None) -> tuple[int | None, str | None]:
    """Parameter count of one model (an ensemble's member): the run's `TrainResult.model`, else the tensor sizes
    in bundle/model.safetensors divided by bundle.json's member count."""
    if result is not None and result.model is not None:
        return result.model.n_params_per_member, "metrics.json:model.n_params_per_member"
    st = run_dir / "bundle" / "model.safetensors"
    if st.exists():
        from safetensors import safe_open

        total = 0
        with safe_open(str(st), framework="numpy") as f:
            for key in f.keys():  # noqa: SIM118 - safetensors' safe_open is not iterable, only .keys() lists
                total += math.prod(f.get_slice(key).get_shape())
        meta = _read_json_opt(run_dir / "bundle" / "bundle.json") or {}
        return total // int(meta.get("members", 1)), "bundle/model.safetensors"
    return None, None


def baseline_inputs(result: TrainResult | None) -> tuple[dict[str, float] | None, SafeSummary | None]:
    """LightGBM gain importance and the safe report's data summary of the baseline run this training run used."""
    ref = result.baseline if result is not None else None
    if ref is None or ref.directory is None or not Path(ref.directory, "run.json").exists():
        return None, None
    from gogooku3.predictors.lightgbm import BaselineRun

    run = BaselineRun.load(ref.directory)
    safe = SafeSummary.from_report(run.safe_report) if run.safe_report and Path(run.safe_report).exists() else None
    return dict(run.feature_importance), safe


def _backtests(
    df: pl.DataFrame | None, cfg: Settings, c: BacktestConfig, market: Market | None, source: str, dataset: Path
) -> tuple[dict[str, BacktestResult], str] | None:
    """The ideal and the realistic backtest of one predictor (None without its horizon's predictions)."""
    if df is None or C.pred(c.horizon) not in df.columns:
        return None
    if dataset.exists():
        df = attach_dataset_columns(df, dataset, (*UNIVERSE_COLUMNS, c.vol_column), check_keys=False)
    return backtest_both(df, c, market, source)


BY_HORIZON = ("sharpe", "sharpe_tstat", "ann_return", "max_drawdown", "avg_turnover", "total_cost")


def _by_horizon(
    frames: dict[str, pl.DataFrame],
    bc: BacktestConfig,
    market: Market | None,
    source: str,
    dataset: Path,
    horizons: list[int],
    done: dict[str, dict[str, BacktestResult]],
    books: dict[tuple[str, int], dict[str, BacktestResult]],
) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """{predictor: {h: {mode: figures}}}: the realistic and the ideal overlapping-cohort book at every horizon (h
    cohorts, each held h sessions), on each predictor's aligned rows: one Sharpe per horizon, no start day.

    `done`: the books already run at `bc.horizon` (reused, not run again); `books` gets every book by (predictor, h)."""
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for k, df in frames.items():
        if dataset.exists():
            df = attach_dataset_columns(df, dataset, (*UNIVERSE_COLUMNS, bc.vol_column), check_keys=False)
        for h in horizons:
            if C.pred(h) not in df.columns:
                continue
            if h == bc.horizon and k in done:
                res = done[k]
            else:
                try:
                    res, _ = backtest_both(df, bc, market, source, horizon=h)
                except DataError as e:
                    log.warning("report: %s backtest at %dd skipped: %s", k, h, e)
                    continue
            books[k, h] = res
            out.setdefault(k, {})[str(h)] = {
                mode: {f: r.summary[f] for f in BY_HORIZON if f in r.summary} for mode, r in res.items()
            }
    return out


def _capacity(
    preds: pl.DataFrame, bc: BacktestConfig, market: Market | None, run: dict[str, BacktestResult]
) -> list[dict]:
    """`capacity` at each of `bc.capacity_capitals`; at `bc.capital` the realistic book already run (`run`)."""
    return [
        capacity_row(float(k), run["realistic"].summary)
        if float(k) == bc.capital
        else capacity(preds, bc, market, [float(k)])[0]
        for k in bc.capacity_capitals
    ]


def _by_horizon_rows(by_h: dict) -> list[tuple]:
    return [
        (
            f"{k} {h}d",
            m["realistic"]["sharpe"],
            m["realistic"]["ann_return"],
            m["realistic"]["max_drawdown"],
            m["realistic"]["avg_turnover"],
            m["realistic"]["total_cost"],
            m["ideal"]["sharpe"],
            m["ideal"]["ann_return"],
        )
        for k, hs in by_h.items()
        for h, m in hs.items()
    ]


def build_report(cfg: Settings, run_dir: str | Path) -> dict[str, Path]:
    """`gogooku3 report --run RUN`: write RUN/report.json and RUN/report.html; return their paths."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run directory not found")
    run = run_dir.resolve()
    rc = cfg.report
    window, top, dpi = rc.rolling_window, rc.top_features, rc.dpi
    target_sharpe, target_params, tol = rc.target_sharpe, rc.target_params, rc.param_tolerance

    result = TrainResult.load(run / "metrics.json") if (run / "metrics.json").exists() else None
    comp = Comparison.load(run / "comparison.json") if (run / "comparison.json").exists() else None
    raw = predictions(run, comp)
    var_imp = _read_json_opt(run / "variable_importance.json")
    curves = run_curves(run)
    run_cfg_text = (run / "config.yaml").read_text(encoding="utf-8") if (run / "config.yaml").exists() else None
    lgb_importance, safe = baseline_inputs(result)
    missing = [
        n
        for n, v in (
            ("comparison.json", comp),
            ("metrics.json", result),
            ("variable_importance.json", var_imp),
            ("logs/metrics.csv", curves),
            ("config.yaml", run_cfg_text),
            ("safe report of the baseline run", safe),
        )
        if v is None
    ]

    # ---- the stored comparison (the one scorer's), and the aligned rows it scored ------------------------------
    lead = comp.product if comp is not None and comp.product in raw else next(iter(raw))
    ref = comp.reference if comp is not None and comp.reference in raw else None
    horizons = comp.horizons if comp is not None else _horizons(raw[lead])
    if comp is None:  # a run without comparison.json: scored here, by the same scorer
        comp, frames = compare(raw, horizons, product=lead, reference=ref)
    else:
        frames, _ = align(raw, horizons)
    frames = {n: frames[n] for n in [lead, *([ref] if ref else []), *frames] if n in frames}  # headline first
    model = frames[lead]
    rows = comp.rows
    evals = {n: comp.pooled[n] for n in frames if n in comp.pooled}
    daily = daily_ic(frames, horizons)
    paired = comp.pair(lead, ref) if ref else {}
    h0 = horizons[0]
    per_year = {k: metrics.per_period(d[h0], "year", h0) for k, d in daily.items() if h0 in d}
    q = cfg.portfolio.quantiles
    quants = {k: metrics.quantile_returns(v, C.pred(h0), C.target(h0), q) for k, v in frames.items()}

    # ---- backtests: ideal and realistic, the headline one per `portfolio.realism` ---------------------
    bc = BacktestConfig.from_any(cfg)
    dataset = pin(cfg.paths.dataset)  # resolved once: every read of the report is of one version
    source = data_source(cfg, dataset)
    market = market_for(cfg, model, dataset, bc.vol_column)
    if market is None:
        log.warning("report: dataset %s not found: backtests without its calendar, prices and realism inputs", dataset)
    bts: dict[str, BacktestResult] = {}
    both: dict[str, dict[str, BacktestResult]] = {}
    headline = bc.headline(source)
    for k, v in frames.items():
        try:
            if (res := _backtests(v, cfg, bc, market, source, dataset)) is not None:
                both[k], headline = res
                bts[k] = both[k][headline]
        except DataError as e:  # e.g. too few names per day: report the rest and say why
            log.warning("report: %s backtest skipped: %s", k, e)
            missing.append(f"{k} backtest ({e})")
    books = {k: frames[k] for k in dict.fromkeys([lead, ref]) if k in frames}  # the product and its reference
    run_books: dict[tuple[str, int], dict[str, BacktestResult]] = {}
    by_horizon = _by_horizon(books, bc, market, source, dataset, horizons, both, run_books)
    cap = None  # capacity: the product's realistic book at each of portfolio.capacity_capitals, at every horizon
    if lead in both:
        cap_in = frames[lead]
        if dataset.exists():
            cap_in = attach_dataset_columns(cap_in, dataset, (*UNIVERSE_COLUMNS, bc.vol_column), check_keys=False)
        cap = {
            "predictor": lead,
            "horizons": {
                h: {
                    "rows": _capacity(cap_in, replace(bc, horizon=int(h)), market, run_books[lead, int(h)]),
                    "ideal_sharpe": m["ideal"]["sharpe"],
                }
                for h, m in by_horizon.get(lead, {}).items()
            },
        }
    bt_year = {
        k: (
            v.daily.group_by(year=pl.col(C.DATE).dt.year())
            .agg(
                net=(1 + pl.col("net")).product() - 1,
                sharpe=pl.col("net").mean() / pl.col("net").std() * math.sqrt(v.summary["periods_per_year"]),
                periods=pl.len(),
            )
            .sort("year")
        )
        for k, v in bts.items()
    }

    # ---- risk-neutral view: raw and neutral IC, the books' factor exposures (evaluation.neutral) -------------
    neutral = None
    if dataset.exists():
        try:
            books_pos = {k: v.positions for k, v in bts.items()}
            neutral = report_tables(frames, horizons, books_pos, dataset, Exposures.from_settings(cfg.neutral))
        except DataError as e:  # e.g. a dataset without the exposure columns: report the rest and say why
            log.warning("report: neutral view skipped: %s", e)
            missing.append(f"neutral view ({e})")

    # ---- tear sheet: decay, months, sectors, signal, quantiles, rolling Sharpe, benchmarks ----------------
    tear, tear_frames = _tear_sheet(cfg, frames, daily, evals, horizons, both, headline, market, dataset, bc, q, lead)
    missing += tear.pop("missing")

    # ---- the model-zoo bench of this run's dataset (`gogooku3 bench`), when there is one -----------------------
    bench = None if result is None else report_view(cfg.paths.bench_dir, result.dataset.fingerprint)

    # ---- importance, size, resources -----------------------------------------------------------------
    importances = {
        "LightGBM gain": lgb_importance,
        "model variable selection": {str(k): float(v) for k, v in var_imp.items()} if var_imp else None,
    }
    n_params, n_params_src = param_count(run, result)
    durations = (
        {}
        if result is None
        else {
            **{f"{k}_seconds": v for k, v in result.durations_s.items()},
            **{
                f"fold{f.fold['index']}_{name}_train_seconds": facts["train_seconds"]
                for f in result.folds
                for name, facts in f.predictors.items()
                if "train_seconds" in facts
            },
        }
    )
    memory = (
        {}
        if result is None
        else {
            k: v for k, v in (("peak_rss_mb", result.peak_rss_mb), ("peak_gpu_mb", result.peak_gpu_mb)) if v is not None
        }
    )
    data_stats = {} if safe is None else safe.rows()
    model_sharpe = bts[lead].summary["sharpe"] if lead in bts else None
    run_model = _run_model(result, run_cfg_text, n_params)
    targets_apply = run_model["name"] == "full"

    report: dict[str, Any] = {
        "run_dir": str(run),
        "created": timestamp(),
        "horizons": horizons,
        "missing": missing,
        "config": {"run": run_cfg_text, "portfolio": asdict(bc), "report": asdict(rc)},
        "product": lead,
        "reference": ref,
        "data": {
            "predictions": {
                "predictor": lead,
                "rows": model.height,
                "days": model[C.DATE].n_unique(),
                "stocks": model[C.CODE].n_unique(),
                "start": model[C.DATE].min(),
                "end": model[C.DATE].max(),
            },
            "dataset": None if result is None else asdict(result.dataset),
            "safe_report": None if safe is None else safe.path,
            "safe_stats": data_stats,
            "dropped_features": None if safe is None else safe.dropped_features,
            "features_used": _features_used(result, safe, dataset),
        },
        "run_model": run_model,
        "tear_sheet": tear,
        "rows": rows,
        "backtest_market": None if market is None else {"sessions": len(market.sessions), **market.sources},
        "evaluation": evals,
        "paired": comp.paired,
        "paired_per_fold": comp.paired_per_fold,
        "evaluation_per_fold": comp.per_fold,
        "per_year": {k: v.to_dicts() for k, v in per_year.items()},
        "quantile_returns": {k: v.to_dicts() for k, v in quants.items()},
        "backtest_by_horizon": by_horizon,
        "neutral": neutral,
        "backtest_capacity": cap,
        "bench": bench,
        "backtest": {
            k: {
                "summary": v.summary,
                "per_year": bt_year[k].to_dicts(),
                "headline": headline,
                **{mode: both[k][mode].summary for mode in ("ideal", "realistic")},
            }
            for k, v in bts.items()
        },
        "checks": {
            "param_count": n_params,
            "param_count_source": n_params_src,
            "param_target": target_params,
            "param_ratio": n_params / target_params if n_params else None,
            "param_within_tolerance": abs(n_params / target_params - 1) <= tol if n_params else None,
            "sharpe": model_sharpe,
            "sharpe_target": target_sharpe,
            "sharpe_tstat": bts[lead].summary["sharpe_tstat"] if lead in bts else None,
            "sharpe_tstat_method": bts[lead].summary["tstat_method"] if lead in bts else None,
            "sharpe_hac_lag": bts[lead].summary["hac_lag"] if lead in bts else None,
            "sharpe_mode": headline,
            "sharpe_periods": bts[lead].summary["n_periods"] if lead in bts else None,
            "sharpe_meets_target": (model_sharpe >= target_sharpe)
            if model_sharpe is not None and math.isfinite(model_sharpe)
            else None,
            "targets_apply": targets_apply,
            "sharpe_definition": "mean(net)/std(net)*sqrt(sessions a year: "
            f"{bts[lead].summary['periods_per_year'] if lead in bts else bc.periods_per_year}) of the daily net "
            f"returns of the book of overlapping {bc.horizon}-session cohorts, {headline} backtest, cost model "
            f"{bc.cost_model} ({bc.cost_bps:g} bps per unit turnover when "
            "flat); the original's 0.849 has no known definition",
        },
        "feature_importance": {k: v for k, v in importances.items() if v},
        "training": {
            "run_metrics": None if result is None else result.to_dict(),
            "curves": curves.to_dicts() if curves is not None else None,
        },
        "durations": durations,
        "peak_memory": memory,
        "report_seconds": None,
        "report_peak_rss_mb": None,
    }

    # sector names, feature names and predictor names are data: a '$' in one must print, not start TeX math
    with matplotlib.rc_context({"text.parse_math": False}):
        html = _html(
            report,
            daily,
            h0,
            bts,
            evals,
            quants,
            per_year,
            bt_year,
            importances,
            curves,
            paired,
            window,
            top,
            dpi,
            both,
            tear_frames,
        )
    report["report_seconds"] = time.perf_counter() - t0
    report["report_peak_rss_mb"] = peak_rss_mb()
    json_path, html_path = run / "report.json", run / "report.html"
    write_text(json_path, to_json(_clean(report)) + "\n")
    write_text(html_path, html)
    from gogooku3.evaluation.tracking import log_report

    log_report(cfg, run, _clean(report), html_path)
    log.info(
        "report: %s RankIC@%dd %.4f, Sharpe %s -> %s",
        lead,
        h0,
        evals[lead][str(h0)]["rank_ic_mean"],
        H.fmt(model_sharpe, 3),
        html_path,
    )
    return {"json": json_path, "html": html_path}


def _features_used(result: TrainResult | None, safe: SafeSummary | None, dataset: Path) -> dict[str, dict]:
    """Per predictor, the features it actually receives: the deep model all of the panel's (the manifest's), of which
    `entirely_empty` have no value (on the safe report's training days, else in the whole dataset); LightGBM those
    left after the safe report's screening."""
    out: dict[str, dict] = {}
    if result is not None and "atft" in result.predictors:
        shape = (result.panel or {}).get("shape") or []
        path = next((p for p in (Path(result.dataset.path or ""), dataset) if p.name and p.exists()), None)
        empty: list[str] | None = None
        if safe is not None:  # the safe report measured every feature on the training days
            empty = sorted(k for k, v in safe.dropped_features.items() if isinstance(v, (int, float)) and v >= 1.0)
        elif path is not None:
            try:
                empty = metrics.empty_columns(pl.scan_parquet(path), FeatureManifest.for_dataset(path).names)
            except (DataError, OSError) as e:
                log.warning("report: empty features of %s not counted: %s", path, e)
        out["atft"] = {
            "features": int(shape[2]) if len(shape) == 3 else result.dataset.n_features,
            "entirely_empty": None if empty is None else len(empty),
            "empty": empty,
            "source": "the panel (every manifest feature)",
        }
    if safe is not None:
        out["lightgbm"] = {
            "features": safe.features,
            "dropped": len(safe.dropped_features),
            "source": "after the safe report's screening",
        }
    return out


def _run_model(result: TrainResult | None, run_cfg_text: str | None, n_params: int | None) -> dict[str, Any]:
    """What was run: model name and sizes (the run's metrics.json and config.yaml), parameters, ensemble members."""
    import yaml

    cfg: dict[str, Any] = {}
    if run_cfg_text:
        try:
            cfg = yaml.safe_load(run_cfg_text) or {}
        except yaml.YAMLError:
            cfg = {}
    m, t = cfg.get("model") or {}, cfg.get("train") or {}
    deep = None if result is None else result.model
    name = deep.name if deep is not None else m.get("name")
    members = deep.members if deep is not None else t.get("ensemble")
    return {
        "name": name or "unknown",
        "params_per_member": n_params,
        "members": members,
        **{k: m.get(k) for k in ("hidden", "window", "n_heads", "gat", "norm", "lstm_layers", "dropout")},
        "lr": t.get("lr"),
        "max_epochs": t.get("max_epochs"),
        "epochs": None if result is None else result.epochs,
    }


def _tear_sheet(
    cfg: Settings,
    frames: dict[str, pl.DataFrame],
    daily: dict,
    evals: dict,
    horizons: list[int],
    both: dict[str, dict[str, BacktestResult]],
    headline: str,
    market: Market | None,
    dataset: Path,
    bc: BacktestConfig,
    q: int,
    lead: str,
) -> tuple[dict, dict]:
    """The tear sheet's figures (of the headline predictor `lead` where one predictor is drawn): a JSON-ready summary
    and the frames the charts draw."""
    rc, h0, model = cfg.report, horizons[0], frames[lead]
    missing: list[str] = []
    decay = {f"{k}": metrics.ic_decay(v) for k, v in evals.items()}
    if len(horizons) > 1:  # one signal against ever longer targets: how fast its information decays
        decay[f"{lead} signal {C.pred(h0)}"] = metrics.ic_decay(metrics.evaluate(model, horizons, pred_fmt=C.pred(h0)))
    monthly = {k: metrics.per_period(d[h0], "month", h0) for k, d in daily.items() if h0 in d}
    sector_col = rc.sector_column
    sectors = None
    if dataset.exists() and sector_col in pl.scan_parquet(dataset).collect_schema():
        with_sector = attach_dataset_columns(model, dataset, (sector_col,), check_keys=False)
        sectors = metrics.ic_by_group(with_sector, C.pred(h0), C.target(h0), sector_col, h0)
    else:
        missing.append(f"sector column {sector_col} (dataset {dataset})")
    autocorr = metrics.rank_autocorrelation(model, C.pred(h0))
    turnover = metrics.quantile_turnover(model, C.pred(h0), q)
    cumq = metrics.cumulative_quantile_returns(model, C.pred(h0), C.target(h0), q)
    lead_ic = daily[lead][h0]["rank_ic"] if h0 in daily.get(lead, {}) else None
    qq = metrics.normal_qq(lead_ic) if lead_ic is not None else None
    dq = metrics.daily_quantile_returns(model, C.pred(h0), C.target(h0), q)
    book = both[lead][headline].daily if lead in both else None
    months = monthly_returns(book) if book is not None else None
    worst = worst_drawdowns(book) if book is not None else None

    window = rc.rolling_sharpe_days
    roll = {
        k: rolling_sharpe(v[headline].daily, window, v[headline].summary["periods_per_year"]) for k, v in both.items()
    }
    vol = {k: rolling_vol(v[headline].daily, window, v[headline].summary["periods_per_year"]) for k, v in both.items()}
    beta: dict[str, pl.DataFrame] = {}
    topix = topix_closes(cfg.paths.raw_dir)
    have_topix = topix is not None and market is not None
    bench = rc.benchmark
    if bench == "auto":
        bench = "topix" if have_topix else "equal_weight"
    elif bench == "topix" and not have_topix:
        missing.append("TOPIX (no raw topix table or no dataset calendar): benchmark is the equal-weight universe")
        bench = "equal_weight"
    relative: dict[str, dict] = {}
    bench_curve = None
    for k, modes in both.items():
        for mode, res in modes.items():
            br = benchmark_returns(res, market, topix)
            relative[f"{k} {mode}"] = {
                b: relative_figures(br["strategy"], br[b], res.summary["periods_per_year"])
                for b in ("topix", "equal_weight")
                if br[b].drop_nulls().len()
            }
            if mode == headline:
                beta[k] = rolling_beta(br["strategy"], br[bench], br[C.DATE], window)
            if k == lead and mode == headline:
                bench_curve = br.select(C.DATE, equity=(1.0 + pl.col(bench).fill_null(0.0)).cum_prod())
    summary = {
        "ic_decay": {k: v.to_dicts() for k, v in decay.items()},
        "monthly_rank_ic": {
            k: v.select("period", "rank_ic_mean", "rank_ic_tstat", "n_days").to_dicts() for k, v in monthly.items()
        },
        "sector_column": sector_col,
        "by_sector": None if sectors is None else sectors.to_dicts(),
        "signal": {
            "rank_autocorr_mean": autocorr["autocorr"].mean() if autocorr.height else None,
            "top_turnover_mean": turnover["top"].mean() if turnover.height else None,
            "bottom_turnover_mean": turnover["bottom"].mean() if turnover.height else None,
            "lag_days": 1,
            "quantiles": q,
        },
        "cumulative_quantile_return": {
            int(r["quantile"]): r["cum_return"]
            for r in cumq.group_by("quantile").agg(pl.col("cum_return").last()).to_dicts()
        },
        "rolling_sharpe": {
            k: {
                "window": window,
                "last": v["sharpe"].drop_nulls().tail(1).to_list()[0] if v["sharpe"].drop_nulls().len() else None,
                "min": v["sharpe"].min(),
                "max": v["sharpe"].max(),
            }
            for k, v in roll.items()
        },
        "ic_distribution": {lead: None if lead_ic is None else metrics.distribution(lead_ic)},
        "monthly_returns": {lead: None if months is None else months.to_dicts()},
        "worst_drawdowns": {lead: None if worst is None else worst.to_dicts()},
        "rolling_vol": {k: _roll_stats(v, "vol", window) for k, v in vol.items()},
        "rolling_beta": {k: {**_roll_stats(v, "beta", window), "benchmark": bench} for k, v in beta.items()},
        "benchmark": bench,
        "topix_available": have_topix,
        "relative": relative,
        "missing": missing,
    }
    frames_ = {
        "decay": decay,
        "monthly": monthly,
        "sectors": sectors,
        "autocorr": autocorr,
        "turnover": turnover,
        "cumq": cumq,
        "rolling": roll,
        "window": window,
        "ic": lead_ic,
        "qq": qq,
        "daily_quantiles": dq,
        "monthly_returns": months,
        "worst_drawdowns": worst,
        "vol": vol,
        "beta": beta,
        "bench_curve": None
        if bench_curve is None
        else ("TOPIX" if bench == "topix" else "equal-weight universe", bench_curve),
    }
    return summary, frames_


def _roll_stats(d: pl.DataFrame, col: str, window: int) -> dict[str, Any]:
    """window, last, min, max of a rolling series' column."""
    v = d[col].drop_nulls()
    return {"window": window, "last": v[-1] if v.len() else None, "min": v.min(), "max": v.max()}


def _tlabel(d: dict | None) -> str:
    """'Newey–West, lag L' or 'EWC, t(B)' of a dict with a t-stat (`metrics.mean_tstat`)."""
    if not d:
        return ""
    if d.get("tstat_method") == metrics.TSTAT_METHOD_OVERLAP:
        return f"EWC, t({d.get('tstat_dof')})"
    return f"{d.get('tstat_method', '?').replace('newey_west', 'Newey–West')}, lag {d.get('hac_lag')}"


def _tshort(d: dict) -> str:
    """The t-stat column's method cell: 'NW 4' (Newey–West lag) or 'EWC t(3)'."""
    return _tlabel(d).replace("Newey–West, lag ", "NW ").replace("EWC, ", "EWC ")


def _tname(h: int) -> str:
    """'NW' or 'EWC': the t-stat of `h`-day labels."""
    return "EWC" if metrics.tstat_method(h) == metrics.TSTAT_METHOD_OVERLAP else "NW"


def _rows_table(rows: dict | None) -> str:
    if not rows or not rows.get("frames"):
        return ""
    body = [
        (
            name,
            r["rows"],
            r["kept"],
            r["excluded_null_prediction"],
            ", ".join(f"{k}: {v}" for k, v in r["excluded_absent_in"].items()) or "–",
        )
        for name, r in rows["frames"].items()
    ]
    return H.table(["predictor", "rows", "compared", "no prediction", "absent in (other predictor: rows)"], body)


def _bt_rows(both: dict, headline: str) -> list[tuple]:
    out = []
    for name, modes in both.items():
        for mode in ("realistic", "ideal"):  # the realistic book first, the idealised one beside it
            s = modes[mode].summary
            pos, re_ = s["positions"], s["realism"]
            bc = s["by_cost_model"]
            skipped = (
                (
                    f"borrow {re_['borrow']['short_names_passed_over']}, limits "
                    f"{re_['price_limits']['skipped_long']}/{re_['price_limits']['skipped_short']}, "
                    f"lots {re_['round_lots']['skipped']}"
                )
                if mode == "realistic"
                else "–"
            )
            out.append(
                (
                    f"{name} {mode}{' (headline)' if mode == headline else ''}",
                    s["sharpe"],
                    s["sharpe_tstat"],
                    s["hac_lag"],
                    s["ann_return"],
                    s["max_drawdown"],
                    s.get("sortino"),
                    s.get("cagr"),
                    s.get("calmar"),
                    s["avg_turnover"],
                    bc["flat"]["sharpe"],
                    bc["spread_impact"]["sharpe"],
                    f"{pos['suspended']}/{pos['delisted']}/{pos['unfilled']}/{pos['unpriced']}",
                    skipped,
                    f"{s['n_missing_dates']}/{s['n_unrealised_dates']}/{s['n_skipped_dates']}",
                )
            )
    return out


def _realism_note(both: dict, lead: str) -> str:
    if lead not in both:
        return ""
    re_ = both[lead]["realistic"].summary["realism"]
    parts = []
    for k in ("borrow", "price_limits", "round_lots"):
        r = re_[k]
        state = f"applied ({r['source']})" if r["applied"] else ("unavailable (no data)" if r["enabled"] else "off")
        parts.append(f"{k.replace('_', ' ')}: {state}")
    return (
        f'<p class="note">Realistic rules — {"; ".join(parts)}; capital ¥{re_["capital"]:,.0f}, lot '
        f"{re_['lot_size']}. Positions: suspended (carried to the next close) / delisted (to the last close) / "
        "unfilled (no entry close) / unpriced (no label, no price). Skipped orders: short names passed over as not "
        "borrowable, new longs/shorts at a limit entry close, names below one lot. Dates: missing / unrealised / "
        "too few names.</p>" + _costs_note(re_)
    )


def _costs_note(re_: dict) -> str:
    """The realistic book's TSE cost parts and fills (backtest/costs.py), one line."""
    co, fi = re_.get("costs"), re_.get("fills")
    if not co:
        return ""
    parts = ", ".join(f"{k} {100 * co[k]:.2f} %" for k in ("commission", "spread", "impact", "borrow", "opportunity"))
    fills = ""
    if fi:
        u = fi["unfilled_orders"]
        fills = (
            f"; orders not (fully) filled: {u['cap']} at the {100 * fi['participation_cap']:g} % ADV cap, "
            f"{u['limit']} locked at a price limit, {u['halt']} halted (carried to the next session); "
            f"{100 * (fi['filled_share_of_traded'] or 0):.1f} % of the wanted trading filled"
        )
    return (
        f'<p class="note">TSE costs of the realistic book, summed over the period (of capital): {parts} (opportunity: '
        f"what the unfilled orders' positions lost){fills}. Short-selling restriction lists are not in the data "
        "(J-Quants' daily margin / short-sale regulation flags are not fetched): not applied.</p>"
    )


def _dropped_table(dropped: dict | None) -> str:
    """The features the validation dropped, grouped by reason (their null share on the training days)."""
    if not dropped:
        return '<p class="note">No feature was dropped by the validation (or no safe report behind this run).</p>'
    by: dict[tuple[float, str], list[str]] = {}
    for k, v in sorted(dropped.items()):
        num = isinstance(v, (int, float))
        key = (float(v) if num else -1.0, f"null share {100 * float(v):.1f} %" if num else str(v))
        by.setdefault(key, []).append(k)
    rows = [(r, len(fs), ", ".join(fs)) for (_, r), fs in sorted(by.items(), reverse=True)]
    return "<h3>Features dropped by SafeTrainingPipeline (above safe.validation.max_null_share)</h3>" + H.table(
        ["reason", "features", "names"], rows, wrap_cols=(2,), left=True
    )


def _data_table(rep: dict) -> str:
    """The data behind the run in one readable table: dataset, validation and the test predictions."""
    d, ds, st = rep["data"]["predictions"], rep["data"].get("dataset") or {}, rep["data"]["safe_stats"]
    rows = [
        ("dataset", f"{ds.get('path', '–')} (fingerprint {ds.get('fingerprint', '–')})"),
        ("features in the manifest", f"{H.fmt(ds.get('n_features'))}, calendar {ds.get('calendar') or '–'}"),
        (
            "horizons, entry lag",
            f"{', '.join(f'{h}d' for h in ds.get('horizons', [])) or '–'}; entry "
            f"{ds.get('entry_lag', '–')} session(s) after the signal",
        ),
    ]
    if st:
        rows += [
            ("rows validated", f"{H.fmt(st.get('rows'))} ({st.get('dates')} dates × {st.get('stocks')} stocks)"),
            ("split", st.get("split")),
        ]
    fu = rep["data"].get("features_used") or {}
    if fu:
        rows.append(("features used", "; ".join(_features_text(k, v) for k, v in fu.items())))
    rows += [
        (
            "test predictions",
            f"{H.fmt(d['rows'])} rows: {d['days']} days × {d['stocks']} stocks, {d['start']} .. {d['end']}",
        )
    ]
    return H.table(["", "value"], rows, wrap_cols=(1,), left=True)


def _features_text(name: str, v: dict) -> str:
    """'atft: 173 (7 entirely empty)' / 'lightgbm: 156 after screening (17 dropped, below)'."""
    if "dropped" in v:
        return f"{name}: {H.fmt(v['features'])} after screening ({v['dropped']} dropped, below)"
    empty = v.get("entirely_empty")
    extra = f" ({empty} entirely empty: {', '.join(v.get('empty') or [])})" if empty else ""
    return f"{name}: {H.fmt(v['features'])}, every manifest feature{extra}"


def _tiles(rep: dict, evals: dict, paired: dict, h0: int) -> str:
    chk, rm, ts = rep["checks"], rep["run_model"], rep["tear_sheet"]
    lead, ref = rep["product"], rep["reference"]
    m_eval = evals[lead][str(h0)]
    p0 = paired.get(str(h0), {})
    size = (
        f"{rm['params_per_member']:,}" + (f" × {rm['members']}" if (rm.get("members") or 1) > 1 else "")
        if rm.get("params_per_member")
        else "–"
    )
    arch = ", ".join(
        x
        for x in (
            f"hidden {rm['hidden']}" if rm.get("hidden") else "",
            f"window {rm['window']}" if rm.get("window") else "",
            ("GAT" if rm.get("gat") else "no GAT") if rm.get("gat") is not None else "",
            f"norm {rm['norm']}" if rm.get("norm") else "",
        )
        if x
    )
    d = rep["data"]["predictions"]
    run = H.kpis(
        [
            (f"model ({arch or 'config not recorded'})", H.fmt(rm["name"]), None),
            ("parameters per member × members", size, None),
            (f"test span, {d['days']} days × {d['stocks']} stocks", f"{d['start']} .. {d['end']}", None),
            ("horizons", " ".join(f"{h}d" for h in rep["horizons"]), None),
        ],
        kind="run",
    )
    bm = rep["backtest"].get(lead, {}).get("summary") or {}
    rel = ts["relative"].get(f"{lead} {chk['sharpe_mode']}", {}).get(ts["benchmark"], {})
    sh = chk["sharpe"]
    results = H.kpis(
        [
            (
                f"{lead} (product) RankIC {h0}d (t {H.fmt(m_eval['rank_ic_tstat'], 2)}, {_tlabel(m_eval)})",
                H.fmt(m_eval["rank_ic_mean"]),
                None,
            ),
            (
                f"{ref or 'reference'} RankIC {h0}d",
                H.fmt(evals.get(ref, {}).get(str(h0), {}).get("rank_ic_mean")),
                None,
            ),
            (f"{lead} − {ref or 'reference'} t ({_tlabel(p0)})", H.fmt(p0.get("t_stat"), 2), None),
            (
                f"net Sharpe, {chk['sharpe_mode']} book "
                f"(t {H.fmt(chk['sharpe_tstat'], 2)}, {chk['sharpe_periods']} periods)",
                H.fmt(sh, 2),
                None,
            ),
            (
                "annual return / max drawdown",
                f"{H.fmt(bm.get('ann_return'), pct=True)} / {H.fmt(bm.get('max_drawdown'), pct=True)}",
                None,
            ),
            (f"information ratio vs {ts['benchmark'].replace('_', '-')}", H.fmt(rel.get("information_ratio"), 2), None),
            (
                "Sortino / CAGR / Calmar",
                f"{H.fmt(bm.get('sortino'), 2)} / {H.fmt(bm.get('cagr'), pct=True)} / {H.fmt(bm.get('calmar'), 2)}",
                None,
            ),
        ]
    )
    if chk.get("targets_apply"):
        targets = H.kpis(
            [
                (
                    f"original's Sharpe target {chk['sharpe_target']} (definition unknown)",
                    "met" if chk["sharpe_meets_target"] else "not met",
                    "ok" if chk["sharpe_meets_target"] else "bad",
                ),
                (
                    f"parameters vs the original's {chk['param_target']:,}",
                    H.fmt(chk["param_ratio"], 3),
                    "ok" if chk["param_within_tolerance"] else "bad",
                ),
            ],
            kind="target",
        )
    else:
        targets = (
            f'<p class="note">The original\'s targets (Sharpe {chk["sharpe_target"]}, '
            f"{chk['param_target'] / 1e6:.1f} M parameters) apply to <code>model=full</code> only; this run is "
            f"<code>model={H.fmt(rm['name'])}</code>.</p>"
        )
    return run + results + targets + _all_predictors(rep, evals, h0)


def _all_predictors(rep: dict, evals: dict, h0: int) -> str:
    """The headline's figures for every predictor of the run, the product first."""
    rows = []
    for k, e in evals.items():
        s, bt = e.get(str(h0), {}), (rep["backtest"].get(k) or {}).get("summary") or {}
        tag = " (product)" if k == rep["product"] else " (reference)" if k == rep["reference"] else ""
        rows.append(
            (
                f"{k}{tag}",
                s.get("rank_ic_mean"),
                s.get("rank_ic_tstat"),
                bt.get("sharpe"),
                bt.get("ann_return"),
                bt.get("cagr"),
                bt.get("max_drawdown"),
                bt.get("sortino"),
                bt.get("calmar"),
            )
        )
    head = ["predictor", f"RankIC {h0}d", "t", "Sharpe", "ann. return", "CAGR", "max DD", "Sortino", "Calmar"]
    return "<h3>Every predictor (same rows, headline book)</h3>" + H.table(head, rows, pct_cols=(4, 5, 6))


def _dist(ts: dict, lead: str, key: str) -> Any:
    return (ts["ic_distribution"].get(lead) or {}).get(key)


def _worst_table(worst: pl.DataFrame | None, book: str) -> str:
    """The 5 deepest drawdowns of the headline book (`summary.worst_drawdowns`)."""
    if worst is None or worst.height == 0:
        return ""
    rows = [
        (r["start"], r["trough"], r["recovery"] or "not recovered", r["depth"], r["length"])
        for r in worst.iter_rows(named=True)
    ]
    return f"<h3>Worst drawdowns ({H.fmt(book)})</h3>" + H.table(
        ["peak", "trough", "recovery", "depth", "sessions"], rows, pct_cols=(3,)
    )


def _relative_rows(rel: dict) -> list[tuple]:
    rows = []
    for name, by_bench in rel.items():
        for b, r in by_bench.items():
            rows.append(
                (
                    name,
                    "TOPIX" if b == "topix" else "equal-weight universe",
                    r["alpha"],
                    r["beta"],
                    r["tracking_error"],
                    r["information_ratio"],
                    r["correlation"],
                    r["n"],
                )
            )
    return rows


def _html(
    rep: dict,
    daily: dict,
    h0: int,
    bts: dict,
    evals: dict,
    quants: dict,
    per_year: dict,
    bt_year: dict,
    importances: dict,
    curves: pl.DataFrame | None,
    paired: dict,
    window: int,
    top: int,
    dpi: int,
    both: dict,
    tf: dict,
) -> str:
    chk, ts = rep["checks"], rep["tear_sheet"]
    lead, ref = rep["product"], rep["reference"]
    H.assign_colors([lead, *([ref] if ref else []), *evals, *both])
    missing = f'<p class="note">Missing inputs: {H.fmt(", ".join(rep["missing"]))}</p>' if rep["missing"] else ""
    note = (
        f'<p class="note">Sharpe: {H.fmt(chk["sharpe_definition"])}. t-stats of 1-day labels and of the backtests '
        "are Newey–West (HAC, lag floor(4 (n/100)^(2/9)), reference t(n − 1)); t-stats of h-day labels (h > 1, "
        "overlapping windows) are EWC (equal-weighted cosine HAC, B = floor(0.4 n / h) cosines, reference t(B)), "
        "because Newey–West with lag h − 1 rejects a true null 2–3 times too often there; "
        "days with a constant prediction count as IC 0.</p>"
    )
    secs = [H.section("summary", "What was run and what it achieved", _tiles(rep, evals, paired, h0) + note + missing)]

    rows_html = "<h3>Rows compared (the same (Date, Code) rows for every predictor)</h3>" + _rows_table(rep["rows"])
    secs.append(
        H.section("data", "Data", _data_table(rep) + _dropped_table(rep["data"].get("dropped_features")) + rows_html)
    )

    rows = []
    for name, e in evals.items():
        for h, s in e.items():
            rows.append(
                (
                    f"{name} {h}d",
                    s["ic_mean"],
                    s["icir"],
                    s["rank_ic_mean"],
                    s["rank_icir"],
                    s["rank_ic_tstat"],
                    _tshort(s),
                    s["rank_ic_tstat_naive"],
                    s["rank_ic_pos_share"],
                    s["hit_rate"],
                    s["top_bottom_spread"],
                    s["n_days"],
                    s["n_constant_days"],
                )
            )
    prow = [
        (
            pair.replace("_vs_", " − "),
            f"{h}d",
            p["mean_a"],
            p["mean_b"],
            p["mean_diff"],
            p["t_stat"],
            _tshort(p),
            p["t_stat_naive"],
            p["p_value"],
            p["n_days"],
        )
        for pair, by_h in rep["paired"].items()
        for h, p in by_h.items()
    ]
    secs.append(
        H.section(
            "horizons",
            "IC decay over horizons",
            H.grid(
                H.caption(
                    H.chart_ic_decay(tf["decay"], dpi),
                    "Each predictor's pred_{h}d against target_{h}d; the dotted line is the "
                    f"{h0}-day signal against longer targets. 95 % bands: 1 day mean ± 1.96 Newey–West "
                    "standard errors, h > 1 days mean ± t_0.975(B) EWC standard errors.",
                )
            )
            + H.table(
                [
                    "",
                    "IC",
                    "ICIR",
                    "RankIC",
                    "RankICIR",
                    "RankIC t",
                    "t method",
                    "naive t",
                    "RankIC>0",
                    "hit rate",
                    "top−bottom",
                    "days",
                    "constant days",
                ],
                rows,
            )
            + "<h3>Paired tests of daily RankIC (same rows)</h3>"
            + (
                H.table(
                    ["pair", "horizon", "a", "b", "difference", "t-stat", "t method", "naive t", "p-value", "days"],
                    prow,
                )
                if prow
                else '<p class="note">Only one predictor in this run.</p>'
            ),
        )
    )

    secs.append(H.section("neutral", "Raw and risk-neutral IC; the books' factor exposures", H.neutral_view(rep)))

    months = tf["monthly"]
    secs.append(
        H.section(
            "rank-ic",
            f"RankIC through time and by sector ({h0}-day horizon)",
            H.grid(
                H.chart_rank_ic({k: v[h0] for k, v in daily.items() if h0 in v}, window, h0, dpi),
                H.caption(
                    H.chart_ic_distribution(tf["ic"], tf["qq"], dpi, lead),
                    f"Skew {H.fmt(_dist(ts, lead, 'skew'), 2)}, excess kurtosis "
                    f"{H.fmt(_dist(ts, lead, 'excess_kurtosis'), 2)}; points off the line are days a normal "
                    "distribution of the same mean and spread would not give.",
                ),
                H.chart_monthly_heatmap(months.get(lead), dpi, lead),
                *([H.chart_monthly_heatmap(months[ref], dpi, ref)] if ref in months else []),
                H.caption(
                    H.chart_by_group(tf["sectors"], dpi, f"{lead} RankIC by {ts['sector_column']}"),
                    f"Daily RankIC within each {ts['sector_column']} group (days with 5+ names), t-stat {_tname(h0)}.",
                ),
            ),
        )
    )

    sig = ts["signal"]
    secs.append(
        H.section(
            "signal",
            "Signal turnover and stability",
            H.grid(
                H.caption(
                    H.chart_signal(tf["autocorr"], tf["turnover"], dpi),
                    f"Rank autocorrelation: Spearman correlation of a day's prediction ranks with the previous "
                    f"prediction day's. Turnover: share of the top / bottom of {sig['quantiles']} buckets that is new "
                    "since the previous day.",
                )
            )
            + H.table(
                ["mean rank autocorrelation", "mean top-bucket turnover", "mean bottom-bucket turnover"],
                [(sig["rank_autocorr_mean"], sig["top_turnover_mean"], sig["bottom_turnover_mean"])],
                pct_cols=(1, 2),
            ),
        )
    )

    secs.append(
        H.section(
            "quantiles",
            "Returns per prediction quantile",
            H.grid(
                H.chart_quantiles(quants, dpi),
                H.chart_cumulative_quantiles(tf["cumq"], dpi, h0),
                H.caption(
                    H.chart_quantile_box(tf["daily_quantiles"], dpi, lead),
                    "Each day's mean target per bucket: box = middle half of the days, whiskers 5th-95th "
                    "percentile, dot = mean.",
                ),
            ),
        )
    )

    curves_ = {f"{k} {mode}": both[k][mode].daily for k in both for mode in ("realistic", "ideal")}
    bt_rows = _bt_rows(both, chk["sharpe_mode"])
    rel_rows = _relative_rows(ts["relative"])
    secs.append(
        H.section(
            "backtest",
            "Backtest: the realistic book (TSE costs) and the idealised one beside it",
            H.grid(
                H.caption(
                    H.chart_equity(curves_, dpi, tf["bench_curve"]),
                    "Growth of 1 after costs (log scale); the grey line is the benchmark (long only).",
                ),
                H.chart_rolling_sharpe(tf["rolling"], tf["window"], dpi),
                H.chart_rolling_line(
                    tf["vol"], "vol", tf["window"], dpi, f"rolling {tf['window']}-session volatility (ann., %)", True
                ),
                H.chart_rolling_line(
                    tf["beta"],
                    "beta",
                    tf["window"],
                    dpi,
                    f"rolling {tf['window']}-session beta vs {'TOPIX' if ts['benchmark'] == 'topix' else 'universe'}",
                ),
                H.caption(
                    H.chart_monthly_returns(tf["monthly_returns"], dpi, f"{lead} {chk['sharpe_mode']}"),
                    "Net return of the headline book compounded within each month.",
                ),
                H.caption(
                    H.chart_capacity((rep.get("backtest_capacity") or {}).get("horizons"), dpi, rep["product"]),
                    "Capacity: the realistic book's Sharpe at each capital (portfolio.capacity_capitals, yen per "
                    "leg); square-root impact and the participation cap grow with the capital, the idealised "
                    "book's flat cost (dashed) does not.",
                ),
            )
            + _worst_table(tf["worst_drawdowns"], f"{lead} {chk['sharpe_mode']}")
            + H.table(*H.capacity_rows((rep.get("backtest_capacity") or {}).get("horizons")))
            + H.table(
                [
                    "",
                    "Sharpe",
                    "t (NW)",
                    "HAC lag",
                    "ann. return",
                    "max DD",
                    "Sortino",
                    "CAGR",
                    "Calmar",
                    "turnover",
                    "Sharpe flat cost",
                    "Sharpe TSE costs",
                    "susp./delist./unfilled/unpriced",
                    "skipped orders",
                    "dates missing/unrealised/small",
                ],
                bt_rows,
                pct_cols=(4, 5, 7),
            )
            + _realism_note(both, rep["product"])
            + "<h3>Every horizon: h overlapping cohorts, each held h sessions</h3>"
            + H.table(
                [
                    "book",
                    "Sharpe realistic",
                    "ann. return",
                    "max DD",
                    "turnover / session",
                    "costs (of capital)",
                    "Sharpe ideal",
                    "ann. return ideal",
                ],
                _by_horizon_rows(rep.get("backtest_by_horizon") or {}),
                pct_cols=(2, 3, 5, 7),
            )
            + '<p class="note">Each session 1/h of the capital enters a new long/short cohort held h sessions '
            "(Jegadeesh–Titman), so each figure comes from one daily series and does not depend on a start day; "
            "annualised with the calendar's sessions a year.</p>"
            + "<h3>Relative to a benchmark</h3>"
            + (
                H.table(
                    [
                        "book",
                        "benchmark",
                        "alpha (ann.)",
                        "beta",
                        "tracking error",
                        "information ratio",
                        "correlation",
                        "periods",
                    ],
                    rel_rows,
                    pct_cols=(2, 4),
                )
                if rel_rows
                else '<p class="note">No backtest to compare.</p>'
            )
            + '<p class="note">Per rebalance period: beta = cov(book, benchmark) / var(benchmark); alpha = annualised '
            "intercept; tracking error = annualised std of the difference; information ratio = annualised mean "
            "difference / tracking error. TOPIX is measured over the same entry and exit closes as the book; the "
            "equal-weight universe is every eligible name. The long/short book is dollar-neutral, so a beta near 0 "
            "is what it should show.</p>",
        )
    )

    years = sorted({r["period"] for t in per_year.values() for r in t.to_dicts()})
    yr_rows = []
    for y in years:
        row: list[Any] = [y]
        for name in (lead, ref):
            t = per_year.get(name)
            r = t.filter(pl.col("period") == y).to_dicts() if t is not None else []
            row += [r[0]["rank_ic_mean"], r[0]["rank_ic_tstat"]] if r else [None, None]
            b = bt_year.get(name)
            rb = b.filter(pl.col("year") == int(y)).to_dicts() if b is not None else []
            row += [rb[0]["net"], rb[0]["sharpe"]] if rb else [None, None]
        yr_rows.append(row)
    secs.append(
        H.section(
            "per-year",
            "Per year",
            H.table(
                [
                    "year",
                    f"{lead} RankIC",
                    f"{lead} t ({_tname(h0)})",
                    f"{lead} net",
                    f"{lead} Sharpe",
                    f"{ref} RankIC",
                    f"{ref} t ({_tname(h0)})",
                    f"{ref} net",
                    f"{ref} Sharpe",
                ],
                yr_rows,
                pct_cols=(3, 7),
            ),
        )
    )
    if rep.get("bench"):
        secs.append(H.section("bench", "Model zoo benchmark on this dataset", H.bench_view(rep["bench"])))
    imp_colors = {"LightGBM gain": H.color("lightgbm"), "model variable selection": H.color("atft")}
    secs.append(H.section("importance", "Feature importance", H.chart_importance(importances, top, dpi, imp_colors)))
    secs.append(H.section("training", "Training curves", H.chart_training(curves, dpi)))
    cfg_text = rep["config"]["run"]
    secs.append(
        H.section(
            "config",
            "Configuration",
            f"<pre>{H.fmt(cfg_text)}</pre>" if cfg_text else '<p class="note">No config.yaml in the run.</p>',
        )
    )
    res = [(k, v) for k, v in {**rep["durations"], **rep["peak_memory"]}.items()]
    secs.append(
        H.section(
            "resources",
            "Durations and memory",
            H.table(["figure", "value"], res)
            if res
            else '<p class="note">metrics.json holds no durations or memory figures.</p>',
        )
    )
    nav = [
        ("summary", "summary"),
        ("data", "data"),
        ("horizons", "IC decay"),
        ("neutral", "neutral"),
        ("rank-ic", "RankIC"),
        ("signal", "signal"),
        ("quantiles", "quantiles"),
        ("backtest", "backtest"),
        ("per-year", "per year"),
        *([("bench", "zoo bench")] if rep.get("bench") else []),
        ("importance", "importance"),
        ("training", "training"),
        ("config", "config"),
    ]
    return H.page("gogooku3 run report", f"{rep['run_dir']} · created {rep['created']}", secs, nav)
