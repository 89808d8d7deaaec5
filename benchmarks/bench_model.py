"""Training throughput and peak memory of ATFT-GAT-FAN at the reference TFT's size.

Reference (DESIGN §3): pytorch-forecasting TFT, hidden 64, 145 features, L 60: 40 samples/s, 10.6 GB on this
2-core machine. Target: >= 400 samples/s with <= 3.5 GB. A sample is one (stock, day) window; a step is one
day batch of `--stocks` stocks (forward, multi-horizon loss, backward, clip, AdamW step).

Needs only torch, torch_geometric and numpy (plus PyYAML if present): model sizes come from
`src/gogooku3/conf/model/<name>.yaml` when PyYAML is installed, else from the built-in copy below.

    .venv/bin/python benchmarks/bench_model.py                      # CPU, hidden 64, GAT on
    python benchmarks/bench_model.py --device cuda --bf16 --stocks 2048 --model full [--compile] [--graph-sync-free off]

`--epoch-steps S --fits K` add the predicted wall of one epoch of S day batches and of a training of K such epochs
(epochs × members × folds) from the median step; e.g. the default training at 4,000 stocks: `--model full --stocks
2048 --epoch-steps 120 --fits 8` (train.max_stocks_per_day caps a day batch at 2,048 stocks; 120 =
train.limit_train_batches, 8 = 4 epochs × 2 members × 1 fold).

Prints one JSON line: samples/s of the best and the median step (the best step is the robust figure on a shared
machine), achieved TFLOP/s and MFU against `--peak-tflops` (default: a table for known GPUs, else an assumed CPU
peak), peak RSS and peak GPU memory. On CUDA it also counts the host synchronisations of one step
(`torch.cuda.set_sync_debug_mode("warn")`: `host_syncs_per_step`, the first few call sites in `host_sync_sites`).
`--graph-sync-free auto|on|off` picks the day graph's path (`FinancialGraphBuilder.sync_free`; auto = on for CUDA).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # runs from a bare checkout (no editable install needed)

from gogooku3.model.atft_gat_fan import ATFTGATFAN, ATFTConfig  # noqa: E402
from gogooku3.model.losses import MultiHorizonLoss  # noqa: E402

CONF_DIR = ROOT / "src" / "gogooku3" / "conf" / "model"
# Mirror of conf/model/*.yaml for machines without PyYAML (keep in step with the YAML files).
BUILTIN = {
    "small": dict(
        window=60,
        hidden=48,
        n_heads=4,
        lstm_layers=1,
        dropout=0.1,
        norm="fan",
        fan_topk=3,
        gat=True,
        gat_heads=[4, 2],
        gat_dropout=0.1,
        quantiles=[0.1, 0.25, 0.5, 0.75, 0.9],
        head_hidden=32,
        n_sectors=64,
        n_segments=16,
        graph=dict(window=60, method="ewm", halflife=20, shrinkage=0.1, threshold=0.3, k=10, min_obs=20),
    ),
}
BUILTIN["full"] = {**BUILTIN["small"], "hidden": 244, "lstm_layers": 2, "head_hidden": 64}
# Dense peak TFLOP/s (bf16, tf32) by GPU name; used for MFU when --peak-tflops is not given.
GPU_PEAKS = {"H200": (989.0, 494.7), "H100": (989.0, 494.7), "A100": (312.0, 156.0), "L40S": (362.0, 183.0)}


def model_config(name: str) -> tuple[dict, str]:
    """The model group's settings: the YAML (with its `defaults` chain) when PyYAML is importable, else BUILTIN."""
    try:
        import yaml
    except ImportError:
        return dict(BUILTIN[name]), "builtin"

    def load(n: str) -> dict:
        d = yaml.safe_load((CONF_DIR / f"{n}.yaml").read_text()) or {}
        out: dict = {}
        for parent in d.pop("defaults", []) or []:
            if isinstance(parent, str) and parent != "_self_":
                out.update(load(parent))
        out.update(d)
        return out

    return load(name), "yaml"


