"""connect_four: two-player search-and-learn from scratch (self-play, no warm
start: the task has no reference solutions).

  python -m train --config configs/connect_four.py --workdir /tmp/c4
  python experiments/connect_four/play.py --config configs/connect_four.py \
      --workdir /tmp/c4 --simulations 16,64 --out results/connect_four.json

Result: results/connect_four.json (experiments/connect_four/README.md).
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
  c.eval.summary = False  # games are measured by matches (play.py)
  c.checkpoint.every_steps = 50
  c.log_every_steps = 10
  return c
