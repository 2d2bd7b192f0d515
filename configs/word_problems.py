"""word_problems: math word problems in words, learned from scratch on CPU.

Problems (``tsearch.tasks.word_problems``) are short stories with 2-4
dependent operations (train, validation, test) or 5-8 (validation_ood,
test_ood), with distractor sentences; solutions are GSM8K-style lines and a
``#### N`` line. The tokenizer is a byte-level BPE trained on the train split
(768 tokens, digits one by one); the model is a 4-layer transformer trained
from scratch: a supervised warm start on the reference solutions, then
step-level search-and-learn (PUCT over sampled lines; the answer checker
scores finished answers inside the training search, i.e. it makes the
targets). Evaluation without the answer key: the family's value-guided
searches and MCTS with ``--config.search.verifier_in_search=False``.

  python -m train --config configs/word_problems.py --workdir /tmp/wp
  python -m train.evaluate --config configs/word_problems.py --workdir /tmp/wp \\
      --config.search.verifier_in_search=False --config.search.max_moves=10 \\
      --split validation_ood --methods greedy:1,best_of_n:16,beam:16,mcts:16

Result (seed 0, validation; in progress, goals not met): warm start greedy
56% in distribution, 3% out of distribution; experiments/word_problems/README.md.
"""
from train import experimental
from train.config import default_config


def get_config():
  c = default_config()
  c.task.name = "word_problems"
  c.task.options = dict(seed=0, num_train=20_000, num_validation=500,
                        num_test=500, train_ops=(2, 4), test_ops=(5, 8),
                        distractors=True, max_value=99, vocab_size=768,
                        max_prompt_length=192, max_answer_length=176,
                        # Self-training without the answer key (off): an
                        # "unlabeled" split for the search steps, with
                        # --config.experimental.search_problem_split=unlabeled
                        # --config.search.method=sample
                        # --config.search.sample_labels=majority.
                        num_unlabeled=0, unlabeled_ops=(5, 8),
                        # "quote": each solution line first copies the
                        # sentence it works out (word_problems.generate).
                        style="plain")
  c.data.source = "generated"
  c.data.max_len = 232  # train traces (2-4 operations) fit in 229 tokens
  c.model.update(num_layers=4, d_model=128, num_heads=4, num_kv_heads=2,
                 head_dim=32, mlp_dim=384,
                 # RoPE, so no parameter depends on it: step-level training
                 # packs a trajectory with its moves' K candidate steps.
                 max_seq_len=1040)
  c.optim.update(learning_rate=2e-3, warmup_steps=50, weight_decay=0.01)
  c.batch_size = 32
  c.warm_start.update(steps=2000, corrupt_fraction=0.25)
  # Step-level PUCT over sampled lines (K=4 lines of at most 28 tokens per
  # node, 4 simulations per move, at most 6 moves: the train split's
  # answers have 3-5 lines). The checker scores finished answers inside
  # this training search: it makes the targets (visit counts, SFT on
  # solved answers, outcome/Q values), nothing more.
  c.search.update(steps=60, level="step", step_length=28, num_simulations=4,
                  num_children=4, capacity=48, max_depth=4, max_moves=6,
                  sft_weight=1.0, value_target="mix", policy_on_solved=True)
  c.experimental = experimental.config(search_learning_rate=5e-4)
  c.checkpoint.update(every_steps=100, keep=20)
  c.log_every_steps = 25
  c.eval.update(split="validation", num_examples=200, batch_size=100,
                best_of_n=(16,), mcts_budgets=(16,), summary=False)
  return c
