"""connect_four: supervised warm start on the task's reference move traces.

Run:
  python -m train --config configs/connect_four.py --workdir /tmp/c4

Search-and-learn for two-player games is not wired into the trainer yet
(``search.steps = 0``): the value target needs the sign flip per move
(``train.targets.two_player_outcome``). Expected results: not yet measured.
"""
from train.config import default_config


def get_config():
  c = default_config()
  c.task.name = "connect_four"
  c.task.options = dict()
  c.data.source = "generated"
  c.model.update(num_layers=4, d_model=256, num_heads=8, num_kv_heads=4,
                 head_dim=32, mlp_dim=768, max_seq_len=64)
  c.optim.update(learning_rate=1e-3, warmup_steps=200)
  c.batch_size = 256
  c.warm_start.update(steps=2000, value_weight=0.0)
  c.search.steps = 0
  return c
