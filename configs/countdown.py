"""countdown: 4 numbers (1-99), targets <= 100, under the game's rules: solver
warm start, then step-level search-and-learn (as configs/game24_plain.py).

  python -m train --config configs/countdown.py --workdir /tmp/countdown
  python -m train.evaluate --config configs/countdown.py \
      --workdir /tmp/countdown --stages warm_start:300,search_and_learn:345 \
      --methods greedy:1,best_of_n:8,mcts:16,mcts:64 --out results/countdown.json

Result (100 held-out problems, one run, 2-core CPU, about 13 min): greedy
12% -> 13%, MCTS at 64 simulations 85% -> 85% (results/countdown.json).
"""
from train import experimental
from train.config import default_config


def get_config():
  c = default_config()
  c.task.name = "countdown"
  c.task.options = dict(num_numbers=4, max_target=100, strict=True)
  c.data.source = "generated"
  # max_seq_len 464: step-level training packs each trajectory (458
  # positions: prompt, answer, 3 moves x 8 candidate steps of 16 tokens;
  # RoPE: no parameter depends on it).
  c.model.update(num_layers=3, d_model=128, num_heads=4, num_kv_heads=2,
                 head_dim=32, mlp_dim=384, max_seq_len=464)
  c.optim.update(learning_rate=2e-3, warmup_steps=50, weight_decay=0.01)
  c.batch_size = 32
  c.warm_start.update(steps=300, data="solver", negative_fraction=0.5,
                      value_weight=1.0)
  # The search of configs/game24_plain.py (PUCT over K=8 distinct sampled steps,
  # verifier lookahead + pruning, acting on a verified solution); every
  # search step draws new generated problems; the policy learns the
  # search's weights on verified rollouts only and the value head's one-step
  # lookahead over its K candidates on every move.
  c.search.update(steps=45, level="step", algorithm="puct",
                  num_simulations=16, num_children=8, capacity=32,
                  step_length=16, act_on_solved=True,
                  terminal_lookahead=True, prune_terminal_slots=True,
                  policy_on_solved=True, policy_weight=1.0, sft_weight=1.0,
                  value_target="mix", value_mix=0.5, value_weight=0.5,
                  replay_size=128, updates_per_search=2)
  c.experimental = experimental.config(
      step_policy_loss="candidates", search_learning_rate=2e-4,
      value_policy_weight=1.0, value_policy_scale=10.0)
  c.checkpoint.every_steps = 15
  c.checkpoint.keep = 20
  c.log_every_steps = 5
  c.eval.summary = False  # minutes on CPU: use python -m train.evaluate
  c.eval.update(split="test", num_examples=100, batch_size=100,
                best_of_n=(8,), mcts_budgets=(16, 64), mcts_num_children=32)
  return c
