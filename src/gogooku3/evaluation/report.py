"""Run report: every figure of a training run as JSON plus one self-contained HTML page.

Reads the run directory contract (``metrics.json`` as `results.TrainResult`, ``predictions_test.parquet``,
``baseline_predictions_test.parquet``, ``logs/metrics.csv``, ``variable_importance.json``, ``config.yaml``,
``bundle/``) and, through the run's own `BaselineRef`, the LightGBM run it was compared with and the safe report
that fitted it. Only ``predictions_test.parquet`` is required; a
missing optional input is listed under ``missing`` and its section says so. Every metric comes from
`gogooku3.evaluation.metrics` and every portfolio figure from `gogooku3.evaluation.portfolio` (one definition each).

Model and baseline are compared on the same (Date, Code) rows (`metrics.align_rows`; the rows left out and why are in
``rows``), every t-stat is Newey–West with its lag, and each predictor gets the ideal and the realistic backtest side
by side (the headline one by `portfolio.realism`), with the positions carried through suspensions and delistings and
the orders the realism rules skipped.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl

from gogooku3 import columns as C
from gogooku3.errors import DataError
from gogooku3.evaluation import metrics
from gogooku3.evaluation import report_html as H
from gogooku3.evaluation.portfolio import (
    UNIVERSE_COLUMNS,
    BacktestConfig,
    BacktestResult,
    Market,
    attach_dataset_columns,
    backtest_both,
    data_source,
    market_for,
)
from gogooku3.io import peak_rss_mb, read_json, timestamp, to_json, write_text
from gogooku3.results import SafeSummary, TrainResult

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
    except Exception as e:  # noqa: BLE001 - polars raises several types for corrupt files
        raise DataError(f"{path}: cannot read parquet ({type(e).__name__})") from e
    if not _horizons(df) or "Date" not in df.columns or "Code" not in df.columns:
        raise DataError(f"{path}: needs Date, Code and pred_{{h}}d/target_{{h}}d columns "
                        f"(has {', '.join(df.columns[:10])})")
    return df


def _read_json_opt(path: Path) -> Any:
    return read_json(path) if path.exists() else None


def training_curves(path: Path) -> pl.DataFrame | None:
    """Per epoch: the mean of each logged numeric column of a Lightning CSVLogger metrics.csv."""
    if not path.exists():
        return None
    try:
        df = pl.read_csv(path, infer_schema_length=None, null_values=["", "nan", "NaN"])
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{path}: cannot read training log ({type(e).__name__})") from e
    if "epoch" not in df.columns or df.height == 0:
        return None
    num = [c for c, t in df.schema.items() if t.is_numeric() and c not in ("epoch", "step")]
    return (df.filter(pl.col("epoch").is_not_null()).group_by("epoch").agg(pl.col(num).cast(pl.Float64).mean())
            .sort("epoch"))


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
    if result is not None:
        return result.model.n_params_per_member, "metrics.json:model.n_params_per_member"
    st = run_dir / "bundle" / "model.safetensors"
    if st.exists():
        from safetensors import safe_open

        total = 0
        with safe_open(str(st), framework="numpy") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
        meta = _read_json_opt(run_dir / "bundle" / "bundle.json") or {}
        return total // int(meta.get("members", 1)), "bundle/model.safetensors"
    return None, None


def baseline_inputs(result: TrainResult | None) -> tuple[dict[str, float] | None, SafeSummary | None]:
    """LightGBM gain importance and the safe report's data summary of the baseline run this training run used."""
    ref = result.baseline if result is not None else None
    if ref is None or ref.directory is None or not Path(ref.directory, "run.json").exists():
        return None, None
    from gogooku3.baseline import BaselineRun

    run = BaselineRun.load(ref.directory)
    safe = SafeSummary.from_report(run.safe_report) if run.safe_report and Path(run.safe_report).exists() else None
    return dict(run.feature_importance), safe


def _backtests(df: pl.DataFrame | None, cfg: Any, c: BacktestConfig, market: Market | None, source: str
               ) -> tuple[dict[str, BacktestResult], str] | None:
    """The ideal and the realistic backtest of one predictor (None without its horizon's predictions)."""
    if df is None or C.pred(c.horizon) not in df.columns:
        return None
    dataset = Path(cfg.paths.dataset)
    if dataset.exists():
        df = attach_dataset_columns(df, dataset, (*UNIVERSE_COLUMNS, c.vol_column), check_keys=False)
    return backtest_both(df, c, market, source)


