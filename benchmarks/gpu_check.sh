#!/usr/bin/env bash
# GPU check: the full model's training throughput (fp32 / bf16 / compile) and one end-to-end
# `gogooku3 train trainer=gpu model=full` run on a synthetic market, with timings.
# Usage (repo root, package importable):  bash benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
OUT=${1:-output/gpu_check}
mkdir -p "$OUT"
ROOT=$(pwd)
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c "import torch, torch_geometric, lightning; print('torch', torch.__version__, 'pyg', torch_geometric.__version__, 'lightning', lightning.__version__)" | tee -a "$OUT/gpu.txt"

for args in "--model full --stocks 2048" "--model full --stocks 2048 --bf16" "--model full --stocks 2048 --bf16 --compile" \
            "--model full --stocks 2048 --bf16 --no-gat" "--model small --stocks 2048 --bf16"; do
  timeout 240 $PY benchmarks/bench_model.py --device cuda $args 2>&1 | tail -1 | tee -a "$OUT/bench_model.jsonl"
done

WORK=$(mktemp -d)
cd "$WORK" || exit 1
start=$(date +%s)
$PY -m gogooku3.cli data synth data.n_stocks=2000 data.n_days=750 log_level=WARNING && \
$PY -m gogooku3.cli data build log_level=WARNING && \
$PY -m gogooku3.cli train trainer=gpu model=full train.max_epochs=3 train.patience=3 train.limit_train_batches=200 \
    train.baseline=false 2>&1 | grep -v -E "^\s*$" | tail -25 | tee "$ROOT/$OUT/train.log"
echo "end-to-end seconds: $(( $(date +%s) - start ))" | tee -a "$ROOT/$OUT/train.log"
cp runs/last/metrics.json "$ROOT/$OUT/train_metrics.json" 2>/dev/null
cp runs/last/logs/metrics.csv "$ROOT/$OUT/train_curves.csv" 2>/dev/null
