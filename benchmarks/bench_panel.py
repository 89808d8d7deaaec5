"""Benchmark of the PanelStore conversion (dataset parquet -> memory-mapped panel) and of the training side's memory.

Every step runs in a fresh subprocess, so each peak RSS is that step's alone:
  data      `gogooku3 data synth` + `gogooku3 data build` into --data-dir (skipped when it already holds a dataset,
            or with --dataset)
  floor     the I/O floor: read the panel's columns of the dataset (streamed, discarded) + write files of the
            panel's size (sequential writes of one 64 MB buffer, no fsync, as the conversion writes)
  convert   `PanelStore.convert`, what `train` runs once per dataset × normalizer (peak RSS, CPU, blocks)
  one-shot  (--one-shot) `PanelStore.from_frame` on the collected frame: the in-memory profile the file mode had
  before (same kernels); --before REV runs REV's own panel.py/normalize.py one-shot path instead
  train     `PanelStore.load` + `PanelDataModule` + --batches training day batches gathered (window 60, 2,048
            stocks a day): peak RSS, split into anonymous memory and mapped panel pages (page cache the kernel may
            drop; it is what the memory map shares between processes)

    .venv/bin/python benchmarks/bench_panel.py [--stocks 4000 --days 1250] [--data-dir DIR | --dataset PATH]
        [--block-mb MB] [--batches N] [--day-level time_z] [--skip-floor] [--one-shot | --before REV]

Target (issue 14): conversion within 2x its I/O floor; training memory flat in the number of days. The machine may
be shared: the report carries the 1-minute load average before and after each step, and CPU seconds.
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

ROOT = Path(__file__).resolve().parents[1]

COLUMNS = """
import json, sys
from gogooku3.core import columns as C
from gogooku3.features.manifest import FeatureManifest
def panel_columns(ds, returns_col="returns_1d"):
    m = FeatureManifest.for_dataset(ds)
    return m.names, list(m.horizons), ["Code", "Date", "Section", "S33", returns_col, *m.names,
                                       *[C.target(h) for h in m.horizons]]
"""

FLOOR = (
    COLUMNS
    + """
import os, time
import numpy as np, polars as pl
from gogooku3.core.io import peak_rss_mb
ds, tmp = sys.argv[1], sys.argv[2]
feats, hs, cols = panel_columns(ds)
lf = pl.scan_parquet(ds)
cols = list(dict.fromkeys(c for c in cols if c in lf.collect_schema()))
t0 = time.perf_counter()
rows = 0
for b in lf.select(cols).collect_batches():
    rows += b.height
read_s = time.perf_counter() - t0
keys = lf.select(pl.col("Code").n_unique(), pl.col("Date").n_unique()).collect()
N, D, F, H = int(keys[0, 0]), int(keys[0, 1]), len(feats), len(hs)
nbytes = D * N * (4 * F + 4 * H + 4 + 2 + 2 + 1)   # features, targets, returns, sector, segment, mask
buf = np.random.default_rng(0).standard_normal(16 << 20).astype(np.float32).tobytes()
t1 = time.perf_counter()
with open(os.path.join(tmp, "floor.bin"), "wb") as f:
    left = nbytes
    while left > 0:
        k = min(left, len(buf))
        f.write(memoryview(buf)[:k])
        left -= k
write_s = time.perf_counter() - t1
os.remove(os.path.join(tmp, "floor.bin"))
print(json.dumps({"read_s": read_s, "write_s": write_s, "floor_s": read_s + write_s, "rows": rows,
                  "panel_gb": nbytes / 1e9, "peak_rss_mb": peak_rss_mb()}))
"""
)

CONVERT = (
    COLUMNS
    + """
import logging, resource, time
from gogooku3.core.io import peak_rss_mb
from gogooku3.data.panel import PanelStore
logging.basicConfig(level=logging.WARNING)
ds, out, block_mb, normalizer = sys.argv[1], sys.argv[2], float(sys.argv[3]), json.loads(sys.argv[4])
feats, hs, _ = panel_columns(ds)
cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))
c0, t0 = cpu(), time.perf_counter()
p = PanelStore.convert(ds, out, feats, hs, normalizer, block_mb=block_mb)
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_s": cpu() - c0, "peak_rss_mb": peak_rss_mb(),
                  "shape": list(p.features.shape), "panel_gb": sum(os.path.getsize(os.path.join(out, f))
                                                                  for f in os.listdir(out)) / 1e9}))
""".replace("import logging", "import logging, os")
)

ONE_SHOT = (
    COLUMNS
    + """
import logging, os, resource, time
import polars as pl
if len(sys.argv) > 4:
    sys.path.insert(0, sys.argv[4])     # an older revision's panel.py / normalize.py (--before)
from gogooku3.core.io import peak_rss_mb
logging.basicConfig(level=logging.WARNING)
panel_mod = __import__("old_panel") if len(sys.argv) > 4 else __import__("gogooku3.data.panel", fromlist=["x"])
ds, normalizer = sys.argv[1], json.loads(sys.argv[3])
feats, hs, cols = panel_columns(ds)
lf = pl.scan_parquet(ds)
lf = lf.select(list(dict.fromkeys(c for c in cols if c in lf.collect_schema())))
cpu = lambda: (lambda r: r.ru_utime + r.ru_stime)(resource.getrusage(resource.RUSAGE_SELF))
c0, t0 = cpu(), time.perf_counter()
p = panel_mod.PanelStore.from_frame(lf, feats, hs, normalizer)
p.save(sys.argv[2])
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_s": cpu() - c0, "peak_rss_mb": peak_rss_mb(),
                  "shape": list(p.features.shape)}))