def build_report(cfg: Any, run_dir: str | Path) -> dict[str, Path]:
    """`gogooku3 report --run RUN`: write RUN/report.json and RUN/report.html; return their paths."""
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run directory not found")
    run = run_dir.resolve()
    rc = cfg.report
    window, top, dpi = int(rc.rolling_window), int(rc.top_features), int(rc.dpi)
    target_sharpe, target_params, tol = float(rc.target_sharpe), int(rc.target_params), float(rc.param_tolerance)

    model = _read_parquet(run / "predictions_test.parquet", required=True)
    base = _read_parquet(run / "baseline_predictions_test.parquet", required=False)
    result = TrainResult.load(run / "metrics.json") if (run / "metrics.json").exists() else None
    var_imp = _read_json_opt(run / "variable_importance.json")
    curves = run_curves(run)
    run_cfg_text = (run / "config.yaml").read_text(encoding="utf-8") if (run / "config.yaml").exists() else None
    lgb_importance, safe = baseline_inputs(result)
    missing = [n for n, v in (("baseline_predictions_test.parquet", base), ("metrics.json", result),
                              ("variable_importance.json", var_imp), ("logs/metrics.csv", curves),
                              ("config.yaml", run_cfg_text), ("safe report of the baseline run", safe)) if v is None]

    # ---- prediction metrics, on the rows both predictors scored -------------------------------------
    horizons = _horizons(model)
    frames, rows = metrics.align_rows({"model": model, "baseline": base}, horizons)
    evals = {k: metrics.evaluate(v, [h for h in horizons if h in _horizons(v)]) for k, v in frames.items()}
    daily = {k: {h: metrics.daily_ic(v, C.pred(h), C.target(h)) for h in horizons if h in _horizons(v)}
             for k, v in frames.items()}
    paired = {str(h): metrics.paired_comparison(daily["model"][h], daily["baseline"][h], horizon=h)
              for h in horizons if base is not None and h in daily["baseline"]}
    h0 = horizons[0]
    per_year = {k: metrics.per_period(d[h0], "year", h0) for k, d in daily.items()}
    q = int(cfg.portfolio.get("quantiles", 5)) if "portfolio" in cfg else 5
    quants = {k: metrics.quantile_returns(v, C.pred(h0), C.target(h0), q) for k, v in frames.items()}

    # ---- backtests: ideal and realistic, the headline one per `portfolio.realism` ---------------------
    bc = BacktestConfig.from_any(cfg)
    dataset = Path(cfg.paths.dataset)
    source = data_source(cfg, dataset)
    market = market_for(cfg, model, dataset, bc.vol_column)
    if market is None:
        log.warning("report: dataset %s not found: backtests without its calendar, prices and realism inputs", dataset)
    bts: dict[str, BacktestResult] = {}
    both: dict[str, dict[str, BacktestResult]] = {}
    headline = bc.headline(source)
    for k, v in frames.items():
        try:
            if (res := _backtests(v, cfg, bc, market, source)) is not None:
                both[k], headline = res
                bts[k] = both[k][headline]
        except DataError as e:  # e.g. too few names per day: report the rest and say why
            log.warning("report: %s backtest skipped: %s", k, e)
            missing.append(f"{k} backtest ({e})")
    bt_year = {k: (v.daily.group_by(year=pl.col("Date").dt.year())
                   .agg(net=(1 + pl.col("net")).product() - 1, sharpe=pl.col("net").mean() / pl.col("net").std()
                        * math.sqrt(bc.periods_per_year / bc.horizon), periods=pl.len()).sort("year"))
               for k, v in bts.items()}

    # ---- importance, size, resources -----------------------------------------------------------------
    importances = {"LightGBM gain": lgb_importance,
                   "model variable selection": {str(k): float(v) for k, v in var_imp.items()} if var_imp else None}
    n_params, n_params_src = param_count(run, result)
    durations = {} if result is None else {
        **{f"{k}_seconds": v for k, v in result.durations_s.items()},
        **{f"fold{f.fold['index']}_train_seconds": f.train_seconds for f in result.folds}}
    memory = {} if result is None else {k: v for k, v in (("peak_rss_mb", result.peak_rss_mb),
                                                         ("peak_gpu_mb", result.peak_gpu_mb)) if v is not None}
    data_stats = {} if safe is None else safe.rows()
    model_sharpe = bts["model"].summary["sharpe"] if "model" in bts else None

    report = {
        "run_dir": str(run), "created": timestamp(), "horizons": horizons, "missing": missing,
        "config": {"run": run_cfg_text, "portfolio": asdict(bc), "report": dict(rc)},
        "data": {"model_predictions": {"rows": model.height, "days": model["Date"].n_unique(),
                                       "stocks": model["Code"].n_unique(), "start": model["Date"].min(),
                                       "end": model["Date"].max()},
                 "dataset": None if result is None else asdict(result.dataset),
                 "safe_report": None if safe is None else safe.path, "safe_stats": data_stats},
        "rows": rows, "training_rows": None if result is None else result.comparison_rows,
        "backtest_market": None if market is None else {"sessions": len(market.sessions), **market.sources},
        "evaluation": evals, "paired_model_vs_baseline": paired,
        "per_year": {k: v.to_dicts() for k, v in per_year.items()},
        "quantile_returns": {k: v.to_dicts() for k, v in quants.items()},
        "backtest": {k: {"summary": v.summary, "per_year": bt_year[k].to_dicts(), "headline": headline,
                         **{mode: both[k][mode].summary for mode in ("ideal", "realistic")}}
                     for k, v in bts.items()},
        "checks": {
            "param_count": n_params, "param_count_source": n_params_src, "param_target": target_params,
            "param_ratio": n_params / target_params if n_params else None,
            "param_within_tolerance": abs(n_params / target_params - 1) <= tol if n_params else None,
            "sharpe": model_sharpe, "sharpe_target": target_sharpe,
            "sharpe_tstat": bts["model"].summary["sharpe_tstat"] if "model" in bts else None,
            "sharpe_tstat_method": bts["model"].summary["tstat_method"] if "model" in bts else None,
            "sharpe_hac_lag": bts["model"].summary["hac_lag"] if "model" in bts else None,
            "sharpe_mode": headline,
            "sharpe_periods": bts["model"].summary["n_periods"] if "model" in bts else None,
            "sharpe_meets_target": (model_sharpe >= target_sharpe) if model_sharpe is not None
            and math.isfinite(model_sharpe) else None,
            "sharpe_definition": f"mean(net)/std(net)*sqrt({bc.periods_per_year}/{bc.horizon}), {headline} "
                                 f"backtest, cost model {bc.cost_model} ({bc.cost_bps:g} bps per unit turnover when "
                                 "flat); the original's 0.849 has no known definition",
        },
        "feature_importance": {k: v for k, v in importances.items() if v},
        "training": {"run_metrics": None if result is None else result.to_dict(),
                     "curves": curves.to_dicts() if curves is not None else None},
        "durations": durations, "peak_memory": memory,
        "report_seconds": None, "report_peak_rss_mb": None,
    }

    html = _html(report, daily, h0, bts, evals, quants, per_year, bt_year, importances, curves, paired,
                 window, top, dpi, both)
    report["report_seconds"] = time.perf_counter() - t0
    report["report_peak_rss_mb"] = peak_rss_mb()
    json_path, html_path = run / "report.json", run / "report.html"
    write_text(json_path, to_json(_clean(report)) + "\n")
    write_text(html_path, html)
    log.info("report: model RankIC@%dd %.4f, Sharpe %s -> %s", h0, evals["model"][str(h0)]["rank_ic_mean"],
             H.fmt(model_sharpe, 3), html_path)
    return {"json": json_path, "html": html_path}


