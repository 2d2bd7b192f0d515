"""game24: Game of 24 from scratch on CPU, the recipe of the headline result:
solver warm start, then search-and-learn that also teaches the policy to take
back a dead-end first step (``notation="left"``, ``retract=2``,
``experimental.retract_weight``).

  python -m train --config configs/game24.py --workdir /tmp/g24
  python -m train.evaluate --config configs/game24.py --workdir /tmp/g24 \
      --stages warm_start:3000,search_and_learn:3060 \
      --methods greedy:1,best_of_n:8,mcts:16,mcts:64 --out results/game24.json

Result (100 test puzzles under docs/protocol.md, 3 seeds, 2-core CPU, about
51 min of training each): one-attempt greedy 34.0% -> 36.7%, greedy with
take-backs (2.02 attempts) 52.7%, MCTS at 64 simulations judged by the value
head (verifier not in the search) 91.7% after search-and-learn; +6, +7 and +6
over the warm start on the three seeds measured at both checkpoints (seeds 1
and 2 retrained: 84.3% -> 90.7%) (results/game24.json,
experiments/game24/README.md).
"""
from configs import game24_plain


def get_config():
  c = game24_plain.get_config()
  # The numbers left written after each step; an answer may take back its
  # first step twice.
  c.task.options = dict(strict=True, notation="left", retract=2,
                        max_answer_length=128)
  c.model.max_seq_len = 736
  c.search.step_length = 24
  # The warm start's solver traces never retract: pad them to
  # configs/game24_left.py's P + 72 = 88 positions, not P + 128 (half the
  # warm-start time on CPU).
  c.data.max_len = 88
  c.search.steps = 60
  c.experimental.update(retract_weight=1.0, anchor_weight=1.0,
                        choice_tokens_only=True)
  return c
