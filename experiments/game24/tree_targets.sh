#!/usr/bin/env bash
# Training targets from the searched tree, compared at equal compute on the
# Game of 24 (issue 32; the Countdown half is experiments/countdown/
# tree_targets.sh). From one warm start of configs/game24.py (step 3000 of a
# protocol seed, WARM), STEPS search-and-learn steps per variant (default 10),
# the recipe's search, value term, anchor and take-back term in all of them;
# only the policy target differs:
#   visits    the search's visit weights (search.policy_weight=1)
#   sft       SFT on solved answers, the best path (search.sft_weight=1)
#   step_dpo  step-DPO on sibling steps ranked by Q (step_dpo_weight=1)
#   pav       process advantages A = Q - V from the tree (pav_*_weight=1)
# (the recipe trains visits + sft + the value-policy term together: its own
# checkpoint at 3000 + STEPS is the "recipe" row). Rows on SPLIT, evaluation
# key SEED, no take-backs: greedy (one attempt), best-of-8 value-picked, and
# MCTS at 16 simulations per move judged by the value head (no verifier in
# the search).
#
#   bash experiments/game24/tree_targets.sh SEED WARM ROOT OUT [SPLIT [STEPS]]
#
# VARIANTS picks the variants (default: sft step_dpo pav visits; `none` is
# the control with every policy target off); BASELINES=0 skips the warm
# start and recipe rows; SUFFIX is appended to every stage name (`_rerun`
# for a retrained seed, docs/protocol.md "Reruns").
# WARM is a protocol workdir (experiments/game24/protocol.sh) holding
# checkpoints/3000; each variant trains in ROOT/<variant> from a copy of it.
set -euo pipefail
seed=${1:?seed}; warm=${2:?warm workdir}; root=${3:?root}; out=${4:?out}
split=${5:-validation}; steps=${6:-10}; last=$((3000 + steps))
suffix=${SUFFIX:-}
cfg=configs/game24.py
common=(--config.seed="$seed" --config.progress_bar=False
        --config.search.steps="$steps")
source "$(dirname "$0")/../tree_target_variants.sh"  # off, variant[...]
variants=${VARIANTS:-sft step_dpo pav visits}
no_retract=(--config.task.options.retract=0
            --config.experimental.retract_weight=0)
evaluate() {  # workdir stage:step
  local ev=(python -m train.evaluate --config $cfg --workdir "$1"
            --split "$split" --seed "$seed" --stages "$2" --out "$out"
            "${no_retract[@]}")
  "${ev[@]}" --methods greedy:1,best_of_n:8
  "${ev[@]}" --methods mcts:16 --config.search.verifier_in_search=False
}
mkdir -p "$root"
if [ "${BASELINES:-1}" = 1 ]; then
  evaluate "$warm" "targets_warm_start$suffix:3000"
  [ -d "$warm/checkpoints/$last" ] && evaluate "$warm" "targets_recipe$suffix:$last"
fi
for name in $variants; do
  dir="$root/$name"
  if [ ! -d "$dir" ]; then
    mkdir -p "$dir/checkpoints"
    cp "$warm/config.json" "$dir/"
    cp -r "$warm/checkpoints/3000" "$dir/checkpoints/"
  fi
  if [ ! -d "$dir/checkpoints/$last" ]; then
    # shellcheck disable=SC2086
    python -m train --config $cfg --workdir "$dir" "${common[@]}" "${off[@]}" \
        ${variant[$name]}
  fi
  evaluate "$dir" "targets_$name$suffix:$last"
done
