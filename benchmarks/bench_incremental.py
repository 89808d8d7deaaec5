"""Benchmark of the daily incremental update (`gogooku3 data build --incremental`) against a full build.

The synthetic market (default 4,000 stocks × 1,250 days; raw tables kept in --raw-dir and shared with
bench_build.py) is cut `--new` sessions before its end as a vendor would have published it then (adjusted columns
with only the splits known at the cut); every step runs in a fresh subprocess, so each peak RSS is its own:
  old      full build of the cut tables (the existing dataset)
  update   `update_dataset` on the full tables: the new sessions appended to the old dataset
  full     full build of the full tables (what the update must equal)
  check    the two datasets compared chunk by chunk (every column, bit for bit; --no-check skips it), and each
           monthly partition file's bytes (the update's written months vs the rebuild's; linked months as well)
  predict  with --predict-run RUN: `gogooku3 predict` of the new day on the updated dataset (RUN: a trained run whose
           features config is the dataset's, e.g. a small market built and trained with the defaults)

    .venv/bin/python benchmarks/bench_incremental.py [--stocks N --days D --new K] [--raw-dir DIR] [--predict-run RUN]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench_build import BUILD, child, ensure_raw  # the script's folder is on sys.path

CUT = """
import json, sys
from pathlib import Path
import polars as pl
from gogooku3.sources.schema import write_table
raw, out, new = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
dates = pl.scan_parquet(raw / "daily_quotes.parquet").select("Date").unique().collect()["Date"].sort()
t = dates[-1 - new]
keep = {"topix": "Date", "listed_info": "Date", "statements": "DiscDate", "investor_types": "PubDate",
        "margin_interest": "PubDate", "trading_calendar": None}
for p in sorted(raw.glob("*.parquet")):
    name = p.stem
    if name == "daily_quotes":
        after = (pl.col("AdjFactor").reverse().cum_prod().reverse().shift(-1).fill_null(1.0)).over("Code")
        df = (pl.scan_parquet(p).filter(pl.col("Date") <= t).sort("Code", "Date").with_columns(after.alias("_p"))
              .with_columns(*[(pl.col(x) * pl.col("_p")).alias(f"Adj{x}") for x in ("O", "H", "L", "C")],
                            (pl.col("Vo") / pl.col("_p")).alias("AdjVo")).drop("_p").collect())
    else:
        df = pl.read_parquet(p)
        if keep.get(name):
            df = df.filter(pl.col(keep[name]) <= t)
    write_table(df, out, name)
print(json.dumps({"cut": str(t)}))
"""

UPDATE = """
import json, resource, sys, time, logging
from gogooku3.config.compose import load_config
from gogooku3.features.incremental import update_dataset
from gogooku3.core.io import peak_rss_mb
logging.basicConfig(level=logging.WARNING)
raw, out = sys.argv[1], sys.argv[2]
cfg = load_config([f"paths.raw_dir={raw}", f"paths.output_dir={out}", f"paths.dataset={out}/ml_dataset_latest.parquet"])
cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))
c0, t0 = cpu(), time.perf_counter()
res = update_dataset(cfg)
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "rows": res.rows,
                  "cpu_s": cpu() - c0, "path": str(res.path), "partitions": res.metadata["partitions"],
                  **res.metadata["incremental"]}))
"""

PREDICT = """
import json, resource, sys, time, logging
from gogooku3.config.compose import load_config
from gogooku3.pipelines.predict import predict
from gogooku3.core.io import peak_rss_mb
logging.basicConfig(level=logging.WARNING)
out, run = sys.argv[1], sys.argv[2]
cfg = load_config([f"paths.output_dir={out}", f"paths.dataset={out}/ml_dataset_latest.parquet"])
cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))
c0, t0 = cpu(), time.perf_counter()
path = predict(cfg, run)
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_s": cpu() - c0, "peak_rss_mb": peak_rss_mb(),
                  "path": str(path)}))
"""

BYTES = """
import hashlib, json, sys
from pathlib import Path
from gogooku3.features.published import dataset_files, resolve
a, b = resolve(sys.argv[1]), resolve(sys.argv[2])
h = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
fa, fb = {f.name: f for f in dataset_files(a)}, {f.name: f for f in dataset_files(b)}
same = sorted(n for n in fa if n in fb and h(fa[n]) == h(fb[n]))
print(json.dumps({"partitions": len(fb), "same_names": sorted(fa) == sorted(fb), "bytes_identical": len(same),
                  "bytes_differ": sorted(set(fb) - set(same))}))
