"""game24_left_first: ``configs/game24_left.py`` with every step that leaves
more than one number starting with those numbers instead of ending with them (``task.left_first``:
``4 4 10:13-9=4\\n4 6:10-4=6\\n4*6=24``).

Run, then the results table (as for ``configs/game24.py``):
  python -m train --config configs/game24_left_first.py --workdir /tmp/g24f
  python -m train.solve_rates --config configs/game24_left_first.py \\
      --workdir /tmp/g24f --stages warm_start:3000,search_and_learn:3065 \\
      --methods greedy:1,best_of_n:8,mcts:16,mcts:64 \\
      --out results/game24_left_first.json

The strict environment lets the prefix name only positions one legal step
reaches, then only the steps that reach it. So the policy's first choice
is the position it moves to (an afterstate), a function of three numbers
that recurs across puzzles, instead of a step whose consequence it has to
work out; ``configs/game24_left.py`` writes the same numbers after the
step, where only the value head reads them. Answers and steps as long as
there: ``max_answer_length`` 72, ``search.step_length`` 24,
``model.max_seq_len`` 672.

Measured (2-core CPU, greedy by ``bench/game24_value_greedy.py --novalue``):
after the warm start (step 3000) test greedy 32%, validation 45%, train
71%, value-greedy 96% on test (no better than ``configs/game24_left.py``);
after the search steps greedy falls: test 19% / 12% at steps 3030 / 3065,
validation 46% / 38%. The search steps took about 100 min here, sharing
the CPU with other jobs, so this config is not within the 60 minutes.
"""
from configs import game24_left


def get_config():
  c = game24_left.get_config()  # its answer, step and sequence lengths
  c.task.show_left = False
  c.task.left_first = True
  return c
