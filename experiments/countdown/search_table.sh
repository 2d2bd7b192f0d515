#!/usr/bin/env bash
# The search half of issue 32's compute-matched table: every checkpoint of
# tree_targets.sh (warm start and the four training targets) searched by
# best-of-N, beam and best-first, each without the verifier (finished
# answers ranked by the value head) and with it (terminal_score=verifier:
# the verifier ranks the finished candidates, so best-of-N becomes pass@N).
# MCTS rows come from tree_targets.sh. Compute per problem (model calls,
# tokens forwarded) is in every row.
#
#   bash experiments/countdown/search_table.sh ROOT OUT [SPLIT [STEPS]]
#
# Countdown by default; the Game of 24 half (experiments/game24/
# tree_targets.sh's checkpoints) sets CONFIG=configs/game24.py WARM_STEP=3000
# and FLAGS (its evaluation key and no take-backs; see
# experiments/game24/README.md).
set -euo pipefail
root=${1:-/tmp/cd_targets}; out=${2:-results/countdown.json}
split=${3:-validation}; steps=${4:-30}
cfg=${CONFIG:-configs/countdown.py}; warm=${WARM_STEP:-300}
last=$((warm + steps))
methods=${METHODS:-best_of_n:16,beam:16,best_first:16}
read -r -a flags <<< "${FLAGS:-}"
stages=("warm:warm_start:$warm" "visits:visits:$last" "sft:sft:$last"
        "step_dpo:step_dpo:$last" "pav:pav:$last")
if [ -n "${STAGES:-}" ]; then read -r -a stages <<< "$STAGES"; fi
for s in "${stages[@]}"; do
  IFS=: read -r dir label step <<< "$s"
  for score in value verifier; do
    python -m train.evaluate --config "$cfg" --workdir "$root/$dir" \
        --stages "$label:$step" --split "$split" --num_problems 100 \
        --methods "$methods" --options "*.terminal_score=$score" \
        --out "$out" "${flags[@]}"
  done
done
