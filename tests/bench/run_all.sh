#!/usr/bin/env bash
# Every figure in the README, in one go, on a quiet machine: model, pipeline and GUI benchmarks,
# the evaluation table and the README figure. Usage: bash tests/bench/run_all.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/figures}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
$PY tests/bench/bench_model.py --repeat 3 | tee "$OUT/bench_model.md"
$PY tests/bench/bench_pipeline.py --repeat 3 --big | tee "$OUT/bench_pipeline.md"
QT_QPA_PLATFORM=offscreen $PY tests/bench/bench_gui.py | tee "$OUT/bench_gui.md"
QT_QPA_PLATFORM=offscreen /usr/bin/time -f "wall %e s" .venv/bin/retouch-studio --quit-when-ready 2>&1 | tee "$OUT/startup.txt"
$PY -m engine.training.evaluate --count 200 --true-mask --json "$OUT/eval_true_mask.json" | tee "$OUT/eval_true_mask.md"
$PY -m engine.training.evaluate --count 200 --json "$OUT/eval.json" | tee "$OUT/eval.md"
$PY -m engine.training.evaluate --count 40 --face-size 250,500,1000 --json "$OUT/eval_sizes.json" | tee "$OUT/eval_sizes.md"
$PY -m engine.training.evaluate --count 60 --by-kind --json "$OUT/eval_kinds.json" | tee "$OUT/eval_kinds.md"
$PY tests/bench/make_acne_figure.py | tee "$OUT/figure.txt"
