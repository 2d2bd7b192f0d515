"""GSM8K as a search task: free-text solutions over a model's own tokenizer.

``get_task("gsm8k", tokenizer_dir=..., ...)`` (a run with
``--config.model.checkpoint`` passes the checkpoint's directory itself) is a
:class:`tsearch.tasks.free_text.FreeTextTask` over the shipped GSM8K splits
(:mod:`tsearch.tasks.gsm8k`): prompts in the plain few-shot form
(``"Question: ...\\nAnswer:"``) or the checkpoint's chat template, steps are
lines, the reward is :func:`tsearch.tasks.math_answers.score` (exact numeric
equivalence of the final answer) and majority voting compares final answers
as numbers. Training targets are the reference solutions without calculator
annotations (``keep_calculator=True`` keeps them).

Example (the tiny test checkpoint, context 128)::

  task = get_task("gsm8k", tokenizer_dir="tests/goldens/qwen2",
                  max_prompt_length=96, max_answer_length=32,
                  skip_long_prompts=True)
  prompts, lengths = task.encode_prompts(task.eval_problems(4))
"""
from __future__ import annotations

import functools

from tsearch.tasks import free_text, gsm8k, math_answers


def _score(text: str, gold: str) -> float:
  return math_answers.score(text, gold, kind="gsm8k")


def _final(text: str) -> str | None:
  number = math_answers.parse_number(math_answers.extract_answer(text))
  return None if number is None else str(number)


class Gsm8kTask(free_text.FreeTextTask):
  """GSM8K over a tokenizer; see the module docstring."""

  def __init__(self, *, tokenizer_dir: str, prompt: str = "fewshot",
               num_shots: int = 0, max_prompt_length: int = 512,
               max_answer_length: int = 256, keep_calculator: bool = False,
               skip_long_prompts: bool = False, vocab_size: int = 0,
               split_seed: int = 0):
    import models  # pylint: disable=import-outside-toplevel
    if prompt not in ("fewshot", "chat"):
      raise ValueError(f"prompt must be 'fewshot' or 'chat', got {prompt!r}.")
    self._options = dict(
        tokenizer_dir=tokenizer_dir, prompt=prompt, num_shots=num_shots,
        max_prompt_length=max_prompt_length,
        max_answer_length=max_answer_length, keep_calculator=keep_calculator,
        skip_long_prompts=skip_long_prompts, vocab_size=vocab_size,
        split_seed=split_seed)
    tokenizer = models.Tokenizer.from_dir(tokenizer_dir)
    shots = gsm8k.fewshot_examples(num_shots, seed=split_seed)
    if prompt == "fewshot":
      prompt_fn = functools.partial(_fewshot, shots=shots,
                                    keep=keep_calculator)
    else:
      prompt_fn = functools.partial(_chat, shots=shots, keep=keep_calculator)
    problems = {
        split: [free_text.TextProblem(
            question=p.question, answer=p.answer,
            solution=gsm8k.target_text(p, keep_calculator=keep_calculator))
                for p in gsm8k.load_split(split, seed=split_seed)]
        for split in gsm8k.SPLITS}
    super().__init__(
        name="gsm8k", tokenizer=tokenizer, problems=problems,
        score_fn=_score, answer_fn=_final, prompt_fn=prompt_fn,
        max_prompt_length=max_prompt_length,
        max_answer_length=max_answer_length, step_delimiter="\n",
        vocab_size=vocab_size or None)
    if skip_long_prompts:
      self.skipped = {}
      for split, items in self.problems.items():
        kept = [p for p in items if self._fits(p)]
        self.skipped[split] = len(items) - len(kept)
        self.problems[split] = kept
        if not kept:
          raise ValueError(f"No GSM8K {split} prompt fits max_prompt_length="
                           f"{max_prompt_length}.")
      print("gsm8k: skipped prompts longer than max_prompt_length="
            f"{max_prompt_length}: {self.skipped}")
    self._identity = (type(self), tuple(sorted(self._options.items())))

  def _fits(self, problem) -> bool:
    try:
      self._prompt_ids(problem)
    except ValueError:
      return False
    return True

  def options(self) -> dict:
    return dict(self._options)


def _fewshot(problem, *, shots, keep):
  return gsm8k.fewshot_prompt(problem.question, examples=shots,
                              keep_calculator=keep)


def _chat(problem, *, shots, keep):
  return gsm8k.chat_messages(problem.question, examples=shots,
                             keep_calculator=keep)