"""

CHECK = """
import json, sys
import polars as pl
a, b = sys.argv[1], sys.argv[2]
# Stated tolerance (docs/scale.md): bit-identical, except values computed from a zero-variance or tied window,
# where Polars' running-sum rolling windows carry rounding of the stock's earlier history: there |d| <= 1e-3 *
# max(1, |x|), and realized_volatility may be 0 in one build and null (sqrt of a -1e-21 residue) in the other.
ATOL_REL = 1e-3
codes = pl.scan_parquet(b).select("Code").unique().collect()["Code"].sort().to_list()
diff, rows = {}, 0
for i in range(0, len(codes), 400):
    lo, hi = codes[i], codes[min(i + 399, len(codes) - 1)]
    sel = lambda p: pl.scan_parquet(p).filter((pl.col("Code") >= lo) & (pl.col("Code") <= hi)).collect()
    x, y = sel(a), sel(b)
    rows += y.height
    if x.columns != y.columns or x.height != y.height or not x.select("Code", "Date").equals(y.select("Code", "Date")):
        diff["rows"] = {"outside_tolerance": 1}
        continue
    for n in y.columns:
        if x[n].equals(y[n]):
            continue
        d = diff.setdefault(n, {"values": 0, "null_mismatch": 0, "max_abs": 0.0, "max_rel": 0.0,
                                "outside_tolerance": 0, "stocks": set()})
        if not x[n].dtype.is_float():
            d["outside_tolerance"] += int((x[n] != y[n]).fill_null(True).sum())
            continue
        u, v = x[n].cast(pl.Float64), y[n].cast(pl.Float64)
        nulls = u.is_null() != v.is_null()
        neq = (u != v).fill_null(False)
        e = (u - v).abs()
        d["values"] += int(neq.sum())
        d["null_mismatch"] += int(nulls.sum())
        d["stocks"] |= set(y.filter(neq | nulls)["Code"].to_list())
        ok_null = (n == "realized_volatility") & (u.fill_null(0.0) == 0.0) & (v.fill_null(0.0) == 0.0)
        d["outside_tolerance"] += int((neq & (e > ATOL_REL * v.abs().clip(lower_bound=1.0))).sum())
        d["outside_tolerance"] += int((nulls & ~ok_null).sum())
        if neq.any():
            d["max_abs"] = max(d["max_abs"], float(e.filter(neq).max()))
            d["max_rel"] = max(d["max_rel"], float((e / v.abs()).filter(neq).max()))
for d in diff.values():
    d["stocks"] = len(d.get("stocks", ()))
print(json.dumps({"rows_compared": rows, "values_compared": rows * (len(y.columns) - 2),
                  "differing_columns": diff,
                  "within_tolerance": all(d["outside_tolerance"] == 0 for d in diff.values())}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stocks", type=int, default=4000)
    ap.add_argument("--days", type=int, default=1250)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--new", type=int, default=1, help="sessions appended by the update")
    ap.add_argument("--raw-dir", type=Path, default=None, help="the full market's raw tables (kept and reused)")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--predict-run", type=Path, default=None, help="a trained run: time `predict` of the new day")
    ap.add_argument("--work", type=Path, default=None, help="keep the datasets here (default: a temp dir, removed)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_incremental_") as tmp:
        tmp = a.work or Path(tmp)
        raw = a.raw_dir or tmp / "raw"
        ensure_raw(raw, a.stocks, a.days, a.seed)
        cut = child(CUT, str(raw), str(tmp / "old_raw"), str(a.new))
        old = child(BUILD, str(tmp / "old_raw"), str(tmp / "out"))
        load = os.getloadavg()[0]
        upd = child(UPDATE, str(raw), str(tmp / "out"))
        full = child(BUILD, str(raw), str(tmp / "full"))
        pred = child(PREDICT, str(tmp / "out"), str(a.predict_run)) if a.predict_run else None
        report = {
            "stocks": a.stocks,
            "days": a.days,
            "new_sessions": a.new,
            "cut": cut["cut"],
            "old_build_s": round(old["seconds"], 2),
            "old_build_peak_rss_mb": round(old["peak_rss_mb"]),
            "update_s": round(upd["seconds"], 2),
            "update_cpu_s": round(upd["cpu_s"], 2),
            "update_peak_rss_mb": round(upd["peak_rss_mb"]),
            "update_over_full_build": round(upd["seconds"] / full["seconds"], 3),
            "update_phases_s": upd["phase_seconds"],
            "partitions": upd["partitions"],
            "partitions_linked": upd["partitions_linked"],
            "rows": upd["rows"],
            "recomputed_rows": upd["recomputed_rows"],
            "recomputed_from": upd["recomputed_from"],
            "warmup_from": upd["warmup_from"],
            "full_build_s": round(full["seconds"], 2),
            "full_build_cpu_s": round(full["cpu_s"], 2),
            "full_build_peak_rss_mb": round(full["peak_rss_mb"]),
            "load_avg_1m": {"before_update": round(load, 2), "after": round(os.getloadavg()[0], 2)},
        }
        if pred:
            report["predict"] = {k: round(v, 2) for k, v in pred.items() if k != "path"}
        if not a.no_check:
            report |= child(CHECK, upd["path"], full["path"])
            report["partition_bytes"] = child(BYTES, upd["path"], full["path"])
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
