"""Benchmark of the dataset builder: `build_dataset` on the synthetic market (default 4,000 stocks × 1,250 days).

Writes the raw tables to a temporary directory, then measures in fresh subprocesses (so peak RSS is the step's alone):
  build    `gogooku3.features.builder.build_dataset` (read + validate + features + write + metadata)
  io floor reading every raw table and writing a dataset-sized parquet (the built one, re-written)
Targets: build ≤ 60 s, ≤ 8 GB peak RSS.  Usage: .venv/bin/python benchmarks/bench_build.py [--stocks N --days D]
The machine may be shared: the report carries the 1-minute load average before and after, and the build's CPU time
(less sensitive to load than wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILD = """
import json, resource, sys, time, logging
from gogooku3.config import load_config
from gogooku3.features.builder import build_dataset
from gogooku3.io import peak_rss_mb
logging.basicConfig(level=logging.WARNING)
root = sys.argv[1]
cfg = load_config([f"paths.raw_dir={root}/raw", f"paths.output_dir={root}/out",
                   f"paths.dataset={root}/out/ml_dataset_latest.parquet"])
cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))
c0, t0 = cpu(), time.perf_counter()
res = build_dataset(cfg)
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "rows": res.rows,
                  "cpu_s": cpu() - c0,
                  "features": res.n_features, "path": str(res.path), "groups": res.group_counts}))
"""

FLOOR = """
import json, sys, time
from pathlib import Path
import polars as pl
from gogooku3.features.builder import PARQUET
from gogooku3.io import peak_rss_mb, write_parquet
root = Path(sys.argv[1]); dataset = sys.argv[2]
t0 = time.perf_counter()
raw = {p.stem: pl.read_parquet(p) for p in sorted((root / "raw").glob("*.parquet"))}
t_read = time.perf_counter() - t0
df = pl.read_parquet(dataset)
t1 = time.perf_counter()
write_parquet(df, root / "floor.parquet", **PARQUET)  # the builder's own parquet settings
t_write = time.perf_counter() - t1
print(json.dumps({"read_raw_s": t_read, "write_dataset_s": t_write, "floor_s": t_read + t_write,
                  "peak_rss_mb": peak_rss_mb()}))
"""


def child(code: str, *args: str) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0  # includes interpreter start and imports
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stocks", type=int, default=4000)
    ap.add_argument("--days", type=int, default=1250)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    from gogooku3.sources.schema import write_table
    from gogooku3.sources.synthetic import SynthParams, simulate_market

    with tempfile.TemporaryDirectory(prefix="bench_build_") as tmp:
        t0 = time.perf_counter()
        tables = simulate_market(SynthParams(n_stocks=a.stocks, n_days=a.days, seed=a.seed))
        for name, df in tables.items():
            if name != "oracle":
                write_table(df, Path(tmp) / "raw", name)
        quote_rows = tables["daily_quotes"].height
        del tables
        prep = time.perf_counter() - t0
        load_before = os.getloadavg()[0]
        build = child(BUILD, tmp)
        floor = child(FLOOR, tmp, build["path"])
        report = {"stocks": a.stocks, "days": a.days, "quote_rows": quote_rows, "prepare_s": round(prep, 1),
                  "build_s": round(build["seconds"], 2), "build_wall_s": round(build["wall_s"], 2),
                  "build_cpu_s": round(build["cpu_s"], 2), "build_peak_rss_mb": round(build["peak_rss_mb"]),
                  "rows": build["rows"],
                  "features": build["features"], "io_floor_s": round(floor["floor_s"], 2),
                  "io_read_raw_s": round(floor["read_raw_s"], 2),
                  "io_write_dataset_s": round(floor["write_dataset_s"], 2),
                  "io_floor_peak_rss_mb": round(floor["peak_rss_mb"]),
                  "load_avg_1m": {"before_build": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
                  "targets": {"build_s<=60": build["seconds"] <= 60, "rss_mb<=8192": build["peak_rss_mb"] <= 8192}}
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
