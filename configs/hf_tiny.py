"""hf_tiny: search-and-learn over a loaded Hugging Face checkpoint, on CPU.

The model is ``model.checkpoint`` (default: the tiny Qwen2.5-layout model in
tests/goldens/qwen2: 2 layers, d_model 64, a 653-token byte-level BPE
tokenizer and the real Qwen2.5 chat template); the task, 3-digit addition,
is read and written with its tokenizer (tsearch.tasks.text.over_tokenizer):
the prompt is the chat template with a system message and the problem as
the user message, e.g.

  <|im_start|>system\\nAdd the numbers.<|im_end|>\\n<|im_start|>user\\n
  365+100=<|im_end|>\\n<|im_start|>assistant\\n

and the answer is one token per digit ("4", "6", "5"), then an EOS token
(<|im_end|> or <|endoftext|>); every other token is illegal. The weights are
random, so the solve rates are meaningless: the commands are the point. Run
from the repository root (or anywhere: the default checkpoint path is
absolute), in a minute or two on CPU:

  python -m train --config configs/hf_tiny.py --workdir /tmp/hf_tiny
  python -m train.evaluate --config configs/hf_tiny.py --workdir /tmp/hf_tiny
  python -m train.export --config configs/hf_tiny.py --workdir /tmp/hf_tiny \\
      --out /tmp/hf_tiny_export

and over the checkpoint's own weights, with no training and no workdir:

  python -m train.evaluate --config configs/hf_tiny.py \\
      --config.model.checkpoint=tests/goldens/qwen2 \\
      --methods greedy:1,mcts:8 --num_problems 8

For your own model: --config.model.checkpoint=/path/to/hf_dir
--config.model.dtype=bfloat16 (docs/pretrained.md).
"""
import os

from train.config import default_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
  c = default_config()
  c.task.name = "arithmetic"
  c.task.options = dict(max_digits=3, min_digits=3, ops=("+",))
  c.data.source = "generated"
  c.model.update(checkpoint=os.path.join(_REPO, "tests", "goldens", "qwen2"),
                 chat_template=True, system_prompt="Add the numbers.",
                 max_seq_len=128, dtype="float32")
  c.optim.update(learning_rate=1e-3, warmup_steps=5)
  c.batch_size = 8
  c.warm_start.update(steps=20)
  c.search.update(steps=6, algorithm="puct", num_simulations=8,
                  num_children=4, capacity=16, act_on_solved=True,
                  terminal_lookahead=True, sft_weight=1.0,
                  value_target="mix")
  c.checkpoint.update(every_steps=10, keep=3)
  c.log_every_steps = 5
  c.eval.update(num_examples=16, batch_size=16, best_of_n=(4,),
                mcts_budgets=(8,))
  return c