def _tlabel(d: dict | None) -> str:
    """'NW lag L' of a dict with a Newey–West t-stat."""
    return f"{d.get('tstat_method', '?').replace('newey_west', 'Newey–West')}, lag {d.get('hac_lag')}" if d else ""


def _rows_table(rows: dict | None) -> str:
    if not rows or not rows.get("frames"):
        return ""
    body = [(name, r["rows"], r["kept"], r["excluded_null_prediction"],
             ", ".join(f"{k}: {v}" for k, v in r["excluded_absent_in"].items()) or "–")
            for name, r in rows["frames"].items()]
    return H.table(["predictor", "rows", "compared", "no prediction", "absent in (other predictor: rows)"], body)


def _bt_rows(both: dict, headline: str) -> list[tuple]:
    out = []
    for name, modes in both.items():
        for mode in ("ideal", "realistic"):
            s = modes[mode].summary
            pos, re_ = s["positions"], s["realism"]
            bc = s["by_cost_model"]
            skipped = (f"borrow {re_['borrow']['short_names_passed_over']}, limits "
                       f"{re_['price_limits']['skipped_long']}/{re_['price_limits']['skipped_short']}, "
                       f"lots {re_['round_lots']['skipped']}") if mode == "realistic" else "–"
            out.append((f"{name} {mode}{' (headline)' if mode == headline else ''}", s["sharpe"], s["sharpe_tstat"],
                        s["hac_lag"], s["ann_return"], s["max_drawdown"], s["avg_turnover"],
                        bc["flat"]["sharpe"], bc["spread_impact"]["sharpe"],
                        f"{pos['suspended']}/{pos['delisted']}/{pos['unfilled']}/{pos['unpriced']}", skipped,
                        f"{s['n_missing_dates']}/{s['n_unrealised_dates']}/{s['n_skipped_dates']}"))
    return out


