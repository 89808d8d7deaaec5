"""Benchmark the synthetic market: simulate_market and the table writes, timed separately.

.venv/bin/python benchmarks/bench_synth.py                 # 4,000 stocks x 1,250 days (target < 30 s)
.venv/bin/python benchmarks/bench_synth.py --n-stocks 500 --n-days 750
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from gogooku3.core.io import peak_rss_mb, write_parquet
from gogooku3.sources import schema
from gogooku3.sources.synthetic import (
    ORACLE_FILE,
    SynthParams,
    market_sessions,
    oracle_rank_ic,
    simulate_market,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-stocks", type=int, default=4000)
    ap.add_argument("--n-days", type=int, default=1250)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, default=None, help="directory for the written tables (default: a temp dir)")
    ap.add_argument("--ic", action="store_true", help="also report the oracle RankIC per horizon")
    args = ap.parse_args()
    p = SynthParams(n_stocks=args.n_stocks, n_days=args.n_days, seed=args.seed)
    market_sessions(p)  # load exchange_calendars once, outside the timing
    t0 = time.perf_counter()
    tables = simulate_market(p)
    t_sim = time.perf_counter() - t0
    rss_sim = peak_rss_mb()
    rows = tables["daily_quotes"].height
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        t0 = time.perf_counter()
        for name in schema.TABLES:
            schema.write_table(tables[name], out / "raw", name)
        write_parquet(tables["oracle"], out / "oracle" / ORACLE_FILE)
        t_write = time.perf_counter() - t0
        size_mb = sum(f.stat().st_size for f in out.rglob("*.parquet")) / 2**20
    print(f"synthetic market {p.n_stocks} stocks x {p.n_days} days: {rows:,} quote rows")
    print(f"simulate_market: {t_sim:.2f} s (peak RSS {rss_sim:.0f} MiB)")
    print(f"write tables + oracle: {t_write:.2f} s ({size_mb:.0f} MiB parquet), peak RSS {peak_rss_mb():.0f} MiB")
    if args.ic:
        print("oracle RankIC: " + ", ".join(f"{h}d {oracle_rank_ic(tables, h):.4f}" for h in (1, 5, 10, 20)))


if __name__ == "__main__":
    main()
