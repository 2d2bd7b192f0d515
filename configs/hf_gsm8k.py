"""hf_gsm8k: GSM8K word problems over a loaded Hugging Face checkpoint.

GSM8K (``tsearch.tasks.gsm8k_task``: the official test set, train and
validation cut from the official train file) is written in words over the
checkpoint's own tokenizer: prompts are the plain few-shot form
(``Question: ...\\nAnswer:``; ``task.options.prompt="chat"`` for the chat
template), a step is a line, and the reward is the exact numeric check of the
final answer (``#### N``, ``The answer is N`` or ``\\boxed{N}``).

Out of the box it runs over the tiny random checkpoint in tests/goldens/qwen2
(context 128: problems whose prompt is over 72 tokens are skipped, answers
stop at 24 tokens, steps are 8 tokens): mechanics only, its solve
rates are 0. From the repository root, on CPU in a minute:

  python -m train.evaluate --config configs/hf_gsm8k.py \\
      --methods greedy:1,best_of_n:4,mcts:8 --num_problems 8 \\
      --out /tmp/gsm8k_tiny.json

Search without the answer key (``verifier_in_search=false`` rows): the
family's ``best_of_n`` and beam search are value-guided by default, and
``--config.search.verifier_in_search=False`` makes MCTS score finished
answers with the value head instead of the checker.

With real weights (docs/pretrained.md), e.g. Qwen2.5-Math-1.5B-Instruct on a
GPU, 4-shot:

  python -m train.evaluate --config configs/hf_gsm8k.py \\
      --config.model.checkpoint=/ckpt/qwen2.5-math-1.5b-instruct \\
      --config.model.dtype=bfloat16 --config.model.max_seq_len=2048 \\
      --config.task.options.num_shots=4 \\
      --config.task.options.max_prompt_length=1536 \\
      --config.task.options.max_answer_length=384 \\
      --config.task.options.skip_long_prompts=False \\
      --methods greedy:1,best_of_n:16 --split test --num_problems 1319
"""
import os

from train.config import default_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
  c = default_config()
  c.task.name = "gsm8k"
  c.task.options = dict(prompt="fewshot", num_shots=0, max_prompt_length=72,
                        max_answer_length=24, skip_long_prompts=True)
  c.data.source = "generated"
  c.model.update(checkpoint=os.path.join(_REPO, "tests", "goldens", "qwen2"),
                 max_seq_len=128, dtype="float32")
  c.batch_size = 8
  c.warm_start.update(steps=4)
  c.search.update(steps=2, level="step", step_length=8, max_depth=2,
                  num_simulations=4, num_children=2, capacity=8)
  c.eval.update(num_examples=8, batch_size=8, best_of_n=(4,),
                mcts_budgets=(8,), summary=False)
  return c
