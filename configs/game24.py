"""game24: Game of 24 from scratch on CPU — solver warm start, then step-level
search-and-learn over the tree KV cache.

Run (39 minutes on a shared 2-core CPU), then the results table:
  python -m train --config configs/game24.py --workdir /tmp/game24
  python -m train.solve_rates --config configs/game24.py --workdir /tmp/game24 \\
      --stages warm_start:1000,search_and_learn:1060 --out results/game24.json

The environment is ``train.strict.StrictCountdown`` (``task.strict``): the
legal mask enforces the game's rules (operands available, exact results),
so only the choice of numbers and operators is learned. Warm start:
``train.puzzle_data`` (random one of all solutions of a train-split puzzle
with its numbers shuffled, plus random derivations labelled by the exact
solver for the value head). Search-and-learn: step-level Gumbel MCTS (a step
is one ``a op b = c`` line), trained from a replay buffer. Only the ToT
train split (ranks outside 901-1000 and outside the validation split) is
used for training. Measured on the 100 test puzzles (README,
results/game24.json): after the warm start greedy 15%, best-of-8 26%, MCTS
41% at 64 simulations per move; these search-and-learn settings lowered
them (11% / 17% / 21%); SFT on solved searches instead
(search.policy_weight=0, sft_weight=1) kept greedy at 14%.
"""
from train.config import default_config


def get_config():
  c = default_config()
  c.task.name = "game24"
  c.task.options = dict()
  c.task.strict = True
  c.data.source = "generated"  # train-split puzzles, numbers shuffled
  c.model.update(num_layers=3, d_model=128, num_heads=4, num_kv_heads=2,
                 head_dim=32, mlp_dim=384, max_seq_len=256)
  c.optim.update(learning_rate=2e-3, warmup_steps=100, weight_decay=0.01)
  c.batch_size = 64
  c.warm_start.update(steps=1000, data="solver", negative_fraction=0.5,
                      value_weight=1.0)
  c.search.update(steps=60, level="step", algorithm="gumbel",
                  num_simulations=8, num_children=4, capacity=32,
                  step_length=16, value_target="mix", value_mix=0.5,
                  sft_weight=0.5, replay_size=256, updates_per_search=2)
  c.checkpoint.every_steps = 50
  c.checkpoint.keep = 40
  c.log_every_steps = 20
  c.eval.update(split="test", num_examples=100, batch_size=100,
                best_of_n=(8,), mcts_budgets=(16, 64))
  return c
