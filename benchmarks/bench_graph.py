"""Per-day correlation graph: `FinancialGraphBuilder.select`, `.edges` and the model's `day_graph` (CPU or GPU).

One day = N stocks × L = 60 raw returns from a sector-factor model (8 factors, 33 sectors) with 5 % of the returns
missing, `model=small`'s graph settings (ewm, halflife 20, shrinkage 0.1, threshold 0.3, k 10, min_obs 20).

    .venv/bin/python benchmarks/bench_graph.py --stocks 500 2048 --threads 1
    python benchmarks/bench_graph.py --device cuda --stocks 2048 4000 --sync-free both

    .venv/bin/python benchmarks/bench_graph.py --stocks 500 2048 --compare-rev HEAD   # before / after, same load

Prints one JSON line per (stocks, implementation): best and median milliseconds of each call ([best, median]) and
the number of directed edges. `--sync-free on|off|both` chooses the builder's path (default `auto`: the
fixed-shape, host-sync-free path on a GPU, the early-exit path on the CPU; both give the same edges).
`--compare-rev REV` also times `src/gogooku3/data/graph.py` as of git revision REV (interleaved with the working tree's,
so both see the same machine load) and checks that its edges are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # runs from a bare checkout

from gogooku3.data.graph import FinancialGraphBuilder  # noqa: E402
from gogooku3.model.gat import day_graph  # noqa: E402

GRAPH = dict(window=60, method="ewm", halflife=20, shrinkage=0.1, threshold=0.3, k=10, min_obs=20)


def market(n: int, L: int, dev: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sector = torch.randint(0, 33, (n,), generator=g)
    load = torch.randn(n, 8, generator=g) * 0.6
    f = torch.randn(L, 8, generator=g)
    s = torch.randn(L, 33, generator=g)
    r = 0.01 * (f @ load.T + 0.8 * s[:, sector] + torch.randn(L, n, generator=g))  # [L, N]
    valid = torch.rand(L, n, generator=g) > 0.05
    r = torch.where(valid, r, torch.zeros(()))
    segment = torch.randint(0, 3, (n,), generator=g)
    return (r.T.contiguous().to(dev), valid.T.contiguous().to(dev), sector.to(dev), segment.to(dev))


def graph_module_at(rev: str) -> types.ModuleType:
    """`gogooku3.data.graph` as of git revision `rev` (a separate module object)."""
    src = subprocess.run(
        ["git", "show", f"{rev}:src/gogooku3/data/graph.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    mod = types.ModuleType(f"graph_at_{rev}")
    # exec of the repo's own file at an older revision
    exec(compile(src, f"{rev}:src/gogooku3/data/graph.py", "exec"), mod.__dict__)
    return mod


def calls(b, corr, returns, valid, sector, segment) -> dict:
    """The timed calls: the selection on a given ρ, ρ + selection, and the model's day graph."""
    r_t, v_t = returns.T.contiguous(), valid.T.contiguous()
    return {
        "select_ms": lambda: b.select(corr),
        "edges_ms": lambda: b.edges(r_t, v_t),
        "day_graph_ms": lambda: day_graph(b, returns, valid, sector, segment),
    }


def timed(fn, reps: int, sync) -> list[float]:
    """Milliseconds of `reps` calls after one warm-up call."""
    fn()
    sync()
    ts = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(1e3 * (time.perf_counter() - t0))
    return ts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stocks", type=int, nargs="+", default=[500, 2048])
    ap.add_argument("--window", type=int, default=60)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sync-free", default="auto", choices=["auto", "on", "off", "both"])
    ap.add_argument("--compare-rev", default=None, help="also time graph.py of this git revision (e.g. HEAD)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    modes = {"both": ["off", "on"]}.get(args.sync_free, [args.sync_free])
    impls: list[tuple[str, object]] = []
    if args.compare_rev:
        old = graph_module_at(args.compare_rev)
        impls.append((f"git:{args.compare_rev}", lambda: old.FinancialGraphBuilder(**{**GRAPH, "window": args.window})))
    for mode in modes:
        impls.append(
            (
                f"sync_free={mode}",
                lambda mode=mode: FinancialGraphBuilder(
                    **{**GRAPH, "window": args.window}, sync_free=None if mode == "auto" else mode == "on"
                ),
            )
        )
    for n in args.stocks:
        returns, valid, sector, segment = market(n, args.window, dev)
        r_t, v_t = returns.T.contiguous(), valid.T.contiguous()
        builders = [(name, make()) for name, make in impls]
        corr = builders[-1][1].correlation(r_t, v_t)
        results: dict[str, dict] = {}
        times: dict[tuple[str, str], list[float]] = {}
        reference = None
        for _ in range(2):  # interleaved: every implementation runs in both passes, the best of both counts
            for name, b in builders:
                res = results.setdefault(
                    name,
                    {
                        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{args.threads}",
                        "stocks": n,
                        "window": args.window,
                        "impl": name,
                        "torch": torch.__version__,
                    },
                )
                for key, fn in calls(b, corr, returns, valid, sector, segment).items():
                    ts = times.setdefault((name, key), [])
                    ts += timed(fn, max(1, args.reps // 2), sync)
                    res[key] = [round(min(ts), 3), round(statistics.median(ts), 3)]
                ei, ew = b.edges(r_t, v_t)
                res["directed_edges"] = int(ei.shape[1])
                if reference is None:
                    reference = (ei, ew)
                res["same_edges_as_first"] = bool(torch.equal(ei, reference[0]) and torch.equal(ew, reference[1]))
        for res in results.values():
            res["load_avg_1m"] = round(os.getloadavg()[0], 2)
            print(json.dumps(res))  # benchmark script output (not library code)


if __name__ == "__main__":
    main()
