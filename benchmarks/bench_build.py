"""Benchmark of the dataset builder: `build_dataset` on the synthetic market (default 4,000 stocks × 1,250 days).

Every step runs in a fresh subprocess, so each peak RSS is that step's alone:
  synth    `simulate_market` + writing the raw tables (skipped when --raw-dir already holds them)
  build    `gogooku3.features.builder.build_dataset` (read + validate + features + write + metadata)
  io floor reading every raw table and writing a dataset-sized parquet (the built one, re-written; --floor)
Targets: build ≤ 60 s, ≤ 8 GB peak RSS.

    .venv/bin/python benchmarks/bench_build.py [--stocks N --days D] [--chunk-rows R] [--raw-dir DIR] [--floor]

`--chunk-rows 0` forces the one-shot build (the whole frame in memory); the default is the config's
`features.chunk_rows`. The machine may be shared: the report carries the 1-minute load average before and after,
and the build's CPU time (less sensitive to load than wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYNTH = """
import json, sys, time
from pathlib import Path
from gogooku3.core.io import peak_rss_mb
from gogooku3.sources.schema import write_table
from gogooku3.sources.synthetic import SynthParams, simulate_market
raw, stocks, days, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
tables = simulate_market(SynthParams(n_stocks=stocks, n_days=days, seed=seed))
rows = tables["daily_quotes"].height
for name, df in tables.items():
    if name != "oracle":
        write_table(df, raw, name)
print(json.dumps({"seconds": time.perf_counter() - t0, "quote_rows": rows, "peak_rss_mb": peak_rss_mb()}))
"""

BUILD = """
import json, resource, sys, time, logging
from gogooku3.config.compose import load_config
from gogooku3.features.builder import build_dataset
from gogooku3.core.io import peak_rss_mb
logging.basicConfig(level=logging.WARNING)
raw, out, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
cfg = load_config([f"paths.raw_dir={raw}", f"paths.output_dir={out}",
                   f"paths.dataset={out}/ml_dataset_latest.parquet", *extra])
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
from gogooku3.features.writer import PARQUET
from gogooku3.core.io import peak_rss_mb, write_parquet
raw = Path(sys.argv[1]); dataset = sys.argv[2]; tmp = Path(sys.argv[3])
t0 = time.perf_counter()
tables = {p.stem: pl.read_parquet(p) for p in sorted(raw.glob("*.parquet"))}
t_read = time.perf_counter() - t0
df = pl.read_parquet(dataset)
t1 = time.perf_counter()
write_parquet(df, tmp / "floor.parquet", **PARQUET)  # the builder's own parquet settings
t_write = time.perf_counter() - t1
print(json.dumps({"read_raw_s": t_read, "write_dataset_s": t_write, "floor_s": t_read + t_write,
                  "peak_rss_mb": peak_rss_mb()}))
"""


def child(code: str, *args: str) -> dict:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"child failed with exit code {out.returncode}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0  # includes interpreter start and imports
    return res


def ensure_raw(raw: Path, stocks: int, days: int, seed: int) -> dict:
    """Synthesise the market into `raw` unless it is already there (a `done.json` marks a complete write)."""
    done = raw / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    if raw.exists():
        shutil.rmtree(raw)
    res = child(SYNTH, str(raw), str(stocks), str(days), str(seed))
    done.write_text(json.dumps(res))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stocks", type=int, default=4000)
    ap.add_argument("--days", type=int, default=1250)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--chunk-rows", type=int, default=None, help="features.chunk_rows (0: one-shot build)")
    ap.add_argument(
        "--raw-dir",
        type=Path,
        default=None,
        help="keep the synthetic raw tables here and reuse them on the next run (default: a temp dir)",
    )
    ap.add_argument("--floor", action="store_true", help="also measure the I/O floor")
    a = ap.parse_args()
    extra = [] if a.chunk_rows is None else [f"features.chunk_rows={a.chunk_rows}"]
    with tempfile.TemporaryDirectory(prefix="bench_build_") as tmp:
        raw = a.raw_dir or Path(tmp) / "raw"
        synth = ensure_raw(raw, a.stocks, a.days, a.seed)
        load_before = os.getloadavg()[0]
        build = child(BUILD, str(raw), str(Path(tmp) / "out"), *extra)
        report = {
            "stocks": a.stocks,
            "days": a.days,
            "quote_rows": synth["quote_rows"],
            "synth_s": round(synth["seconds"], 1),
            "chunk_rows": a.chunk_rows,
            "build_s": round(build["seconds"], 2),
            "build_wall_s": round(build["wall_s"], 2),
            "build_cpu_s": round(build["cpu_s"], 2),
            "build_peak_rss_mb": round(build["peak_rss_mb"]),
            "rows": build["rows"],
            "features": build["features"],
            "load_avg_1m": {"before_build": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
            "targets": {"build_s<=60": build["seconds"] <= 60, "rss_mb<=8192": build["peak_rss_mb"] <= 8192},
        }
        if a.floor:
            floor = child(FLOOR, str(raw), build["path"], tmp)
            report |= {
                "io_floor_s": round(floor["floor_s"], 2),
                "io_read_raw_s": round(floor["read_raw_s"], 2),
                "io_write_dataset_s": round(floor["write_dataset_s"], 2),
                "io_floor_peak_rss_mb": round(floor["peak_rss_mb"]),
            }
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
