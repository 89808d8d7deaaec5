"""Real-like user files through the whole pipeline (issue 15's "Done when"), offline and on the CPU.

Three files a user might bring, generated here (no network):
  close30   close-only daily file, XNYS sessions 1993-2022, 20 names (tickers with dots, lower case; names list
            and delist), a weak short-term reversal planted in the returns (what the label of t can see)
  splits    one year of raw OHLCV (XNYS 2022) for 50 names, two planted unadjusted splits (1:2 and 1:4),
            imported with `data.adjust_splits=adjust`
  panel     a business-day panel (every Mon-Fri, holidays included: `data.calendar=dates`) of 40 six-digit codes with
            a sector column and two extra numeric user columns (one carries a little signal)

Each runs `data import -> data build -> safe -> train (1 epoch, tiny model) -> backtest -> report -> predict` through
the CLI in its own directory, with no key beyond those the errors name (the split keys proposed by the walk-forward
message for the one-year file). Printed per file: features in the manifest and kept by `safe`, 1-day RankIC of the
model and of the LightGBM baseline on the test span with a Newey-West (HAC) t, and the backtest Sharpe of both.

Usage: .venv/bin/python benchmarks/real_like_files.py [--out DIR] [--only close30,splits,panel]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

log = logging.getLogger("real_like_files")

TINY = [
    "model.window=10",
    "model.hidden=16",
    "model.head_hidden=8",
    "model.graph.window=10",
    "model.graph.min_obs=5",
    "train.max_epochs=1",
    "train.limit_train_batches=16",
    "train.warmup_steps=2",
    "trainer.progress_bar=false",
    "train.ensemble=1",
    "trainer.num_threads=2",
]
TICKERS = [
    "AAPL",
    "MSFT",
    "IBM",
    "KO",
    "PG",
    "JNJ",
    "XOM",
    "GE",
    "BRK.B",
    "wmt",
    "MRK",
    "PFE",
    "T",
    "INTC",
    "CSCO",
    "ORCL",
    "JPM",
    "BAC",
    "MMM",
    "hd",
]


def _xnys(start: str, end: str) -> list[dt.date]:
    from gogooku3.core.calendar import TradingCalendar

    return TradingCalendar.from_exchange("XNYS", start, end).sessions.to_list()


def _paths(
    rng: np.random.Generator, n_days: int, n: int, vol: float = 0.018, reversal: float = 0.06
) -> tuple[np.ndarray, np.ndarray]:
    """Daily returns [T, N] (market factor + idiosyncratic, a little reversal of the idiosyncratic move two sessions
    back: the label of t is the return from t+1 to t+2 with `labels.entry_lag=1`) and the price paths."""
    mkt = rng.normal(0.0003, 0.010, n_days)
    beta = rng.uniform(0.6, 1.4, n)
    eps = rng.standard_t(5, (n_days, n)) * vol / math.sqrt(5 / 3)
    r = mkt[:, None] * beta[None, :] + eps
    r[2:] -= reversal * eps[:-2]
    return r, 20.0 * rng.uniform(1, 10, n)[None, :] * np.exp(np.cumsum(np.log1p(r), axis=0))


def close_only_30y(path: Path, seed: int = 0) -> dict:
    """Date, Ticker, Close: adjusted closes on XNYS sessions 1993-2022; a few names start late or stop early."""
    rng = np.random.default_rng(seed)
    days = _xnys("1993-01-04", "2022-12-30")
    n = len(TICKERS)
    _, px = _paths(rng, len(days), n)
    start = np.zeros(n, dtype=int)
    stop = np.full(n, len(days))
    start[[3, 11]] = [1500, 4000]  # listed later
    stop[[7, 15]] = [6000, 7000]  # delisted
    frames = [
        pl.DataFrame(
            {"Date": days[start[i] : stop[i]], "Ticker": TICKERS[i], "Close": np.round(px[start[i] : stop[i], i], 4)}
        )
        for i in range(n)
    ]
    pl.concat(frames).sort("Date", "Ticker").write_csv(path)
    return {"rows": sum(f.height for f in frames), "days": len(days)}


def raw_ohlcv_with_splits(path: Path, seed: int = 1) -> dict:
    """date, symbol, open, high, low, close, volume (raw, unadjusted) for 50 names over XNYS 2022; two splits
    (1:2 and 1:4) are in the raw prices with no factor."""
    rng = np.random.default_rng(seed)
    days = _xnys("2022-01-03", "2022-12-30")
    n = 50
    r, px = _paths(rng, len(days), n)
    vol = rng.lognormal(13, 0.4, (len(days), n))
    splits = {7: (120, 2.0), 23: (170, 4.0)}  # name -> (ex-date row, shares per old share)
    k = np.ones((len(days), n))
    for j, (row, ratio) in splits.items():
        k[:row, j] = ratio  # raw before the split = adjusted × ratio
    close = px * k
    opn = close / (1 + r * rng.uniform(0.2, 0.6, (len(days), n)))
    opn[splits[7][0], 7] = close[splits[7][0] - 1, 7] / 2 * (1 + r[splits[7][0], 7] * 0.3)
    opn[splits[23][0], 23] = close[splits[23][0] - 1, 23] / 4 * (1 + r[splits[23][0], 23] * 0.3)
    hi = np.maximum(opn, close) * (1 + np.abs(rng.normal(0, 0.006, close.shape)))
    lo = np.minimum(opn, close) * (1 - np.abs(rng.normal(0, 0.006, close.shape)))
    volume = np.round(vol / k)
    codes = [f"S{j:02d}" for j in range(n)]
    df = pl.DataFrame(
        {
            "date": np.repeat(np.array(days, dtype="datetime64[D]"), n),
            "symbol": codes * len(days),
            "open": opn.ravel().round(4),
            "high": hi.ravel().round(4),
            "low": lo.ravel().round(4),
            "close": close.ravel().round(4),
            "volume": volume.ravel(),
        }
    )
    df.write_csv(path)
    return {"splits": [(codes[j], str(days[row]), f"1:{int(ratio)}") for j, (row, ratio) in splits.items()]}


def business_day_panel(path: Path, seed: int = 2) -> dict:
    """date, code (6-digit text), sector, close, volume, pe_ratio, sentiment on every weekday 2020-2022."""
    rng = np.random.default_rng(seed)
    days = pl.date_range(dt.date(2020, 1, 1), dt.date(2022, 12, 30), "1d", eager=True)
    days = days.filter(days.dt.weekday() <= 5).to_list()
    n = 40
    r, px = _paths(rng, len(days), n, reversal=0.0)
    senti = rng.normal(size=(len(days), n))
    r[2:] += 0.003 * senti[:-2]  # sentiment of t moves the return from t+1 to t+2 (the label of t) a little
    px = 20.0 * np.exp(np.cumsum(np.log1p(r), axis=0))
    codes = [f"{600000 + 7 * j:06d}" for j in range(n)]
    df = pl.DataFrame(
        {
            "date": np.repeat(np.array(days, dtype="datetime64[D]"), n),
            "code": codes * len(days),
            "sector": [f"sec{j % 5}" for j in range(n)] * len(days),
            "close": px.ravel().round(4),
            "volume": np.round(rng.lognormal(12, 0.5, px.size)),
            "pe_ratio": rng.uniform(5, 40, px.size).round(2),
            "sentiment": senti.ravel().round(4),
        }
    )
    df.write_csv(path)
    return {"days": len(days)}


CASES = {
    "close30": (
        close_only_30y,
        "close30.csv",
        [
            "data.calendar=XNYS",
            "data.columns.code=Ticker",
            "data.columns.open=null",
            "data.columns.high=null",
            "data.columns.low=null",
            "data.columns.volume=null",
        ],
        [],
    ),
    "splits": (
        raw_ohlcv_with_splits,
        "splits.csv",
        [
            "data.calendar=XNYS",
            "data.adjust_splits=adjust",
            "data.columns.date=date",
            "data.columns.code=symbol",
            "data.columns.open=open",
            "data.columns.high=high",
            "data.columns.low=low",
            "data.columns.close=close",
            "data.columns.volume=volume",
        ],
        None,
    ),
    "panel": (
        business_day_panel,
        "panel.csv",
        [
            "data.calendar=dates",
            "data.columns.date=date",
            "data.columns.code=code",
            "data.columns.close=close",
            "data.columns.volume=volume",
            "data.columns.open=null",
            "data.columns.high=null",
            "data.columns.low=null",
            "data.columns.sector=sector",
        ],
        [],
    ),
}


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gogooku3.cli", *args]
    log.info("$ gogooku3 %s", " ".join(args))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**_env(), "COLUMNS": "200"}, check=False)
    log.info("  -> rc %d in %.1f s", p.returncode, time.perf_counter() - t0)
    return p


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "COLUMNS"}


def proposed_split_keys(stderr: str) -> list[str]:
    """The `key=value` settings a walk-forward 'too few dates' error proposes (its first proposal)."""
    import re

    m = re.search(r"set ((?:split\.\w+=\w+ ?)+)", stderr)
    return m.group(1).split() if m else []


def run_case(name: str, root: Path) -> dict:
    make, fname, import_keys, split_keys = CASES[name]
    work = root / name
    work.mkdir(parents=True, exist_ok=True)
    facts = make(work / fname)
    out: dict = {"case": name, "file": str(work / fname), **facts}

    def step(args: list[str]) -> subprocess.CompletedProcess:
        p = _cli(args, work)
        if p.returncode != 0:
            raise SystemExit(f"{name}: gogooku3 {' '.join(args)} failed:\n{p.stderr[-3000:]}")
        return p

    imp = step(["data", "import", fname, "data=files", *import_keys])
    out["import_warnings"] = [ln.strip() for ln in (imp.stdout + imp.stderr).splitlines() if "WARNING" in ln][:4]
    step(["data", "build"])
    manifest = json.loads((work / "output" / "ml_dataset_latest.manifest.json").read_text())
    out["features_manifest"] = manifest["n_features"]
    out["notes"] = manifest.get("notes", {})
    keys = list(split_keys or [])
    if split_keys is None:  # ask safe first: its error proposes the split keys that fit this dataset
        p = _cli(["safe"], work)
        keys = proposed_split_keys(p.stderr) if p.returncode else []
        out["split_keys_from_error"] = keys
    step(["safe", *keys])
    safe = json.loads(max((work / "output" / "experiments").glob("safe_*.json")).read_text())
    out["features_kept"] = safe["step2_features"]["n_features"]
    out["graph_ranked_by"] = safe["step6_graph"].get("ranked_by")
    step(["train", *keys, *TINY])
    run = (work / "runs" / "last").resolve()
    comp = json.loads((run / "comparison.json").read_text())  # the run's one scorer: same rows, HAC t
    for who, name in (("model", "atft"), ("baseline", "lightgbm")):
        ev = comp["pooled"][name]["1"]
        out[f"rank_ic_{who}"] = round(ev["rank_ic_mean"], 4)
        out[f"hac_t_{who}"] = round(ev["rank_ic_tstat"], 2)
        out[f"test_days_{who}"] = ev["n_days"]
        step(["backtest", "--predictions", str(run / "predictions" / name / "test.parquet")])
        rep = json.loads(max((work / "output" / "portfolio").glob("report_*.json")).read_text())
        out[f"sharpe_{who}"] = _sharpe(rep)
    step(["report", "--run", "runs/last", *keys])
    step(["predict", "--run", "runs/last", *keys])
    preds = sorted((work / "output" / "predictions").glob("pred_*.parquet"))
    pr = pl.read_parquet(preds[-1])
    out["predicted_codes"] = pr.height
    out["codes_sample"] = pr["Code"].head(4).to_list()
    return out


def _sharpe(rep: dict) -> float | None:
    """The backtest's headline net Sharpe (`summary.sharpe` of the portfolio report)."""
    v = (rep.get("summary") or {}).get("sharpe")
    return round(float(v), 2) if isinstance(v, (int, float)) else None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--only", default=",".join(CASES), help="comma-separated cases")
    a = ap.parse_args()
    import tempfile

    root = a.out or Path(tempfile.mkdtemp(prefix="real_like_"))
    results = []
    for name in a.only.split(","):
        t0 = time.perf_counter()
        res = run_case(name, root)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        results.append(res)
        log.info("%s", json.dumps(res, indent=1, default=str))
    (root / "results.json").write_text(json.dumps(results, indent=1, default=str))
    log.info(
        "%-8s %9s %5s %14s %14s %7s %7s",
        "case",
        "features",
        "kept",
        "RankIC model(t)",
        "RankIC base(t)",
        "Sh mod",
        "Sh base",
    )
    for r in results:
        log.info(
            "%-8s %9d %5d %8.4f (%4.1f) %8.4f (%4.1f) %7s %7s",
            r["case"],
            r["features_manifest"],
            r["features_kept"],
            r["rank_ic_model"],
            r["hac_t_model"],
            r["rank_ic_baseline"],
            r["hac_t_baseline"],
            r["sharpe_model"],
            r["sharpe_baseline"],
        )
    log.info("results in %s", root / "results.json")


if __name__ == "__main__":
    main()
