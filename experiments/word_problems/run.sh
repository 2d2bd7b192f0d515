#!/usr/bin/env bash
# One seed of the word-problems recipe (configs/word_problems.py): train,
# then evaluate the warm start and the search-and-learn checkpoints.
#
#   bash experiments/word_problems/run.sh SEED WORKDIR OUT_JSON SPLITS
#
# SPLITS: "validation" (tuning) or "test" (the final recipe, once).
# In-distribution split: greedy. Out-of-distribution split (<split>_ood):
# greedy and the searches without the answer key, at 16 samples / 16
# simulations per step.
set -euo pipefail
seed=${1:?seed}; wd=${2:?workdir}; out=${3:?out json}; split=${4:?split}
cfg=configs/word_problems.py
n=${NUM_PROBLEMS:-300}
python -m train --config $cfg --workdir "$wd" --config.seed="$seed" \
    --config.progress_bar=False
ws=$(python -c "from train import config as c; print(c.load_config_file('$cfg').warm_start.steps)")
stages="warm_start:$ws,search_and_learn:latest"
ev() {
  python -m train.evaluate --config $cfg --workdir "$wd" --config.seed="$seed" \
      --stages "$stages" --seed "$seed" --num_problems "$n" --out "$out" \
      --config.search.verifier_in_search=False --config.search.max_moves=10 "$@"
}
ev --split "$split" --methods greedy:1
ev --split "${split}_ood" --methods greedy:1,best_of_n:16,beam:16,particle_filter:16,mcts:16
ev --split "${split}_ood" --methods best_of_n:16 --options best_of_n.aggregate=majority
