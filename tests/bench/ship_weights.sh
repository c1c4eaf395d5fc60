#!/usr/bin/env bash
# End of a training session: commit the state the next session resumes from, calibrate the new
# weights, and ship them only if they beat the bundled ones on validation faces (held-out
# portraits that are not the evaluation's: --offset 200): more taken out of the blemishes through
# the whole pipeline with the predicted mask, at least as much with the exact (brushed) mask, and the whole photo
# closer to the clean one than the untouched photo and no further from it than the bundled
# weights leave it beyond the images' noise (python -m engine.training.ship: OUT_DIR/verdict.txt).
# Then, for a candidate that passes, the evaluation tables.
#
#   bash tests/bench/ship_weights.sh RUN_DIR [OUT_DIR]
#
# RUN_DIR is the run being trained (its last.pt and model.safetensors): its state is exported to
# resources/training/ first. RUN_DIR may also be the committed state file itself
# (resources/training/state.pt), when the run directory of an earlier session is gone: its weights
# are the candidate. STATE=keep leaves the committed state as it is (a run beside the main one, such
# as a fill-only stage from the shipped weights). OUT_DIR (default runs/ship) gets the candidate,
# the validation and evaluation tables. Copying the candidate over
# resources/models/small.safetensors is left to the person running this, when validation says so
# and real photos agree: `python tests/bench/brush_lightness.py --weights bundled=... --weights
# candidate=OUT_DIR/candidate.safetensors` (a paler fill under a brushed mask, which synthetic
# validation cannot see, kept stage 6's step 1,300 from shipping): mean L* shift within ±1 and mean
# absolute shift no larger than the bundled weights', and in its second table the filled spots'
# mean absolute offset from the skin's lightness no larger than theirs (dark smudges where spots
# were kept stage 13 from shipping); then look at `make_brush_figure.py` at 100 %.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:?usage: ship_weights.sh RUN_DIR [OUT_DIR]}
OUT=${2:-runs/ship}
PY=${PYTHON:-.venv/bin/python}
# how many portraits each table uses (smaller for a quick check of the script)
CAL=${CAL:-60} VAL=${VAL:-60} EVAL=${EVAL:-200} SIZES=${SIZES:-40} KINDS=${KINDS:-60}
# CALIBRATION: more arguments for the calibration, e.g. a mask net trained with --iou-form minmax:
# CALIBRATION="--tophats 0,4,6,8,12 --floors 0 --gains 1,1.5,2,3"
mkdir -p "$OUT"
if [ -f "$RUN" ]; then  # a committed state: its weights
  WEIGHTS="$OUT/state.safetensors"
  $PY -m engine.training.state weights "$RUN" "$WEIGHTS"
else
  WEIGHTS="$RUN/model.safetensors"
  if [ "${STATE:-export}" != keep ]; then
    $PY -m engine.training.state export "$RUN/last.pt" resources/training/state.pt
  fi
fi
$PY -m engine.training.calibrate "$WEIGHTS" --count "$CAL" --offset 200 ${CALIBRATION:-} --out "$OUT/candidate.safetensors" | tee "$OUT/calibration.md"
# validation: the whole pipeline, the bundled weights against the candidate (and the candidate's
# difference from the bundled weights image by image, with its 95 % interval: a win inside the
# images' noise is no win)
$PY -m engine.training.evaluate --offset 200 --count "$VAL" --face-size 400 \
    --model "bundled=resources/models/small.safetensors" --model "candidate=$OUT/candidate.safetensors" \
    --against bundled --json "$OUT/validation.json" | tee "$OUT/validation.md"
# ... and with the exact mask, as a brushed mask is used (one run each: weights of another working
# scale see the same portraits at their own scale, blemishes sized in millimetres)
for w in bundled=resources/models/small.safetensors candidate=$OUT/candidate.safetensors; do
  $PY -m engine.training.evaluate --offset 200 --count "$VAL" --true-mask --model "$w" \
      --json "$OUT/validation_true_mask_${w%%=*}.json" | tee "$OUT/validation_true_mask_${w%%=*}.md"
done
# the synthetic half of the ship rule; a candidate that fails it gets no evaluation tables
# (TABLES=always writes them anyway)
set +e
$PY -m engine.training.ship "$OUT" | tee "$OUT/verdict.txt"
VERDICT=${PIPESTATUS[0]}
set -e
if [ "$VERDICT" = 3 ] && [ "${TABLES:-}" != always ]; then
  echo "evaluation tables skipped: the candidate is not shipped"
  exit 0
elif [ "$VERDICT" != 0 ] && [ "$VERDICT" != 3 ]; then
  exit "$VERDICT"
fi
# the evaluation tables (first 200 held-out portraits) for the model card and the README
CAND="RetouchFormer small (candidate)=$OUT/candidate.safetensors"
$PY -m engine.training.evaluate --count "$EVAL" --true-mask --model "$CAND" --json "$OUT/eval_true_mask.json" | tee "$OUT/eval_true_mask.md"
$PY -m engine.training.evaluate --count "$EVAL" --model "$CAND" --json "$OUT/eval.json" | tee "$OUT/eval.md"
$PY -m engine.training.evaluate --count "$SIZES" --face-size 250,500,1000 --model "$CAND" --json "$OUT/eval_sizes.json" | tee "$OUT/eval_sizes.md"
$PY -m engine.training.evaluate --count "$KINDS" --by-kind --model "$CAND" --json "$OUT/eval_kinds.json" | tee "$OUT/eval_kinds.md"
