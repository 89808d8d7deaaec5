#!/usr/bin/env bash
# GPU check (issue 14): one prepared script, <= 9 minutes on one H200, results flat under OUT_DIR (7 files):
#   env.txt            GPU, versions, the import check
#   pytest_gpu.txt     the CUDA tests: sync-free graph == reference edges with no host sync, fused AdamW
#   bench_model.jsonl  model=full, 2,048 stocks/day: fp32/TF32 and bf16 (MFU), with and without --compile, the
#                      sync-free graph on; one bf16 row with it off for comparison; host syncs per step (uncompiled);
#                      one bf16 row with the top kernels of a step (--profile)
#   bench_graph.jsonl  the day graph alone on the GPU, sync-free on/off, 2,048 and 4,000 stocks
#   stages.log         every stage's command and the tail of its output
#   train_metrics.json runs/last/metrics.json of the end-to-end run
#   timings.json       seconds and exit code of every stage (skipped ones say why)
# End to end: `gogooku3 data synth` 4,000 stocks x 750 days -> `data build` -> `train trainer=gpu model=full
# train.max_epochs=1` (bf16, panel in GPU memory, validation and test predictions on the GPU) -> `predict` (next day).
# Stages run in priority order against one time budget (GPU_CHECK_BUDGET_S, default 520 s); a stage that no
# longer fits is skipped and recorded, so the script always ends in time. The --compile rows come last (the third:
# --compile-rnn --compile-mode reduce-overhead, one graph captured as CUDA graphs).
#
# Usage (repo root):
#   bash benchmarks/gpu_check.sh [OUT_DIR]                 # on the GPU machine (default OUT_DIR output/gpu_check)
#   bash benchmarks/gpu_check.sh --cpu-smoke [OUT_DIR]     # CPU, everything shrunk: proves the script end to end
#   (GPU_CHECK_CPU_SMOKE=1 is the same as --cpu-smoke)
#
# Packages: the GPU image has torch, torch_geometric, lightning, typer, rich, pandas, pytest but not polars, hydra,
# optuna, lightgbm or exchange_calendars. Wheels for them (Python 3.12, x86-64) put under .whl/ (git-ignored; name
# `.whl` in the device call's carry) are installed to /tmp/site first, e.g. here:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     polars polars-runtime-32 hydra-core omegaconf antlr4-python3-runtime==4.9.3 optuna alembic sqlalchemy mako \
#     colorlog lightgbm exchange-calendars pyluach korean-lunar-calendar tzdata greenlet
set -uo pipefail

SMOKE=${GPU_CHECK_CPU_SMOKE:-0}
if [[ "${1:-}" == "--cpu-smoke" ]]; then SMOKE=1; shift; fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT_ARG=${1:-$ROOT/output/gpu_check}
mkdir -p "$OUT_ARG" && OUT=$(cd "$OUT_ARG" && pwd)
BUDGET=${GPU_CHECK_BUDGET_S:-$([[ $SMOKE == 1 ]] && echo 900 || echo 520)}
T0=$(date +%s)
if [[ -d "$ROOT/.whl" ]] && ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$ROOT"/.whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ $SMOKE == 1 ]]; then
  PY=${PYTHON:-$([[ -x "$ROOT/.venv/bin/python" ]] && echo "$ROOT/.venv/bin/python" || echo python3)}
  DEV=cpu
  BENCH="--model full --hidden 32 --features 16 --window 20 --stocks 96 --steps 2 --warmup 1 --threads 1"
  GRAPH_STOCKS="96 300"
  SYNTH="data.n_stocks=40 data.n_days=330"
  TRAIN="trainer=cpu trainer.num_threads=1 model=full model.hidden=32 model.head_hidden=16 model.window=20 \
model.graph.window=20 train.limit_train_batches=3 split.min_train_days=150 split.n_splits=2 split.val_days=20"
  BENCH_LIMIT=120; COMPILE_LIMIT=240
  CG_PREC=""          # the one-graph compile in bf16 takes minutes on the CPU: fp32 there
else
  PY=${PYTHON:-python3}
  DEV=cuda
  BENCH="--model full --stocks 2048"
  GRAPH_STOCKS="2048 4000"
  SYNTH="data.n_stocks=4000 data.n_days=750"
  TRAIN="trainer=gpu model=full"
  BENCH_LIMIT=75; COMPILE_LIMIT=150
  CG_PREC="--bf16"
fi
# One epoch, one member, no LightGBM baseline (baseline.enabled=false), no progress bar.
TRAIN="$TRAIN train.max_epochs=1 train.ensemble=1 baseline.enabled=false trainer.progress_bar=false"
: >"$OUT/stages.log"; : >"$OUT/bench_model.jsonl"; : >"$OUT/bench_graph.jsonl"
TIMINGS=$(mktemp)

remaining() { echo $(( BUDGET - ($(date +%s) - T0) )); }

