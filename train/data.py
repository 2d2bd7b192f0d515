"""Problems and supervised traces for the trainer.

Problems come either from the TFDS builders of :mod:`tsearch.data`
(``data.source = "tfds"``) or are drawn from the task's own seeded sampler
(``"generated"``, no files needed). Either way the problems of a step are a
function of (seed, step, process), so a resumed run sees exactly the data it
would have seen, and each host reads only its own share.

A supervised trace is the prompt (BOS + text) followed directly by the
reference answer (EOS included), right-padded to ``max_len``.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np

from tsearch.tasks import vocab as vocab_lib


class DataNotBuiltError(FileNotFoundError):
  """The TFDS data of a task has not been built yet."""


def _step_seed(*parts: int) -> int:
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class ProblemStream:
  """The problems of each step on this process.

  Args:
    task: the task.
    source: ``"generated"`` or ``"tfds"``.
    seed: run seed.
    split: dataset split (``"train"``; ``"test"`` for evaluation).
    data_dir: TFDS data directory (``tfds`` source).
    auto_build: build the TFDS data into ``data_dir`` when missing.
  """

  def __init__(self, task, *, source: str, seed: int, split: str = "train",
               data_dir: str = "", auto_build: bool = True):
    self.task = task
    self.source = source
    self.seed = seed
    self.split = split
    self._dataset = None
    if source == "tfds":
      self._dataset = _load_tfds(task, split, data_dir, auto_build)
    elif source != "generated":
      raise ValueError(f"Unknown data.source {source!r}; use 'tfds' or "
                       "'generated'.")

  def problems(self, step: int, num: int) -> list:
    """``num`` problems for ``step`` on this process (deterministic)."""
    pid = jax.process_index()
    if self._dataset is None:
      return self.task.sample_problems(_step_seed(self.seed, step, pid), num)
    n = len(self._dataset)
    # Each process reads its own contiguous share of a per-epoch permutation.
    global_num = num * jax.process_count()
    start = step * global_num + pid * num
    out = []
    for i in range(start, start + num):
      epoch, j = divmod(i, n)
      perm = np.random.default_rng(_step_seed(self.seed, epoch)).permutation(n)
      out.append(self._dataset[int(perm[j])])
    return out

  def position(self, step: int) -> dict:
    """What a checkpoint stores to resume this stream at ``step``."""
    return {"source": self.source, "split": self.split, "seed": self.seed,
            "step": int(step)}


def _load_tfds(task, split, data_dir, auto_build):
  try:
    from tsearch import data as tdata  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataNotBuiltError(
        "data.source='tfds' needs tsearch.data, which is not importable "
        f"({e}); use --config.data.source=generated.") from e
  command = (f"python -m tsearch.data build {task.name} --data_dir "
             f"{data_dir}")
  try:
    return tdata.load_problems(task, split=split, data_dir=data_dir,
                               build=auto_build)
  except FileNotFoundError as e:
    raise DataNotBuiltError(
        f"The {task.name!r} data is not built in {data_dir!r} ({e}). Build it "
        f"with:\n  {command}\nor set --config.data.auto_build=True.") from e


def max_trace_length(task) -> int:
  return task.max_prompt_length + task.max_answer_length


def supervised_batch(task, problems: Sequence[Any], *, max_len: int,
                     corrupt_fraction: float = 0.0, seed: int = 0,
                     verify_fn=None) -> dict[str, np.ndarray]:
  """Reference traces (and corrupted copies for the value head) as arrays.

  Args:
    task: the task.
    problems: ``B`` problems.
    max_len: ``T``, padded trace length; a trace longer than it is an error.
    corrupt_fraction: share of rows whose answer gets 1-2 tokens replaced by
      random digits/operators; their value target is the verifier's reward
      of the corrupted answer and they get no policy loss.
    seed: seeds the corruption.
    verify_fn: ``(prompt_tokens [B, P], answer_tokens [B, A]) -> [B]``
      reward; defaults to ``jax.jit(task.verify)``.

  Returns:
    ``tokens [B, T] int32``, ``token_mask``, ``loss_mask`` (answer tokens),
    ``value_mask`` (the last prompt token and every answer token),
    ``value_target [B]`` and ``policy_weight [B]``, all float32 but tokens.
  """
  b = len(problems)
  prompts, prompt_lengths = task.encode_prompts(problems)
  answers = task.solution_tokens(problems)
  policy_weight = np.ones((b,), np.float32)
  num_corrupt = int(round(corrupt_fraction * b))
  answer_lengths = (answers != task.pad_id).sum(-1)
  if num_corrupt:
    rng = np.random.default_rng(seed)
    rows = rng.choice(b, size=num_corrupt, replace=False)
    first = vocab_lib.NEWLINE + 1  # no specials in corruptions
    for r in rows:
      n_body = int(answer_lengths[r]) - 1  # keep EOS
      for pos in rng.choice(max(n_body, 1), size=min(2, max(n_body, 1)),
                            replace=False):
        answers[r, pos] = rng.integers(first, task.vocab.size)
    policy_weight[rows] = 0.0
  verify = verify_fn or jax.jit(task.verify)
  value_target = np.asarray(verify(prompts, answers), np.float32)

  tokens = np.full((b, max_len), task.pad_id, np.int32)
  token_mask = np.zeros((b, max_len), np.float32)
  loss_mask = np.zeros((b, max_len), np.float32)
  value_mask = np.zeros((b, max_len), np.float32)
  for r in range(b):
    pl, al = int(prompt_lengths[r]), int(answer_lengths[r])
    if pl + al > max_len:
      raise ValueError(
          f"A {task.name} trace needs {pl + al} tokens (prompt {pl} + answer "
          f"{al}) but data.max_len={max_len}; raise --config.data.max_len "
          "(and model.max_seq_len).")
    tokens[r, :pl] = prompts[r, :pl]
    tokens[r, pl:pl + al] = answers[r, :al]
    token_mask[r, :pl + al] = 1.0
    loss_mask[r, pl:pl + al] = 1.0
    value_mask[r, pl - 1:pl + al] = 1.0
  return dict(tokens=tokens, token_mask=token_mask, loss_mask=loss_mask,
              value_mask=value_mask, value_target=value_target,
              policy_weight=policy_weight)
