"""game24_left_first: ``configs/game24_plain.py`` with each step that leaves more
than one number starting with them (``notation="left_first"``:
``4 4 10:13-9=4\n4 6:10-4=6\n4*6=24``).

  python -m train --config configs/game24_left_first.py --workdir /tmp/g24f
  python -m train.evaluate --config configs/game24_left_first.py \
      --workdir /tmp/g24f --stages warm_start:3000,search_and_learn:3065 \
      --methods greedy:1,best_of_n:8,mcts:16,mcts:64 \
      --out results/game24_left_first.json

Result (one run, 2-core CPU): test greedy 32% at the warm start, 12% after the
search steps (experiments/game24/README.md).
"""
from configs import game24_plain


def get_config():
  c = game24_plain.get_config()
  c.task.options = dict(strict=True, notation="left_first",
                        max_answer_length=72)
  c.model.max_seq_len = 672
  c.search.step_length = 24
  return c
