"""arithmetic: 3-digit arithmetic, warm start on reference solutions (TFDS data,
built into <workdir>/data on first use), then token-level search-and-learn.
Sized for one GPU; on CPU shrink it (--config.batch_size=32
--config.warm_start.steps=200).

  python -m train --config configs/arithmetic.py --workdir /tmp/arithmetic
  python -m train.evaluate --config configs/arithmetic.py --workdir /tmp/arithmetic

Result: not measured yet.
"""
from train.config import default_config


def get_config():
  c = default_config()
  c.task.name = "arithmetic"
  c.task.options = dict(max_digits=3)
  c.data.source = "tfds"
  c.model.update(num_layers=4, d_model=256, num_heads=8, num_kv_heads=4,
                 head_dim=32, mlp_dim=768, max_seq_len=32)
  c.optim.update(learning_rate=1e-3, warmup_steps=200, weight_decay=0.01)
  c.batch_size = 256
  c.warm_start.update(steps=2000, corrupt_fraction=0.25)
  c.search.update(steps=200, algorithm="gumbel", num_simulations=16,
                  num_children=4, capacity=1024, value_target="mix",
                  sft_weight=0.5)
  c.checkpoint.every_steps = 250
  c.log_every_steps = 50
  return c
