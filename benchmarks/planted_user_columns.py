"""A market whose only signal lives in two user columns (issue 23): does the product find it, and LightGBM?

The file a user might bring (generated here, no network): a weekday panel (`data.calendar=dates`) of `--stocks`
six-digit codes over 2021-2023 with close, volume, a sector column and three numeric user columns, which the files
source turns into `x_*` features:
  x_revision   analyst revision score, AR(1) 0.9: +coef_a x its value of t on the label of t (the return t+1 -> t+2)
  x_flow       order-flow score, AR(1) 0.5: +coef_b x its value of t on the same return
  x_pe_ratio   a slow valuation column that carries nothing
Returns have factor structure (market beta, 8 sectors) and fat-tailed idiosyncratic noise, so a predictor that leans
on realised factor moves adds variance and no mean; prices carry no planted effect (no reversal, no momentum).

Runs `data import -> data build -> safe -> train` through the CLI with the packaged defaults (the product: the blend
of ATFT-GAT-FAN and LightGBM), then reads the run's one comparison (RUN/comparison.json: every predictor on the same
rows, HAC t) and prints RankIC 1d, HAC t and the paired t vs LightGBM per predictor, beside the planted columns' own
RankIC (the "oracle" here: coef_a x x_revision + coef_b x x_flow as the prediction, scored by the same scorer).

    .venv/bin/python benchmarks/planted_user_columns.py [--out DIR] [--stocks 150] [--coef-a 0.0008 --coef-b 0.0006]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from real_like_files import CASES  # the script's folder is on sys.path

log = logging.getLogger("planted_user_columns")

IMPORT = ["data=files", *CASES["panel"][2]]  # the weekday panel's import keys: dates calendar, close-only, a sector


def _ar1(rng: np.random.Generator, shape: tuple[int, int], phi: float) -> np.ndarray:
    """Unit-variance AR(1) series along axis 0."""
    x = np.empty(shape)
    x[0] = rng.normal(size=shape[1])
    s = math.sqrt(1 - phi**2)
    for t in range(1, shape[0]):
        x[t] = phi * x[t - 1] + s * rng.normal(size=shape[1])
    return x


def make_panel(path: Path, n: int, coef_a: float, coef_b: float, seed: int = 7) -> dict:
    """The CSV above; returns its facts."""
    rng = np.random.default_rng(seed)
    days = pl.date_range(dt.date(2021, 1, 1), dt.date(2023, 12, 29), "1d", eager=True)
    days = days.filter(days.dt.weekday() <= 5).to_list()
    t = len(days)
    sector = np.arange(n) % 8
    mkt = rng.normal(0.0003, 0.011, t)
    beta = np.clip(rng.normal(1.0, 0.35, n), 0.2, 2.0)
    sec = rng.normal(0.0, 0.007, (t, 8))
    eps = rng.standard_t(5, (t, n)) * 0.019 / math.sqrt(5 / 3)
    rev, flow = _ar1(rng, (t, n), 0.9), _ar1(rng, (t, n), 0.5)
    r = mkt[:, None] * beta[None, :] + sec[:, sector] + eps
    r[2:] += coef_a * rev[:-2] + coef_b * flow[:-2]  # the user columns of t move the return t+1 -> t+2
    px = rng.uniform(5, 80, n)[None, :] * np.exp(np.cumsum(np.log1p(r), axis=0))
    pe = np.exp(_ar1(rng, (t, n), 0.99) * 0.4) * 15.0
    df = pl.DataFrame(
        {
            "date": np.repeat(np.array(days, dtype="datetime64[D]"), n),
            "code": [f"{700000 + 11 * j:06d}" for j in range(n)] * t,
            "sector": [f"sec{s}" for s in sector] * t,
            "close": px.ravel().round(4),
            "volume": np.round(rng.lognormal(12, 0.6, px.size)),
            "revision": rev.ravel().round(5),
            "flow": flow.ravel().round(5),
            "pe_ratio": pe.ravel().round(3),
        }
    )
    df.write_csv(path)
    return {"days": t, "stocks": n, "coef_revision": coef_a, "coef_flow": coef_b}


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "gogooku3.cli", *args]
    log.info("$ gogooku3 %s", " ".join(args))
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    log.info("  -> rc %d in %.1f s", p.returncode, time.perf_counter() - t0)
    if p.returncode != 0:
        raise SystemExit(f"gogooku3 {' '.join(args)} failed:\n{p.stderr[-3000:]}")
    return p


def planted_score(run: Path, coef_a: float, coef_b: float) -> dict:
    """The planted columns' combination scored by the project's one scorer on the product's test rows."""
    from gogooku3.core import columns as C
    from gogooku3.evaluation.compare import compare
    from gogooku3.features.published import dataset_files

    comp = json.loads((run / "comparison.json").read_text())
    product = comp["product"]
    rows = pl.read_parquet(run / "predictions" / product / "test.parquet")
    ds = pl.scan_parquet(dataset_files(json.loads((run / "dataset.json").read_text())["path"]))
    x = ds.select(C.DATE, C.CODE, "x_revision", "x_flow").collect()
    planted = rows.join(x, on=[C.DATE, C.CODE], how="left").with_columns(
        (coef_a * pl.col("x_revision") + coef_b * pl.col("x_flow")).alias(C.pred(1))
    )
    folds = {0: sorted(set(rows[C.DATE].to_list()))}
    frames = {product: rows, "planted": planted.select(rows.columns)}
    res, _ = compare(frames, [1], folds, product=product, reference="planted")
    return res.pooled["planted"]["1"]


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--stocks", type=int, default=150)
    ap.add_argument("--coef-a", type=float, default=0.0008, help="x_revision's coefficient on the label's return")
    ap.add_argument("--coef-b", type=float, default=0.0006, help="x_flow's coefficient")
    ap.add_argument("train", nargs="*", help="extra key=value overrides of `train` (e.g. train.max_epochs=2)")
    a = ap.parse_args()
    work = a.out or Path(tempfile.mkdtemp(prefix="planted_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    facts = make_panel(work / "panel.csv", a.stocks, a.coef_a, a.coef_b)
    _cli(["data", "import", "panel.csv", *IMPORT], work)
    _cli(["data", "build"], work)
    manifest = json.loads((work / "output" / "ml_dataset_latest.manifest.json").read_text())
    users = [f for f in manifest["features"] if str(f.get("name", f)).startswith("x_")]
    _cli(["safe"], work)
    _cli(["train", *a.train], work)
    run = (work / "runs" / "last").resolve()
    comp = json.loads((run / "comparison.json").read_text())
    out = {
        **facts,
        "user_features": [str(f.get("name", f)) for f in users],
        "product": comp["product"],
        "test_days": comp["pooled"][comp["product"]]["1"]["n_days"],
        "seconds": round(time.perf_counter() - t0, 1),
        "predictors": {
            name: {
                "rank_ic_1d": round(ev["1"]["rank_ic_mean"], 4),
                "rank_ic_sd": round(ev["1"]["rank_ic_std"], 4),
                "hac_t": round(ev["1"]["rank_ic_tstat"], 2),
                "paired_t_vs_lightgbm": None
                if name == "lightgbm"
                else round(comp["paired"].get(f"{name}_vs_lightgbm", {}).get("1", {}).get("t_stat", float("nan")), 2),
            }
            for name, ev in comp["pooled"].items()
        },
    }
    p = planted_score(run, a.coef_a, a.coef_b)
    out["planted_columns"] = {
        "rank_ic_1d": round(p["rank_ic_mean"], 4),
        "rank_ic_sd": round(p["rank_ic_std"], 4),
        "hac_t": round(p["rank_ic_tstat"], 2),
    }
    (work / "results.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
