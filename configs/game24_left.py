"""game24_left: ``configs/game24_plain.py`` with the numbers left written after
every step (``notation="left"``: ``13-9=4 4 4 10\n``).

  python -m train --config configs/game24_left.py --workdir /tmp/game24_left
  python -m train.evaluate --config configs/game24_left.py \
      --workdir /tmp/game24_left --stages warm_start:3000,search_and_learn:3065 \
      --methods greedy:1,best_of_n:8 --out results/game24_left.json

Result (100 test puzzles, one run, 2-core CPU, about 58 min): greedy 31% -> 33%,
best-of-8 69% -> 54% (experiments/game24/README.md).
"""
from configs import game24_plain


def get_config():
  c = game24_plain.get_config()
  c.task.options = dict(strict=True, notation="left", max_answer_length=72)
  c.model.max_seq_len = 672
  c.search.step_length = 24
  return c
