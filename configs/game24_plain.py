"""game24_plain: Game of 24 under the game's rules (``strict=True``), solver warm
start, then step-level search-and-learn; the base of the other game24 configs.

  python -m train --config configs/game24_plain.py --workdir /tmp/g24p
  python -m train.evaluate --config configs/game24_plain.py \
      --workdir /tmp/g24p --stages warm_start:3000,search_and_learn:3065 \
      --methods greedy:1,best_of_n:8,mcts:16,mcts:64 \
      --out results/game24_plain.json

Result (100 test puzzles, one run, 2-core CPU, about 42 min): greedy 15% -> 22%,
MCTS at 64 simulations 91% -> 95% (experiments/game24/README.md).
"""
from train import experimental
from train.config import default_config


def get_config():
  c = default_config()
  c.task.name = "game24"
  c.task.options = dict(strict=True)
  c.data.source = "generated"  # train-split puzzles, numbers shuffled
  # max_seq_len 448: step-level training packs each trajectory with its
  # 3 moves x 8 candidate steps of 16 tokens (RoPE: no parameter depends
  # on it).
  c.model.update(num_layers=3, d_model=128, num_heads=4, num_kv_heads=2,
                 head_dim=32, mlp_dim=384, max_seq_len=448)
  c.optim.update(learning_rate=2e-3, warmup_steps=100, weight_decay=0.01)
  c.batch_size = 64
  c.warm_start.update(steps=3000, data="solver", negative_fraction=0.5,
                      value_weight=1.0)
  # Search-and-learn: step-level PUCT over 8 distinct sampled steps per
  # node, acting on a verified solution when the tree holds one; half the
  # rows are train-split puzzles, half puzzles beyond the ranked list (a
  # number in 14..20, verifier only); targets: the search's weights over
  # the 8 candidates on solved rollouts only, SFT on solved rollouts, the
  # value head's one-step lookahead over the 8 candidates on every move,
  # value = mix of outcome and tree value on all. Constant learning rate
  # (the warm start's schedule ends at 2e-4).
  c.search.update(steps=65, level="step", algorithm="puct",
                  num_simulations=16, num_children=8, capacity=32,
                  step_length=16, act_on_solved=True,
                  terminal_lookahead=True, prune_terminal_slots=True,
                  policy_weight=1.0, sft_weight=1.0, value_target="mix",
                  value_mix=0.5, value_weight=0.5, replay_size=256,
                  updates_per_search=2, policy_on_solved=True)
  c.experimental = experimental.config(
      step_policy_loss="candidates", search_learning_rate=2e-4,
      value_policy_weight=1.0, value_policy_scale=10.0,
      search_problem_split="train+extended")
  c.checkpoint.every_steps = 10
  c.checkpoint.warm_start_every_steps = 100  # each save costs ~0.4 s here
  c.checkpoint.keep = 40
  c.log_every_steps = 5
  # Evaluation MCTS samples K=32 distinct steps per node (the training
  # search's K=8 keeps the packed step targets short).
  # No end-of-run table (train.summary): MCTS at K=32 takes minutes per
  # checkpoint on CPU; evaluate with python -m train.evaluate instead.
  c.eval.summary = False
  c.eval.update(split="test", num_examples=100, batch_size=100,
                best_of_n=(8,), mcts_budgets=(16, 64), mcts_num_children=32)
  return c
