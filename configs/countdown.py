"""countdown: 4 numbers (1-99), targets <= 100 — solver warm start, then
step-level search-and-learn over the tree KV cache (as configs/game24.py).

Run, then the results table:
  python -m train --config configs/countdown.py --workdir /tmp/countdown
  python -m train.solve_rates --config configs/countdown.py \\
      --workdir /tmp/countdown --stages warm_start:300,search_and_learn:latest \\
      --out results/countdown.json

Problems are generated (``Countdown.sample_problems``, solvable by
construction); evaluation uses 100 problems from a seed no training step
uses. Measured results (a short CPU run): README and results/countdown.json.
"""
from train.config import default_config


def get_config():
  c = default_config()
  c.task.name = "countdown"
  c.task.options = dict(num_numbers=4, max_target=100)
  c.task.strict = True
  c.data.source = "generated"
  c.model.update(num_layers=3, d_model=128, num_heads=4, num_kv_heads=2,
                 head_dim=32, mlp_dim=384, max_seq_len=288)
  c.optim.update(learning_rate=2e-3, warmup_steps=50, weight_decay=0.01)
  c.batch_size = 32
  c.warm_start.update(steps=300, data="solver", negative_fraction=0.5,
                      value_weight=1.0)
  c.search.update(steps=15, level="step", algorithm="gumbel",
                  num_simulations=8, num_children=4, capacity=32,
                  step_length=16, value_target="mix", value_mix=0.5,
                  sft_weight=0.5, replay_size=128, updates_per_search=2)
  c.checkpoint.every_steps = 50
  c.checkpoint.keep = 20
  c.log_every_steps = 10
  return c
