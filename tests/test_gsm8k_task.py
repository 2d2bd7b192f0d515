"""GSM8K as a search task over a real tokenizer (mechanics; no model)."""
import os

import jax
import numpy as np
import pytest

from tsearch.tasks import TEXT_TASK_NAMES, get_task
from train import evaluate

QWEN2 = os.path.join(os.path.dirname(__file__), "goldens", "qwen2")


@pytest.fixture(scope="module")
def task():
  return get_task("gsm8k", tokenizer_dir=QWEN2, max_prompt_length=128,
                  max_answer_length=256, skip_long_prompts=True,
                  vocab_size=768)


def test_equal_options_make_equal_tasks(task):
  again = get_task("gsm8k", tokenizer_dir=QWEN2, max_prompt_length=128,
                   max_answer_length=256, skip_long_prompts=True,
                   vocab_size=768)
  assert again == task and hash(again) == hash(task)
  assert "gsm8k" in TEXT_TASK_NAMES
  assert task.skipped["test"] > 0 and len(task.problems["test"]) > 100
  assert task.prompt_text(task.problems["test"][0]).endswith("\nAnswer:")


def test_reference_solutions_score_one_and_corrupted_zero(task):
  problems = task.eval_problems(6)
  prompts, _ = task.encode_prompts(problems)
  gold = np.stack([task.encode_answer(task.solution_text(p))
                   for p in problems])
  np.testing.assert_array_equal(jax.jit(task.verify)(prompts, gold), 1.0)
  assert "<<" not in task.solution_text(problems[0])  # calculator stripped
  wrong = np.stack([task.encode_answer(
      task.solution_text(p).rsplit("####", 1)[0] + f"#### {int(float(p.answer)) + 1}")
      for p in problems])
  np.testing.assert_array_equal(task.verify(prompts, wrong), 0.0)
  # Majority voting reads the final answer as a number: "18" == "18.00".
  a = task.encode_answer("so\n#### 18")
  b = task.encode_answer("The answer is 18.00")
  ids = np.asarray(task.answer_ids(task.run(prompts[:2], np.stack([a, b]))))
  assert ids[0] == ids[1] >= 0


def test_results_say_when_the_search_had_no_answer_key():
  assert evaluate.verifier_in_search("mcts", {}, tree_verifier=True)
  assert not evaluate.verifier_in_search("mcts", {}, tree_verifier=False)
  assert not evaluate.verifier_in_search("mcts",
                                         {"verifier_in_search": False})
  assert not evaluate.verifier_in_search("best_of_n", {})
