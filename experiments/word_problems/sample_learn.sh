#!/usr/bin/env bash
# Sample-and-learn (search.method=sample) from variant G's warm start
# (train 2-6 operations, out of distribution 7-8), then the rows that
# compare it with the warm start: greedy in distribution, greedy and
# best-of-16 (value-weighted and majority vote, no answer key) out of
# distribution, and pass@16 (verifier picks; labelled as such).
#
#   bash experiments/word_problems/sample_learn.sh WARM_WORKDIR WORKDIR OUT SPLIT [STEPS]
#
# WARM_WORKDIR holds the warm start's checkpoint 2000 (variant G, see
# README.md); it is copied into WORKDIR, which the search steps extend.
# SPLIT: validation (tuning) or test (the final recipe, once).
set -euo pipefail
warm=${1:?warm-start workdir}; wd=${2:?workdir}; out=${3:?out json}
split=${4:?split}; steps=${5:-60}
stage=${STAGE:-sample_learn_G}
G=("--config.task.options.train_ops=(2,6)" "--config.task.options.test_ops=(7,8)"
   --config.task.options.max_prompt_length=208
   --config.task.options.max_answer_length=192 --config.data.max_len=320)
if [ ! -d "$wd/checkpoints/2000" ]; then
  mkdir -p "$wd/checkpoints" && cp -r "$warm/checkpoints/2000" "$wd/checkpoints/"
fi
python -m train --config configs/word_problems.py --workdir "$wd" "${G[@]}" \
    --config.search.steps="$steps" --config.search.method=sample \
    --config.search.num_samples=8 --config.search.value_weight=1.0 \
    --config.search.sft_weight=1.0 --config.search.replay_size=0 \
    --config.experimental.anchor_weight=1.0 \
    --config.checkpoint.every_steps=10 --config.log_every_steps=1 \
    --config.eval.summary=False --config.progress_bar=False \
    ${TRAIN_FLAGS:-}
last=$((2000 + steps))
ev() {
  python -m train.evaluate --config configs/word_problems.py --workdir "$wd" \
      "${G[@]}" --stages "$stage:$last" --out "$out" \
      --config.search.verifier_in_search=False --config.search.max_moves=10 "$@"
}
ev --split "$split" --num_problems 300 --methods greedy:1
ev --split "${split}_ood" --num_problems 200 --methods greedy:1,best_of_n:16
ev --split "${split}_ood" --num_problems 200 --methods best_of_n:16 \
    --options best_of_n.aggregate=majority
ev --split "${split}_ood" --num_problems 200 --methods best_of_n:16 \
    --options best_of_n.terminal_score=verifier
