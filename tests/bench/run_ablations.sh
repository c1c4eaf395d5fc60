#!/usr/bin/env bash
# The paper's ablations on one short schedule (same data, steps, batch and seed for every run),
# then tables (own/exact mask), each variant's difference from the full model image by image
# (95 % interval: a difference whose interval holds zero is noise). Usage: bash tests/bench/run_ablations.sh [STEPS] [RUN_ROOT]
# Each run resumes from its checkpoint if interrupted; run the same command again.
#   EXTRA="..."  more training arguments for every run (a GPU window: --pack runs/pack/pack.npz
#                --device cuda --amp --workers 14 --batch 48 --crop 128)
#   MINUTES=N    stop each run after N minutes (with a checkpoint) so that five fit one command
#   EVAL=0       train only (evaluate elsewhere: the five model.safetensors are the result)
#   THREADS=N    CPU threads per run (default 1)
#   VARIANTS="full no-unpaired"  train and evaluate only these (default all five; keep "full":
#                the others are compared with it)
set -euo pipefail
STEPS=${1:-300}
ROOT=${2:-runs/ablations}
PY=${PYTHON:-python}
# shellcheck disable=SC2206
COMMON=(--steps "$STEPS" --batch 6 --unpaired-batch 2 --crop 96 --adv-start $((STEPS / 4)) --threads "${THREADS:-1}" --log-every 25 --ckpt-every 50 --grid-every 100000 --seed 0 --max-minutes "${MINUTES:-0}" ${EXTRA:-})
declare -A RUNS=(
  [full]=""
  [global-attention]="--set attention=global"
  [single-scale-tokens]="--set tokens=single"
  [no-prior]="--set prior=false"
  [no-unpaired]="--no-unpaired"
)
# shellcheck disable=SC2206
NAMES=(${VARIANTS:-full global-attention single-scale-tokens no-prior no-unpaired})
for name in "${NAMES[@]}"; do
  [ -n "${RUNS[$name]+set}" ] || { echo "unknown variant: $name (one of: ${!RUNS[*]})" >&2; exit 2; }
done
for name in "${NAMES[@]}"; do
  # shellcheck disable=SC2086
  OMP_WAIT_POLICY=PASSIVE $PY -m engine.training.train --run "$ROOT/$name" "${COMMON[@]}" ${RUNS[$name]}
done
ARGS=()
for name in "${NAMES[@]}"; do
  ARGS+=(--model "$name ($STEPS steps)=$ROOT/$name/model.safetensors")
done
if [ "${EVAL:-1}" != 0 ]; then
  # with each model's own (uncalibrated) mask, then handed the exact mask: the second isolates the
  # fill, which is what attention, tokens and prior change
  $PY -m engine.training.evaluate "${ARGS[@]}" --no-baselines --count 100 --threads "${THREADS:-1}" \
      --against "full ($STEPS steps)" --json "$ROOT/table.json"
  $PY -m engine.training.evaluate "${ARGS[@]}" --no-baselines --true-mask --count 100 --threads "${THREADS:-1}" \
      --against "full ($STEPS steps)" --json "$ROOT/table-true-mask.json"
fi
