"""game24_retract: ``configs/game24_left.py`` where an answer may take back
its first step (``task.retract``) and search-and-learn teaches when.

The strict rules allow ``:`` then ``\\n`` right after the first step's
line, at most twice per answer: the puzzle's numbers return and that step
is barred (``13-9=4 4 4 10\\n:\\n...``). The warm start never shows it;
the search steps train the probability of ``:`` after each candidate
first step toward one minus the tree's Q value of that step
(``search.retract_weight``), and, on solved rollouts whose first move had
a candidate the search found dead, the language model on that candidate,
``:``, then the solved answer (what to write after taking a step back; at
``search.retract_weight * search.sft_weight``). So greedy decoding can
take back a first step the search would have found dead and try another.
``bench/game24_value_greedy.py`` ("retracting first step keeps") bounds
what this can give: on the game24_left warm start 29% -> 44% / 57% with
one / two retractions judged as well as the value head judges.

Run (warm start as configs/game24_left.py, then search steps):
  python -m train --config configs/game24_retract.py --workdir /tmp/g24r
  python bench/game24_value_greedy.py --config configs/game24_retract.py \\
      --workdir /tmp/g24r --steps 3000,3010,3020,3030 --novalue

Measured (2-core AMD EPYC, jax 0.10.2 CPU; continued from a copy of the
step-3000 configs/game24_left.py warm start, greedy on 100 puzzles;
BENCHMARKS.md "Taking back a dead-end first step, taught by
search-and-learn"): test greedy 30% -> 33% / 44% / 52% at steps 3010 /
3020 / 3030, validation 39% -> 36% / 49% / 52%; at 3030 15 of the test
puzzles are solved after a retraction, and 83 of the 87 first steps taken
back left no solution. Search steps about 48 s each here. Not yet
measured: a from-scratch run timed alone and its solve_rates table.

Answers are longer (two retractions add up to 52 tokens):
``max_answer_length`` 128, ``model.max_seq_len`` 736. Anchored, choice
tokens only (run E of BENCHMARKS.md, the steadiest of the game24_left
search-and-learn variants).
"""
from configs import game24_left


def get_config():
  c = game24_left.get_config()
  c.task.retract = 2
  c.task.options = dict(max_answer_length=128)
  c.model.max_seq_len = 736
  # The warm start's solver traces never retract: pad them to
  # configs/game24_left.py's P + 72 = 88 positions, not P + 128 (half the
  # warm-start time on CPU).
  c.data.max_len = 88
  c.search.update(retract_weight=1.0, anchor_weight=1.0,
                  choice_tokens_only=True, steps=60)
  return c