def peak_tflops(dev: torch.device, bf16: bool, threads: int) -> tuple[float, str]:
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        for key, (p_bf16, p_tf32) in GPU_PEAKS.items():
            if key in name:
                return (p_bf16 if bf16 else p_tf32), f"{key} dense {'bf16' if bf16 else 'tf32'}"
        return float("nan"), f"unknown GPU {name}"
    # CPU: threads × 3 GHz × 32 fp32 FLOP/cycle (two 256-bit FMA pipes) — an assumption, not a measurement.
    return threads * 3.0e9 * 32 / 1e12, "assumed CPU fp32 (threads x 3 GHz x 32 FLOP/cycle)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small", choices=sorted(BUILTIN), help="model config (small|full)")
    ap.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="hidden size (default: 64 for small — the reference TFT's size — the YAML's for full)",
    )
    ap.add_argument("--features", type=int, default=145)
    ap.add_argument("--window", type=int, default=60)
    ap.add_argument("--stocks", type=int, default=256, help="stocks per day batch")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument(
        "--compile-rnn",
        action="store_true",
        help="with --compile: let Dynamo trace through nn.LSTM (torch._dynamo.config.allow_rnn) instead "
        "of breaking the graph there)",
    )
    ap.add_argument(
        "--compile-mode",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune"],
        help="with --compile: torch.compile's mode (reduce-overhead: CUDA graphs, needs one graph "
        "without host syncs, i.e. --compile-rnn and the sync-free day graph)",
    )
    ap.add_argument(
        "--epoch-steps",
        type=int,
        default=120,
        help="day batches in one epoch, for the predicted epoch wall (default: train.limit_train_batches; a full "
        "pass over a fold's training days: their count)",
    )
    ap.add_argument(
        "--fits",
        type=int,
        default=8,
        help="epochs x members x folds of the training whose wall is predicted (default: train.max_epochs 4 x "
        "train.ensemble 2 x the 1 fold train evaluates)",
    )
    ap.add_argument("--no-gat", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak for the MFU estimate")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="add the top operators by device time (CPU time on the CPU) of 2 profiled steps",
    )
    ap.add_argument(
        "--graph-sync-free",
        default="auto",
        choices=["auto", "on", "off"],
        help="day graph without host syncs (auto: on for CUDA, off on the CPU; same edges)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    mc, source = model_config(args.model)
    mc.update(n_features=args.features, window=args.window, horizons=(1, 5, 10, 20), gat=not args.no_gat)
    mc["graph"] = {**dict(mc["graph"]), "window": args.window}
    hidden = args.hidden or (64 if args.model == "small" else None)
    if hidden:
        mc["hidden"] = hidden
    model = ATFTGATFAN(ATFTConfig.from_dict(mc)).to(dev).train()
    if args.graph_sync_free != "auto":
        model.graph_builder.sync_free = args.graph_sync_free == "on"
    flops = model.estimate_flops_per_sample()
    if args.compile_rnn:
        torch._dynamo.config.allow_rnn = True
    fwd = torch.compile(model, mode=args.compile_mode) if args.compile else model
    loss_fn = MultiHorizonLoss((1, 5, 10, 20), quantiles=model.cfg.quantiles).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=dev.type == "cuda")
    n, L, F = args.stocks, args.window, args.features
    x = torch.randn(n, L, F, device=dev)
    factors = torch.randn(L, 8, device=dev) * 0.01
    returns = (factors @ torch.randn(8, n, device=dev)).T + 0.01 * torch.randn(n, L, device=dev)
    sector = torch.randint(0, 33, (n,), device=dev)
    segment = torch.randint(0, 3, (n,), device=dev)
    y = torch.randn(n, 4, device=dev) * 0.02

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(timed: bool = True) -> float:
        if timed:
            sync()
        t0 = time.perf_counter()
        if args.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration for CUDA-graph trees
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=args.bf16):
            out = fwd(x, sector, segment, returns)
        loss, _ = loss_fn(out, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if timed:
            sync()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        step()
    syncs: list[str] = []
    if dev.type == "cuda":  # one step with every synchronising CUDA call reported as a warning
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step(timed=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        sync()
        for w in caught:
            if "synchroniz" in str(w.message):
                syncs.append(f"{Path(w.filename).name}:{w.lineno}")
    top_ops: list[dict] = []
    if args.profile:  # where a step's time goes: the top operators of 2 steps, per step
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(2):
                step()
        key = "device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        ev = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
        if dev.type == "cuda":
            ev = [e for e in ev if getattr(e, "self_device_time_total", 0) > 0]
            key = "self_device_time_total"
        total = sum(getattr(e, key) for e in ev) or 1.0
        for e in sorted(ev, key=lambda e: getattr(e, key), reverse=True)[:15]:
            top_ops.append(
                {
                    "op": e.key[:80],
                    "ms_per_step": round(getattr(e, key) / 2e3, 3),
                    "share": round(getattr(e, key) / total, 3),
                    "calls_per_step": e.count // 2,
                }
            )
        top_ops.append(
            {
                "op": "(all)",
                "ms_per_step": round(total / 2e3, 3),
                "kernels_or_ops_per_step": sum(e.count for e in ev) // 2,
            }
        )
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = [step() for _ in range(args.steps)]
    best, med = min(times), statistics.median(times)
    peak, peak_src = args.peak_tflops, "--peak-tflops"
    if peak is None:
        peak, peak_src = peak_tflops(dev, args.bf16, args.threads)
    achieved = n / best * flops / 1e12
    res = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu x{args.threads} threads",
        "model": args.model,
        "config_from": source,
        "hidden": model.cfg.hidden,
        "lstm_layers": model.cfg.lstm_layers,
        "features": F,
        "window": L,
        "stocks_per_batch": n,
        "gat": model.cfg.gat,
        "norm": model.cfg.norm,
        "bf16": args.bf16,
        "compile": args.compile,
        "compile_rnn": args.compile_rnn,
        "compile_mode": args.compile_mode,
        "params": model.get_num_params(),
        "samples_per_sec": round(n / best, 1),
        "samples_per_sec_median": round(n / med, 1),
        "sec_per_step_best": round(best, 4),
        "sec_per_step_median": round(med, 4),
        "gflop_per_sample": round(flops / 1e9, 4),
        "achieved_tflops": round(achieved, 4),
        "mfu": round(achieved / peak, 4) if peak == peak else None,
        "mfu_peak": f"{peak} TFLOP/s ({peak_src})",
        # a prediction from the median step (forward, loss, backward, optimiser step; no validation pass, no data
        # loading): the epoch and the training at --epoch-steps and --fits, not a measured epoch
        "epoch_steps": args.epoch_steps,
        "epoch_wall_s_predicted": round(args.epoch_steps * med, 1),
        "fits": args.fits,
        "training_wall_s_predicted": round(args.fits * args.epoch_steps * med, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if dev.type == "cuda":
        res["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)
        res["host_syncs_per_step"] = len(syncs)
        res["host_sync_sites"] = sorted(set(syncs))[:12]
    res["graph_sync_free"] = model.graph_builder.is_sync_free(dev) if model.cfg.gat else None
    if top_ops:
        res["profile_top"] = top_ops
    print(json.dumps(res))  # benchmark script output (not library code)


if __name__ == "__main__":
    main()