# stage NAME LIMIT_S OUTFILE CMD... : run CMD under `timeout min(LIMIT_S, remaining - 5)`; its output goes to
# stages.log (last 60 lines); OUTFILE "-": nothing else, *.jsonl: its JSON lines are appended there, else: all of
# its output is copied there.
stage() {
  local name=$1 limit=$2 outfile=$3; shift 3
  local left; left=$(( $(remaining) - 5 ))
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then
    printf '%s\t%s\t%s\t%s\n' "$name" "skipped" "0" "budget spent" >>"$TIMINGS"
    echo "== $name: SKIPPED (budget spent)" >>"$OUT/stages.log"; return 0
  fi
  local log; log=$(mktemp)
  local t0; t0=$(date +%s.%N)
  timeout --kill-after=5 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  local secs; secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$secs" "limit ${limit}s" >>"$TIMINGS"
  { echo "== $name (rc $rc, ${secs}s, limit ${limit}s): $*"; tail -n 60 "$log"; echo; } >>"$OUT/stages.log"
  case $outfile in
    -) ;;
    *.jsonl) grep -E '^\{' "$log" >>"$outfile" ;;
    *) cp "$log" "$outfile" ;;
  esac
  echo "$name: rc $rc, ${secs}s"
  rm -f "$log"
  return 0
}

# ---- environment ------------------------------------------------------------------------------------------------
{
  echo "mode: $([[ $SMOKE == 1 ]] && echo cpu-smoke || echo gpu)  budget ${BUDGET}s  $(date -u +%FT%TZ)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import sys, torch, torch_geometric, lightning; print(sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, torch.cuda.is_available(), 'pyg', torch_geometric.__version__, 'lightning', lightning.__version__)"
  $PY - <<'EOF'
import importlib.util
missing = [m for m in ("polars", "hydra", "omegaconf", "optuna", "lightgbm", "exchange_calendars", "typer", "rich",
                       "safetensors", "pyarrow", "gogooku3.cli") if importlib.util.find_spec(m.split(".")[0]) is None]
print("missing packages:", ", ".join(missing) if missing else "none")
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# ---- 1. CUDA tests (sync-free graph, fused AdamW) ---------------------------------------------------------------
stage pytest_gpu 90 "$OUT/pytest_gpu.txt" $PY -m pytest -q -p no:cacheprovider -rs \
  "$ROOT/tests/unit/test_graph_sync_free.py" "$ROOT/tests/unit/test_fused_optim.py"

# ---- 2. model training step, model=full, sync-free graph on (auto on CUDA) --------------------------------------
BENCH="$BENCH --graph-sync-free on"  # = auto on CUDA; named so that the CPU smoke runs the same path
stage bench_fp32 "$BENCH_LIMIT" "$OUT/bench_model.jsonl" $PY "$ROOT/benchmarks/bench_model.py" --device $DEV $BENCH
stage bench_bf16 "$BENCH_LIMIT" "$OUT/bench_model.jsonl" $PY "$ROOT/benchmarks/bench_model.py" --device $DEV $BENCH --bf16
stage bench_bf16_graph_sync "$BENCH_LIMIT" "$OUT/bench_model.jsonl" $PY "$ROOT/benchmarks/bench_model.py" \
  --device $DEV $BENCH --bf16 --graph-sync-free off
stage bench_graph 60 "$OUT/bench_graph.jsonl" $PY "$ROOT/benchmarks/bench_graph.py" --device $DEV \
  --stocks $GRAPH_STOCKS --sync-free both --reps 10

# ---- 3. end to end on a synthetic market ------------------------------------------------------------------------
WORK=$(mktemp -d)
cd "$WORK" || exit 1
stage synth 90 - $PY -m gogooku3.cli data synth $SYNTH log_level=WARNING
stage build 120 - $PY -m gogooku3.cli data build log_level=WARNING
stage train 300 - $PY -m gogooku3.cli train $TRAIN
cp runs/last/metrics.json "$OUT/train_metrics.json" 2>/dev/null
stage predict 90 - $PY -m gogooku3.cli predict log_level=WARNING
{ echo "== next-day predictions (head)"; head -n 6 output/predictions/pred_*.csv 2>/dev/null; } >>"$OUT/stages.log"
cd "$ROOT" || exit 1
rm -rf "$WORK"

# ---- 4. where a step's time goes (top kernels), then the compiled rows, with what time is left --------------
stage bench_bf16_profile "$BENCH_LIMIT" "$OUT/bench_model.jsonl" $PY "$ROOT/benchmarks/bench_model.py" \
  --device $DEV $BENCH --bf16 --profile
stage bench_bf16_compile "$COMPILE_LIMIT" "$OUT/bench_model.jsonl" $PY "$ROOT/benchmarks/bench_model.py" \
  --device $DEV $BENCH --bf16 --compile
stage bench_fp32_compile "$COMPILE_LIMIT" "$OUT/bench_model.jsonl" $PY "$ROOT/benchmarks/bench_model.py" \
  --device $DEV $BENCH --compile
# one graph (Dynamo traces through the LSTM, the day graph has no host sync) captured as CUDA graphs
stage bench_bf16_compile_cudagraphs "$COMPILE_LIMIT" "$OUT/bench_model.jsonl" $PY "$ROOT/benchmarks/bench_model.py" \
  --device $DEV $BENCH $CG_PREC --compile --compile-rnn --compile-mode reduce-overhead

# ---- timings ----------------------------------------------------------------------------------------------------
$PY - "$TIMINGS" "$OUT/timings.json" "$(( $(date +%s) - T0 ))" <<'EOF'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
out = {"total_s": int(sys.argv[3]),
       "stages": [{"stage": n, "rc": None if rc == "skipped" else int(rc), "seconds": float(s), "note": note}
                  for n, rc, s, note in rows]}
json.dump(out, open(sys.argv[2], "w"), indent=1)
print(json.dumps(out))
EOF
rm -f "$TIMINGS"
