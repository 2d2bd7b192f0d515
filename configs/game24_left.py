"""game24_left: ``configs/game24_plain.py`` with the numbers left written after
every step (``task.show_left``: ``13-9=4 4 4 10\\n``).

Run, then the results table (as for ``configs/game24_plain.py``):
  python -m train --config configs/game24_left.py --workdir /tmp/game24_left
  python -m train.solve_rates --config configs/game24_left.py \\
      --workdir /tmp/game24_left --stages warm_start:3000,search_and_learn:3065 \\
      --methods greedy:1,best_of_n:8 --out results/game24_left.json

The suffix tokens are forced by the strict environment, so the policy makes
the same choices as in ``configs/game24_plain.py``; what changes is what the value
head reads at the end of each step: the position written out, which the
same model learns far better (``bench/game24_value_probe.py``). Answers and
steps are longer: ``max_answer_length`` 72, ``search.step_length`` 24
(99.6% of solver steps fit), packed step targets up to 3 moves x 8
candidates x 24 tokens (``model.max_seq_len`` 672).

Measured on the 100 test puzzles (2-core CPU, about 58 min of training;
README, results/game24_left.json): after the warm start greedy 31%,
best-of-8 69% (configs/game24_plain.py: 15% / 48%); after the 65 search steps
greedy 33% (31-45% over the checkpoints 3010-3060), best-of-8 54%.
"""
from configs import game24_plain


def get_config():
  c = game24_plain.get_config()
  c.task.show_left = True
  c.task.options = dict(max_answer_length=72)
  c.model.max_seq_len = 672
  c.search.step_length = 24
  return c