"""
)

TRAIN = """
import json, sys, time
import numpy as np
from gogooku3.core.io import peak_rss_mb
from gogooku3.data.panel import PanelDataModule, PanelStore

def status():
    kb = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            kb[k] = int(v.split()[0])
    return kb

root, n_batches = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
p = PanelStore.load(root)
D = p.n_days
dm = PanelDataModule(p, p.dates[: int(D * 0.8)], p.dates[int(D * 0.8):], window=60, max_stocks=2048,
                     min_window_frac=0.9, min_stocks=10, seed=0)
setup_s = time.perf_counter() - t0
anon = [status()["RssAnon"]]
t1 = time.perf_counter()
n = samples = 0
for b in dm.train_dataloader():
    samples += int(b["x"].shape[0])
    n += 1
    s = status()
    anon.append(s["RssAnon"])
    if n >= n_batches:
        break
s = status()
print(json.dumps({"days": D, "stocks": len(p.codes), "setup_s": setup_s, "batches": n,
                  "batch_s": (time.perf_counter() - t1) / max(n, 1), "samples": samples,
                  "peak_rss_mb": peak_rss_mb(), "peak_anon_mb": max(anon) / 1024, "end_anon_mb": s["RssAnon"] / 1024,
                  "end_file_mb": s["RssFile"] / 1024}))
"""


def child(code: str, *args: str) -> dict:
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        raise SystemExit(f"child failed with exit code {out.returncode}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0  # includes interpreter start and imports
    res["load"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
    return res


def ensure_dataset(data_dir: Path, stocks: int, days: int, seed: int) -> Path:
    """`gogooku3 data synth` + `gogooku3 data build` into data_dir (reused when its dataset exists)."""
    ds = data_dir / "output" / "ml_dataset_latest.parquet"
    if ds.exists():
        return ds
    gg = [sys.executable, "-m", "gogooku3.cli"]
    paths = [f"paths.raw_dir={data_dir / 'raw'}", f"paths.output_dir={data_dir / 'output'}", f"paths.dataset={ds}"]
    subprocess.run(
        [*gg, "data", "synth", f"data.n_stocks={stocks}", f"data.n_days={days}", f"seed={seed}", *paths],
        check=True,
        capture_output=True,
    )
    subprocess.run([*gg, "data", "build", *paths], check=True, capture_output=True)
    return ds


def before_modules(rev: str, dest: Path) -> Path:
    """REV's panel.py and normalize.py as `old_panel` / `old_normalize` in dest (the pre-chunking one-shot path)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("panel", "normalize"):
        src = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:src/gogooku3/{name}.py"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        src = src.replace("from gogooku3.data.normalize import", "from old_normalize import")
        (dest / f"old_{name}.py").write_text(src)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stocks", type=int, default=4000)
    ap.add_argument("--days", type=int, default=1250)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir", type=Path, default=None, help="synthesise + build here, reuse on the next run")
    ap.add_argument("--dataset", type=Path, default=None, help="an existing built dataset (its manifest beside it)")
    ap.add_argument("--block-mb", type=float, default=None, help="PanelStore.convert block size (default: its own)")
    ap.add_argument("--day-level", default="zero", choices=["zero", "time_z"])
    ap.add_argument("--batches", type=int, default=200, help="training day batches gathered in the train step")
    ap.add_argument("--skip-floor", action="store_true")
    ap.add_argument("--one-shot", action="store_true", help="also time the in-memory from_frame on the whole frame")
    ap.add_argument("--before", default=None, metavar="REV", help="also time REV's one-shot conversion (git rev)")
    a = ap.parse_args()
    from gogooku3.data.panel import CONVERT_BLOCK_MB

    block_mb = a.block_mb if a.block_mb is not None else CONVERT_BLOCK_MB
    normalizer = {"method": "robust_z", "clip": 5.0, "day_level": a.day_level, "day_level_window": 252}
    with tempfile.TemporaryDirectory(prefix="bench_panel_") as tmp:
        ds = a.dataset or ensure_dataset(a.data_dir or Path(tmp) / "data", a.stocks, a.days, a.seed)
        report: dict = {
            "dataset": str(ds),
            "dataset_gb": round(ds.stat().st_size / 1e9, 2),
            "block_mb": block_mb,
            "normalizer": normalizer,
        }
        if not a.skip_floor:
            report["floor"] = child(FLOOR, str(ds), tmp)
        root = Path(tmp) / "panel"
        report["convert"] = child(CONVERT, str(ds), str(root), str(block_mb), json.dumps(normalizer))
        if "floor" in report:
            report["convert_over_floor"] = round(report["convert"]["seconds"] / report["floor"]["floor_s"], 2)
        report["train"] = child(TRAIN, str(root), str(a.batches))
        shutil.rmtree(root, ignore_errors=True)
        if a.one_shot:
            report["one_shot"] = child(ONE_SHOT, str(ds), str(Path(tmp) / "one_shot"), json.dumps(normalizer))
            shutil.rmtree(Path(tmp) / "one_shot", ignore_errors=True)
        if a.before:
            mods = before_modules(a.before, Path(tmp) / "before")
            report["before"] = child(
                ONE_SHOT,
                str(ds),
                str(Path(tmp) / "before_panel"),
                json.dumps({k: v for k, v in normalizer.items()}),
                str(mods),
            )
            report["before"]["rev"] = a.before
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
