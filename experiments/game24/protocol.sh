#!/usr/bin/env bash
# Issue 32's protocol run of the Game of 24 recipe (configs/game24.py) for one
# training seed: train (warm start 3000 steps, 60 search-and-learn steps),
# then evaluate a method list fixed in advance on SPLIT, at the warm start
# and after search-and-learn, with the evaluation key equal to the seed.
#
#   bash experiments/game24/protocol.sh SEED ROOT OUT [SPLIT]
#
# SPLIT is validation while recipes are compared; test is run once per final
# recipe and seed (docs/protocol.md). Rows (all with verifier_in_search and
# attempts_mean):
#   greedy:1                 take-backs allowed and counted (attempts_mean)
#   greedy:1, no take-backs  single attempt (task.retract=0)
#   best_of_n:8              value-picked
#   mcts:64, value judged    no take-backs; the verifier is used for nothing
#                            inside the search: the value head judges each
#                            sampled final step instead (lookahead, pruning
#                            and acting on a judged solution, as the
#                            recipe's search does with the verifier;
#                            search.verifier_in_search=False alone)
#   mcts:64, value only      no take-backs; the verifier is used for nothing
#                            and nothing judges sampled steps ahead (no
#                            terminal reward, no lookahead, no acting on
#                            solved slots); only with PLAIN_VALUE_MCTS=1
#                            (seed 1's row; from seed 2 on optional: about
#                            25 min per checkpoint on 2 CPU cores)
#   mcts:64, verifier        no take-backs; the recipe's solver-like search
#                            (only with VERIFIER_MCTS=1: it takes as long as
#                            the rest together on 2 CPU cores)
# ROOT/seed<SEED> keeps the checkpoints; training is skipped when its last
# checkpoint exists, or with TRAIN=0 (to evaluate the warm start while the
# search steps still run). STAGES (default both) picks warm_start and/or
# search_and_learn. MCTS=0 skips the value-judged MCTS row (the slow one:
# 20-40 min per checkpoint on 2 CPU cores), MCTS_ONLY=1 runs only it: the
# two halves of one protocol run, for when the cores are short.
set -euo pipefail
seed=${1:?seed}; root=${2:?root}; out=${3:?out}; split=${4:-validation}
cfg=configs/game24.py
wd="$root/seed$seed"
stages=${STAGES:-warm_start:3000,search_and_learn:3060}
if [ "${TRAIN:-1}" != 0 ] && [ ! -d "$wd/checkpoints/3060" ]; then
  python -m train --config $cfg --workdir "$wd" --config.seed="$seed" \
      --config.progress_bar=False
fi
no_retract=(--config.task.options.retract=0
            --config.experimental.retract_weight=0)
value_only=(--config.search.verifier_in_search=False
            --config.search.act_on_solved=False
            --config.search.terminal_lookahead=False
            --config.search.prune_terminal_slots=False)
ev=(python -m train.evaluate --config $cfg --workdir "$wd" --split "$split"
    --seed "$seed" --stages "$stages" --out "$out")
if [ "${MCTS_ONLY:-0}" != 1 ]; then
  "${ev[@]}" --methods greedy:1,best_of_n:8
  "${ev[@]}" --methods greedy:1 "${no_retract[@]}"
fi
if [ "${MCTS:-1}" != 0 ]; then
  "${ev[@]}" --methods mcts:64 "${no_retract[@]}" \
      --config.search.verifier_in_search=False
fi
if [ "${PLAIN_VALUE_MCTS:-0}" = 1 ]; then
  "${ev[@]}" --methods mcts:64 "${no_retract[@]}" "${value_only[@]}"
fi
if [ "${VERIFIER_MCTS:-0}" = 1 ]; then
  "${ev[@]}" --methods mcts:64 "${no_retract[@]}"
fi
