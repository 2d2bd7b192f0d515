"""Tiny CPU smoke run: warm start on 2-digit arithmetic, then a few
search-and-learn steps (token-level Gumbel search), in under a minute.

Run:
  python -m train --config configs/tiny.py --workdir /tmp/tiny
  python -m train.evaluate --config configs/tiny.py --workdir /tmp/tiny

Expected: the answer-token loss (``loss/policy`` in metrics.jsonl) falls from
about 3.2 to about 1.9 over the 60 warm-start steps (measured on CPU);
checkpoints at steps 20, 40, 60 and 64. The model is far too small and
short-trained to solve much: this run checks the machinery, not accuracy.
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
  c.search.update(steps=4, algorithm="gumbel", num_simulations=4,
                  num_children=3, capacity=32, value_target="mix")
  c.checkpoint.every_steps = 20
  c.log_every_steps = 5
  return c
