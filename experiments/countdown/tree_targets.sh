#!/usr/bin/env bash
# Training targets from the searched tree, compared at equal compute on
# Countdown (issue 32): one warm start (configs/countdown.py, 300 steps),
# then STEPS search-and-learn steps per variant (default 30), each training
# the policy on
# one target (the value term as in the config in all of them):
#   visits    the search's visit weights (policy_weight=1)
#   sft       SFT on solved answers, the best path (sft_weight=1)
#   step_dpo  step-DPO on sibling steps ranked by Q (step_dpo_weight=1)
#   pav       process advantages A = Q - V from the tree: dense step-value
#             targets and the policy gradient -A log pi (pav_*_weight=1)
# and the validation rows of each (greedy; MCTS 16 simulations with the
# config's verifier lookahead, and value-only).
#
#   bash experiments/countdown/tree_targets.sh SEED ROOT OUT [SPLIT [STEPS]]
set -euo pipefail
seed=${1:-0}; root=${2:-/tmp/cd_targets}; out=${3:-results/countdown.json}
split=${4:-validation}; steps=${5:-30}; last=$((300 + steps))
cfg=configs/countdown.py
common=(--config.seed="$seed" --config.progress_bar=False
        --config.search.steps="$steps")
mkdir -p "$root"
if [ ! -d "$root/warm" ]; then
  python -m train --config $cfg --workdir "$root/warm" "${common[@]}" \
      --config.search.steps=0
fi
# Value-only MCTS: the verifier is used for nothing inside the search.
value_only=(--config.search.verifier_in_search=False
            --config.search.act_on_solved=False
            --config.search.terminal_lookahead=False
            --config.search.prune_terminal_slots=False)
source "$(dirname "$0")/../tree_target_variants.sh"  # off, variant[...]
variants=${VARIANTS:-visits sft step_dpo pav}
for name in $variants; do
  dir="$root/$name"
  [ -d "$dir" ] || cp -r "$root/warm" "$dir"
  # shellcheck disable=SC2086
  python -m train --config $cfg --workdir "$dir" "${common[@]}" "${off[@]}" \
      ${variant[$name]}
done
python -m train.evaluate --config $cfg --workdir "$root/warm" \
    --stages warm_start:300 --split "$split" --num_problems 100 \
    --methods greedy:1,mcts:16 --out "$out"
python -m train.evaluate --config $cfg --workdir "$root/warm" \
    --stages warm_start:300 --split "$split" --num_problems 100 \
    --methods mcts:16 "${value_only[@]}" --out "$out"
for name in $variants; do
  python -m train.evaluate --config $cfg --workdir "$root/$name" \
      --stages "$name:$last" --split "$split" --num_problems 100 \
      --methods greedy:1,mcts:16 --out "$out"
  python -m train.evaluate --config $cfg --workdir "$root/$name" \
      --stages "$name:$last" --split "$split" --num_problems 100 \
      --methods mcts:16 "${value_only[@]}" --out "$out"
done
