#!/usr/bin/env bash
# The paper's ablations on one short schedule (same data, steps, batch and seed for every run),
# then one evaluation table. Usage: bash tests/bench/run_ablations.sh [STEPS] [RUN_ROOT]
# Each run resumes from its checkpoint if interrupted; run the same command again.
set -euo pipefail
STEPS=${1:-300}
ROOT=${2:-runs/ablations}
PY=${PYTHON:-python}
COMMON=(--steps "$STEPS" --batch 6 --unpaired-batch 2 --crop 96 --adv-start $((STEPS / 4)) --threads 1 --log-every 25 --ckpt-every 50 --grid-every 100000 --seed 0)
declare -A RUNS=(
  [full]=""
  [global-attention]="--set attention=global"
  [single-scale-tokens]="--set tokens=single"
  [no-prior]="--set prior=false"
  [no-unpaired]="--no-unpaired"
)
for name in full global-attention single-scale-tokens no-prior no-unpaired; do
  # shellcheck disable=SC2086
  OMP_WAIT_POLICY=PASSIVE $PY -m engine.training.train --run "$ROOT/$name" "${COMMON[@]}" ${RUNS[$name]}
done
ARGS=()
for name in full global-attention single-scale-tokens no-prior no-unpaired; do
  ARGS+=(--model "$name ($STEPS steps)=$ROOT/$name/model.safetensors")
done
$PY -m engine.training.evaluate "${ARGS[@]}" --no-baselines --count 100 --threads 1 --json "$ROOT/table.json"
