"""connect_four: two-player search-and-learn from scratch (self-play).

There is no reference solution, so there is no warm start: every step is
token-level Gumbel MCTS self-play over the tree KV cache (a token is a
column), values from the point of view of the player to move (discount -1),
value target the game's result with its sign flipped every move.

Run, then matches against baselines:
  python -m train --config configs/connect_four.py --workdir /tmp/c4
  python -m train.play --config configs/connect_four.py --workdir /tmp/c4 \\
      --simulations 16,64 --out results/connect_four.json

Measured (a short CPU run): README and results/connect_four.json.
"""
from train.config import default_config


def get_config():
  c = default_config()
  c.task.name = "connect_four"
  # Openings of at most 6 moves cannot contain a win: ConnectFour's
  # sample_problems raises on an opening that continues after a win.
  c.task.options = dict(max_opening=6)
  c.data.source = "generated"  # random legal openings of 0-6 moves
  c.model.update(num_layers=2, d_model=64, num_heads=4, num_kv_heads=2,
                 head_dim=16, mlp_dim=192, max_seq_len=128)
  c.optim.update(learning_rate=2e-3, warmup_steps=5)
  c.batch_size = 32
  c.warm_start.steps = 0
  c.search.update(steps=300, level="token", algorithm="gumbel",
                  num_simulations=16, num_children=7, capacity=64,
                  value_target="outcome", replay_size=256,
                  updates_per_search=2)
  c.checkpoint.every_steps = 50
  c.log_every_steps = 10
  return c
