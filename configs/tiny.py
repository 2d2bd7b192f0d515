"""Tiny CPU smoke run: warm start on 2-digit arithmetic (well under a minute).

Run:
  python -m train --config configs/tiny.py --workdir /tmp/tiny

Expected: the answer-token loss (``loss/policy`` in metrics.jsonl) falls from
about log(23) = 3.1 to below 1.5 in 60 steps; checkpoints at steps 20, 40, 60.
"""
from train.config import default_config


def get_config():
  c = default_config()
  c.task.name = "arithmetic"
  c.task.options = dict(max_digits=2)
  c.data.source = "generated"
  c.model.update(num_layers=1, d_model=32, num_heads=2, num_kv_heads=1,
                 head_dim=16, mlp_dim=64, max_seq_len=32)
  c.optim.learning_rate = 1e-2
  c.batch_size = 32
  c.warm_start.steps = 60
  c.warm_start.corrupt_fraction = 0.25
  c.checkpoint.every_steps = 20
  c.log_every_steps = 5
  return c