def _realism_note(both: dict) -> str:
    if "model" not in both:
        return ""
    re_ = both["model"]["realistic"].summary["realism"]
    parts = []
    for k in ("borrow", "price_limits", "round_lots"):
        r = re_[k]
        state = f"applied ({r['source']})" if r["applied"] else ("unavailable (no data)" if r["enabled"]
                                                                  else "off")
        parts.append(f"{k.replace('_', ' ')}: {state}")
    return (f'<p class="note">Realistic rules — {"; ".join(parts)}; capital ¥{re_["capital"]:,.0f}, lot '
            f'{re_["lot_size"]}. Positions: suspended (carried to the next close) / delisted (to the last close) / '
            'unfilled (no entry close) / unpriced (no label, no price). Skipped orders: short names passed over as not '
            'borrowable, new longs/shorts at a limit entry close, names below one lot. Dates: missing / unrealised / '
            'too few names.</p>')


def _html(rep: dict, daily: dict, h0: int, bts: dict, evals: dict, quants: dict, per_year: dict, bt_year: dict,
          importances: dict, curves: pl.DataFrame | None, paired: dict, window: int, top: int, dpi: int,
          both: dict) -> str:
    chk = rep["checks"]
    m_eval = evals["model"][str(h0)]
    sh = chk["sharpe"]
    p0 = paired.get(str(h0), {})
    summary = H.kpis([
        (f"model RankIC {h0}d (mean daily)", H.fmt(m_eval["rank_ic_mean"]), None),
        (f"model RankIC t-stat {h0}d ({_tlabel(m_eval)})", H.fmt(m_eval["rank_ic_tstat"], 2), None),
        ("baseline RankIC " + f"{h0}d", H.fmt(evals.get("baseline", {}).get(str(h0), {}).get("rank_ic_mean")), None),
        (f"model − baseline t-stat ({_tlabel(p0)})", H.fmt(p0.get("t_stat"), 2), None),
        (f"net Sharpe (model, {chk['sharpe_mode']}; t {H.fmt(chk['sharpe_tstat'], 2)}, Newey–West lag "
         f"{chk['sharpe_hac_lag']}, over {chk['sharpe_periods']} periods)", H.fmt(sh, 3),
         "ok" if chk["sharpe_meets_target"] else "bad"),
        (f"Sharpe target {chk['sharpe_target']}", "met" if chk["sharpe_meets_target"] else "not met",
         "ok" if chk["sharpe_meets_target"] else "bad"),
        ("parameters", H.fmt(chk["param_count"]), "ok" if chk["param_within_tolerance"] else "bad"),
        (f"vs {chk['param_target']:,} target", H.fmt(chk["param_ratio"], 3), None),
    ])
    missing = (f'<p class="note">Missing inputs: {", ".join(rep["missing"])}</p>' if rep["missing"] else "")
    note = (f'<p class="note">Sharpe: {H.fmt(chk["sharpe_definition"])}. Every t-stat is Newey–West (HAC) with lag '
            'max(h − 1, floor(4 (n/100)^(2/9))); days with a constant prediction count as IC 0.</p>')
    secs = [H.section("summary", "Summary", summary + note + missing)]

    d = rep["data"]["model_predictions"]
    stats_rows = [(k, v) for k, v in rep["data"]["safe_stats"].items()][:40]
    rows_html = ("<h3>Rows compared (the same (Date, Code) rows for every predictor)</h3>" + _rows_table(rep["rows"])
                 + ("<h3>Rows compared at training time (metrics.json)</h3>" + _rows_table(rep["training_rows"])
                    if rep.get("training_rows") else ""))
    secs.append(H.section("data", "Data", H.table(["test predictions", "value"], [
        ("rows", d["rows"]), ("days", d["days"]), ("stocks", d["stocks"]), ("start", d["start"]), ("end", d["end"])])
        + rows_html
        + (H.table(["SafeTrainingPipeline figure", "value"], stats_rows) if stats_rows else
           '<p class="note">No SafeTrainingPipeline report behind this run\'s baseline.</p>')))

    rows = []
    for name, e in evals.items():
        for h, s in e.items():
            rows.append((f"{name} {h}d", s["ic_mean"], s["icir"], s["rank_ic_mean"], s["rank_icir"], s["rank_ic_tstat"],
                         s["hac_lag"], s["rank_ic_tstat_naive"], s["rank_ic_pos_share"], s["hit_rate"],
                         s["top_bottom_spread"], s["n_days"], s["n_constant_days"]))
    prow = [(f"{h}d", p["mean_a"], p["mean_b"], p["mean_diff"], p["t_stat"], p["hac_lag"], p["t_stat_naive"],
             p["p_value"], p["n_days"]) for h, p in paired.items()]
    secs.append(H.section("horizons", "IC and RankIC by horizon (model vs baseline)",
                          H.chart_by_horizon(evals, dpi)
                          + H.table(["", "IC", "ICIR", "RankIC", "RankICIR", "RankIC t (NW)", "HAC lag", "naive t",
                                     "RankIC>0", "hit rate", "top−bottom", "days", "constant days"], rows)
                          + "<h3>Paired test of daily RankIC (model − baseline, same rows)</h3>"
                          + (H.table(["horizon", "model", "baseline", "difference", "t-stat (NW)", "HAC lag",
                                      "naive t", "p-value", "days"], prow)
                             if prow else '<p class="note">No baseline predictions in this run.</p>')))

    bt_rows = _bt_rows(both, chk["sharpe_mode"])
    secs.append(H.section("backtest", "Backtest: ideal and realistic, cumulative net return and drawdown",
                          H.chart_equity({k: v.daily for k, v in bts.items()}, dpi)
                          + H.table(["", "Sharpe", "t (NW)", "HAC lag", "ann. return", "max DD", "turnover",
                                     "Sharpe flat cost", "Sharpe spread+impact", "susp./delist./unfilled/unpriced",
                                     "skipped orders", "dates missing/unrealised/small"], bt_rows,
                                    pct_cols=(4, 5))
                          + _realism_note(both)))
    secs.append(H.section("rank-ic", "Daily RankIC",
                          H.chart_rank_ic({k: v[h0] for k, v in daily.items() if h0 in v}, window, h0, dpi)))
    secs.append(H.section("quantiles", "Quantile returns", H.chart_quantiles(quants, dpi)))

    years = sorted({r["period"] for t in per_year.values() for r in t.to_dicts()})
    yr_rows = []
    for y in years:
        row: list[Any] = [y]
        for name in ("model", "baseline"):
            t = per_year.get(name)
            r = t.filter(pl.col("period") == y).to_dicts() if t is not None else []
            row += [r[0]["rank_ic_mean"], r[0]["rank_ic_tstat"]] if r else [None, None]
            b = bt_year.get(name)
            rb = b.filter(pl.col("year") == int(y)).to_dicts() if b is not None else []
            row += [rb[0]["net"], rb[0]["sharpe"]] if rb else [None, None]
        yr_rows.append(row)
    secs.append(H.section("per-year", "Per year", H.table(
        ["year", "model RankIC", "model t (NW)", "model net", "model Sharpe",
         "baseline RankIC", "baseline t (NW)", "baseline net", "baseline Sharpe"], yr_rows, pct_cols=(3, 7))))
    secs.append(H.section("importance", "Feature importance", H.chart_importance(importances, top, dpi)))
    secs.append(H.section("training", "Training curves", H.chart_training(curves, dpi)))
    cfg_text = rep["config"]["run"]
    secs.append(H.section("config", "Configuration",
                          f"<pre>{H.fmt(cfg_text)}</pre>" if cfg_text
                          else '<p class="note">No config.yaml in the run.</p>'))
    res = [(k, v) for k, v in {**rep["durations"], **rep["peak_memory"]}.items()]
    secs.append(H.section("resources", "Durations and memory", H.table(["figure", "value"], res) if res else
                          '<p class="note">metrics.json holds no durations or memory figures.</p>'))
    return H.page("gogooku3 run report", f"{rep['run_dir']} · created {rep['created']}", secs)
