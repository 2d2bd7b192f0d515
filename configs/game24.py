"""game24: Game of 24 from scratch on CPU — the recipe that meets the goal:
solver warm start, then search-and-learn that teaches the policy to take
back a dead-end first step.

``configs/game24_left.py`` (itself ``configs/game24_plain.py`` with the
numbers left written after each step) where an answer may take back its
first step (``task.retract``) and search-and-learn teaches when. The
strict rules allow ``:`` then ``\\n`` right after the first step's line, at
most twice per answer: the puzzle's numbers return and that step is barred
(``13-9=4 4 4 10\\n:\\n...``). The warm start never shows it; the search
steps train the probability of ``:`` after each candidate first step
toward one minus the tree's Q value of that step
(``search.retract_weight``), and, on solved rollouts whose first move had a
candidate the search found dead, the language model on that candidate,
``:``, then the solved answer (at ``search.retract_weight *
search.sft_weight``). So greedy decoding can take back a first step the
search would have found dead and try another.

Run (about 51 minutes on a 2-core CPU: warm start 3000 steps, then 60
search steps of about 39 s), then the results table:
  python -m train --config configs/game24.py --workdir /tmp/g24
  python -m train.solve_rates --config configs/game24.py --workdir /tmp/g24 \\
      --stages warm_start:3000,search_and_learn:3060 \\
      --methods greedy:1,best_of_n:8,mcts:16,mcts:64 --out results/game24.json
  python bench/game24_value_greedy.py --config configs/game24.py \\
      --workdir /tmp/g24 --steps 3000,3010,3020,3030,3040,3050,3060 --novalue

Measured (2-core AMD EPYC, jax 0.10.2 CPU, alone; README,
results/game24.json, BENCHMARKS.md "Taking back a dead-end first step"):
51 min wall clock (warm start 11.8 min, 60 search steps 39 s each); on
the 100 test puzzles greedy 34% -> 49% (+15; validation 47% -> 57%),
best-of-8 71% -> 79%, MCTS 71% / 90% at 16 / 64 simulations per move at
the warm start, 65% / 89% after search-and-learn, and 77% / 95% when that
checkpoint's MCTS searches without take-backs (``--config.task.retract=0
--config.search.retract_weight=0`` on ``train.solve_rates``: the tree
tries other first steps itself). One run: 100 puzzles give a standard error of
about 5 points.

Answers are longer (two retractions add up to 52 tokens):
``max_answer_length`` 128, ``model.max_seq_len`` 736; the warm start's
traces never retract and are padded to 88 positions (``data.max_len``).
Anchored (``search.anchor_weight``), choice tokens only
(``search.choice_tokens_only``).
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
