"""Problems and supervised traces for the trainer.

Problems come either from the TFDS builders of :mod:`tsearch.data`
(``data.source = "tfds"``, built into ``<workdir>/data`` on first use) or
are drawn from the task's own seeded sampler (``"generated"``, no files).
Either way the stream's position goes into the checkpoint, so a resumed run
sees exactly the data it would have seen, and each host reads only its own
share.

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


_SPLITS = ("train", "validation", "test")


def step_seed(*parts: int) -> int:
  """A 32-bit seed that is a function of ``parts`` (run seed, step, ...)."""
  return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def examples_from_problems(task, problems: Sequence[Any]) -> dict:
  """Prompt and reference-answer arrays of problems (the Loader's format)."""
  prompt, prompt_length = task.encode_prompts(problems)
  try:
    answer = task.solution_tokens(problems)
  except NotImplementedError:  # e.g. games: search-and-learn needs prompts only
    answer = np.full((len(problems), task.max_answer_length), task.pad_id,
                     np.int32)
  return dict(prompt=prompt, prompt_length=prompt_length, answer=answer,
              answer_length=(answer != task.pad_id).sum(-1).astype(np.int32))


def local_blocks(mesh: jax.sharding.Mesh) -> tuple[list[int], int]:
  """``(blocks, num_blocks)``: the positions on the mesh's ``data`` axis whose
  devices belong to this process, and the size of that axis.

  The global batch is ``num_blocks`` blocks, block ``i`` drawn from a seed
  of its own and placed on data position ``i``, so the batch of a step is
  the same however many processes share the devices.
  """
  n = mesh.shape["data"]
  rows = np.asarray(mesh.devices).reshape(
      [mesh.shape[a] for a in mesh.axis_names])
  rows = np.moveaxis(rows, list(mesh.axis_names).index("data"), 0).reshape(n, -1)
  mine = [i for i in range(n)
          if any(d.process_index == jax.process_index() for d in rows[i])]
  if not mine or mine != list(range(mine[0], mine[0] + len(mine))):
    raise ValueError(f"This process's devices are at data positions {mine} "
                     "of the mesh; they must be one contiguous run.")
  return mine, n


def _concat(parts: Sequence[dict]) -> dict:
  """Dicts of arrays with the same keys, concatenated along rows."""
  return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def by_block(examples: dict, blocks: Sequence[int], fn) -> dict:
  """``fn(block, rows)`` on each block's rows of ``examples``, concatenated."""
  k = len(blocks)
  return _concat([fn(b, {name: np.array_split(v, k)[i]
                         for name, v in examples.items()})
                  for i, b in enumerate(blocks)])


class ExampleStream:
  """This process's examples, one batch per step, resumable.

  Batches are dicts with ``prompt [b, P]``, ``prompt_length [b]``,
  ``answer [b, A]`` (reference solution + EOS) and ``answer_length [b]``.

  The global batch of ``batch_size`` rows is ``num_blocks`` equal blocks
  (one per position of the mesh's ``data`` axis, :func:`local_blocks`);
  this process reads its ``blocks`` only. The batch of a step is therefore
  the same on one process with 8 devices as on 2 processes with 4 each.

  Args:
    task: the task.
    batch_size: global examples per batch.
    source: ``"generated"`` (the task's seeded sampler: a block of a step is
      a function of (seed, step, block)) or ``"tfds"`` (one
      :class:`tsearch.data.Loader` per block over the built dataset, block
      ``i`` reading every ``num_blocks``-th record from the ``i``-th).
    seed: run seed.
    split: ``"train"``, ``"validation"`` or ``"test"``.
    data_dir: TFDS data directory.
    auto_build: build the TFDS data into ``data_dir`` when it is missing.
    blocks: the blocks this process reads (default: all).
    num_blocks: blocks in the global batch.
  """

  def __init__(self, task, batch_size: int, *, source: str, seed: int,
               split: str = "train", data_dir: str = "",
               auto_build: bool = True, blocks: Sequence[int] | None = None,
               num_blocks: int = 1):
    self.task, self.source = task, source
    if split not in _SPLITS:
      raise ValueError(f"Unknown split {split!r}; use one of {_SPLITS}.")
    if num_blocks < 1 or batch_size % num_blocks:
      raise ValueError(f"The batch size {batch_size} is not divisible by the "
                       f"{num_blocks} devices of the 'data' axis; set "
                       f"--config.batch_size to a multiple of {num_blocks}.")
    self.blocks = list(range(num_blocks) if blocks is None else blocks)
    self.num_blocks = num_blocks
    self.block_size = batch_size // num_blocks
    self.batch_size = self.block_size * len(self.blocks)
    self.seed, self.split = seed, split
    self._step = 0
    self._loaders = None
    if source == "tfds":
      _ensure_built(task, data_dir, auto_build)
      from tsearch import data as tdata  # pylint: disable=import-outside-toplevel
      self._loaders = [
          tdata.Loader(task.name, data_dir, split, self.block_size,
                       seed=seed, process_index=b, process_count=num_blocks)
          for b in self.blocks]
    elif source != "generated":
      raise ValueError(f"Unknown data.source {source!r}; use 'tfds' or "
                       "'generated'.")

  def next(self, split: str | None = None) -> dict[str, np.ndarray]:
    """The next batch; ``split`` overrides the stream's split for this
    batch (a fixed-list task's ``"extended"`` puzzles for search steps)."""
    self._step += 1
    split = split or self.split
    if self._loaders is not None:
      if split != self.split:
        raise ValueError(f"A tfds stream reads split {self.split!r} only; "
                         f"split {split!r} needs data.source='generated'.")
      return _concat([next(loader) for loader in self._loaders])
    # A task's own extra splits (puzzles beyond a fixed list) included.
    splits = self.task.splits
    self.task.check_split(split)
    # Tasks with a fixed list (Game of 24) draw from the split's puzzles;
    # for the others the split is part of the seed.
    kw = dict(split=split) if self.task.fixed_splits else {}
    return _concat([examples_from_problems(self.task, self.task.sample_problems(
        step_seed(self.seed, self._step - 1, b, splits.index(split)),
        self.block_size, **kw)) for b in self.blocks])

  def state(self) -> dict:
    """The position to store in a checkpoint."""
    out = {"source": self.source, "split": self.split, "step": self._step}
    if self._loaders is not None:
      # Every block's loader is at the same position (equal batches per
      # epoch), on every process: one position restores them all.
      out["loader"] = self._loaders[0].state()
    return out

  def restore(self, state: dict) -> None:
    if state["source"] != self.source:
      raise ValueError(f"The checkpoint's data position is for source "
                       f"{state['source']!r}, this run uses {self.source!r}.")
    self._step = int(state["step"])
    if self._loaders is not None:
      for loader in self._loaders:
        loader.restore(state["loader"])


def _ensure_built(task, data_dir, auto_build):
  """Checks (or, ``auto_build``, builds: process 0 only, the others wait)
  the task's TFDS data in ``data_dir``."""
  from tsearch import data as tdata  # pylint: disable=import-outside-toplevel
  if not data_dir:
    raise ValueError("data.source='tfds' needs a data directory; set "
                     "--config.data.data_dir (the trainer uses <workdir>/data).")

  def built() -> bool:
    try:
      tdata.load_build_options(task.name, data_dir)
      return True
    except ValueError:
      return False

  # Process 0 decides for all: were each process to look for itself, data
  # appearing between two looks would leave the processes that raised
  # missing from the barrier the others wait at.
  multihost = jax.process_count() > 1
  if multihost:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    is_built = bool(multihost_utils.broadcast_one_to_all(
        np.int32(built() if jax.process_index() == 0 else 0)))
  else:
    is_built = built()
  if not is_built:
    if not auto_build:
      raise DataNotBuiltError(
          f"The {task.name!r} data is not built in {data_dir!r}. Build it "
          f"with:\n  python -m tsearch.data build {task.name} --data_dir "
          f"{data_dir}\nor set --config.data.auto_build=True.")
    if jax.process_index() == 0:
      tdata.build(task.name, data_dir, task_options=task.options())
  if multihost:
    multihost_utils.sync_global_devices("tsearch_data_built")
  loaded = tdata.load_task(task.name, data_dir)
  if loaded != task:
    raise ValueError(
        f"The data in {data_dir!r} was built for {loaded!r}, but the config "
        f"asks for {task!r}; make --config.task.options match, or use "
        "another data_dir.")


def max_trace_length(task) -> int:
  return task.max_prompt_length + task.max_answer_length


def supervised_batch(task, examples: dict, *, max_len: int,
                     corrupt_fraction: float = 0.0, seed: int = 0,
                     verify_fn=None) -> dict[str, np.ndarray]:
  """Reference traces (and corrupted copies for the value head) as arrays.

  Args:
    task: the task.
    examples: a batch from :class:`ExampleStream` (``B`` rows).
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
  prompts, prompt_lengths = examples["prompt"], examples["prompt_length"]
  answers = np.array(examples["answer"], np.int32)
  answer_lengths = examples["answer_length"]
  b = len(prompts)
  policy_weight = np.ones((b,), np.float32)
  num_corrupt = int(round(corrupt_fraction * b))
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
