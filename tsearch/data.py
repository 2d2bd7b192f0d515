"""TFDS datasets of task problems, and a resumable, host-sharded loader.

Build one (deterministic from ``--seed``; the three splits never share a
problem, which is checked while building)::

  python -m tsearch.data build arithmetic --data_dir /tmp/tsearch_data \\
      --seed 0 --num_train 20000 --num_validation 1000 --num_test 1000 \\
      --option max_digits=4
  python -m tsearch.data build countdown --data_dir /tmp/tsearch_data
  python -m tsearch.data build game24 --data_dir /tmp/tsearch_data
  python -m tsearch.data build gsm8k --data_dir /tmp/tsearch_data

``gsm8k`` is a text dataset (natural-language problems, tokenized later by a
real tokenizer): see :mod:`tsearch.text_data`; only ``--seed`` and
``--num_validation`` apply to it.

``game24`` uses the puzzle list: test = ranks 901-1000, validation =
``--num_validation`` (default 100) puzzles of the other ranks chosen by ``--seed``, train =
the rest (``--num_train``/``--num_test`` are not used for it).

Storage: ``tfds.core.GeneratorBasedBuilder`` with
``file_format='array_record'``. TensorFlow is not needed: in tfds 4.9 the
writer serialises examples with tfds's own protobuf copy of ``tf.Example``
(``tensorflow_datasets.proto``), and ``tfds.data_source`` reads array_record
files with ``array_record`` alone. The datasets are registered as
``tsearch_arithmetic``, ``tsearch_countdown`` and ``tsearch_game24``; read
them with ``tfds.data_source("tsearch_countdown", data_dir=...)`` after
importing this module. Each example holds unpadded token lists ``prompt``
(BOS + prompt) and ``answer`` (reference solution + EOS), their texts, and the
example's ``index`` in generation order. The build options (seed, sizes, task
options) are stored in the dataset's ``metadata.json``; rebuilding a data dir
with other options is an error.

Training: :class:`Loader` yields padded numpy batches, shuffled from a seed,
sharded over hosts, with a ``state()``/``restore()`` position for exact resume.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tsearch import tasks as tasks_lib
from tsearch import text_data

DATASET_TASKS = tasks_lib.DATASET_TASK_NAMES  # tasks with reference solutions
VERSION = "1.0.0"
_DEFAULT_SIZES = dict(num_train=10_000, num_validation=500, num_test=500)


def dataset_name(task: str) -> str:
  _check_task(task)
  return f"tsearch_{task}"


def _check_task(task):
  if task not in DATASET_TASKS:
    raise ValueError(f"No dataset for task {task!r}; datasets exist for "
                     f"{', '.join(DATASET_TASKS)} (the tasks with reference "
                     "solutions; games learn from self-play and need no data).")


def _split_problems(task, *, seed, num_train, num_validation, num_test):
  """Distinct problems per split as lists of ``(problem, answer_text)``."""
  fixed = task.split_problems(seed=seed, num_validation=num_validation)
  if fixed is not None:  # a fixed list of problems, cut into splits
    return {k: [(p, task.solution_text(p)) for p in v] for k, v in fixed.items()}
  for k, v in dict(num_train=num_train, num_validation=num_validation,
                   num_test=num_test).items():
    if v < 0:
      raise ValueError(f"{k} must be >= 0, got {v}.")
  want = num_train + num_validation + num_test
  seen, pairs, stale = set(), [], 0
  for round_ in range(10_000):
    batch = task.sample_with_solutions([seed, round_], 1000)
    before = len(pairs)
    for p, a in batch:
      key = task.prompt_text(p)
      if key not in seen and len(pairs) < want:
        seen.add(key)
        pairs.append((p, a))
    if len(pairs) == want:
      break
    stale = stale + 1 if len(pairs) == before else 0
    if stale >= 3:
      break
  if len(pairs) < want:
    raise ValueError(
        f"Only {len(pairs)} distinct {task.name} problems found for {want} "
        f"requested examples with options {task.options()}; ask for fewer or "
        f"use larger options (e.g. more digits or numbers).")
  return dict(test=pairs[:num_test], validation=pairs[num_test:num_test + num_validation],
              train=pairs[num_test + num_validation:])


class _TaskBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared builder; subclasses set ``TASK``."""
  TASK = ""
  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): "First release."}

  def __init__(self, *, seed: int = 0, num_train: int = _DEFAULT_SIZES["num_train"],
               num_validation: int = _DEFAULT_SIZES["num_validation"],
               num_test: int = _DEFAULT_SIZES["num_test"],
               task_options: dict | None = None, **kwargs):
    self._task = tasks_lib.get_task(self.TASK, **(task_options or {}))
    self._build_options = dict(
        task=self.TASK, seed=int(seed), num_train=int(num_train),
        num_validation=int(num_validation), num_test=int(num_test),
        task_options={k: list(v) if isinstance(v, tuple) else v
                      for k, v in self._task.options().items()})
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  # tfds derives this from the package via `importlib_resources`, which is not
  # installed here (and not needed): point it at this file directly.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return epath.Path(__file__)

  def _info(self):
    features = {
        "prompt": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "answer": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "prompt_text": tfds.features.Text(),
        "answer_text": tfds.features.Text(),
        "index": np.int64,
    }
    return tfds.core.DatasetInfo(
        builder=self, description=f"tsearch {self.TASK} problems with reference "
        "solutions, tokenized with tsearch.tasks.ARITH_VOCAB.",
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(build_options=self._build_options))

  def _split_generators(self, dl_manager):
    o = self._build_options
    splits = _split_problems(self._task, seed=o["seed"], num_train=o["num_train"],
                             num_validation=o["num_validation"], num_test=o["num_test"])
    keys = {k: {self._task.prompt_text(p) for p, _ in v} for k, v in splits.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
      if keys[a] & keys[b]:
        raise RuntimeError(f"Splits {a} and {b} share problems: {sorted(keys[a] & keys[b])[:3]}")
    return {k: self._generate_examples(v) for k, v in splits.items() if v}

  def _generate_examples(self, pairs):
    for i, (problem, answer) in enumerate(pairs):
      prompt = self._task.encode_prompt(problem)
      ans = self._task.encode_answer(answer)
      yield i, dict(prompt=prompt[prompt != tasks_lib.PAD],
                    answer=ans[ans != tasks_lib.PAD],
                    prompt_text=self._task.prompt_text(problem),
                    answer_text=answer, index=i)


def _builder_class(task: str):
  """``Tsearch<Task>``, registered with TFDS as ``tsearch_<task>``."""
  name = "Tsearch" + "".join(part.title() for part in task.split("_"))
  return type(name, (_TaskBuilder,), dict(
      TASK=task, __module__=__name__,
      __doc__=f"{task} problems with reference solutions (tsearch.get_task)."))


_BUILDERS = {task: _builder_class(task) for task in DATASET_TASKS}
globals().update({cls.__name__: cls for cls in _BUILDERS.values()})


def _dataset_dir(task, data_dir):
  return os.path.join(os.fspath(data_dir), dataset_name(task), VERSION)


def build(task: str, data_dir: str, *, seed: int = 0, num_train: int | None = None,
          num_validation: int | None = None, num_test: int | None = None,
          task_options: dict | None = None) -> dict:
  """Builds (or finds already built, with identical options) one dataset.

  Returns:
    ``{"path": dataset dir, "splits": {split: num_examples}}``.
  """
  if task in text_data.TEXT_DATASETS:
    if num_train is not None or num_test is not None or task_options:
      raise ValueError(f"{task} has fixed train/test files; only --seed and "
                       "--num_validation apply to it.")
    return text_data.build(task, data_dir, seed=seed, num_validation=num_validation)
  _check_task(task)
  sizes = dict(num_train=num_train, num_validation=num_validation, num_test=num_test)
  task_obj = tasks_lib.get_task(task, **(task_options or {}))
  defaults = dict(_DEFAULT_SIZES, **task_obj.dataset_size_defaults)
  sizes = {k: defaults[k] if v is None else v for k, v in sizes.items()}
  builder = _BUILDERS[task](data_dir=data_dir, seed=seed, task_options=task_options, **sizes)
  path = _dataset_dir(task, data_dir)
  if os.path.exists(os.path.join(path, "dataset_info.json")):
    stored = load_build_options(task, data_dir)
    if stored != builder._build_options:
      raise ValueError(
          f"{path} already holds a {task} dataset built with {stored}, not "
          f"{builder._build_options}; use another --data_dir or delete {path}.")
  builder.download_and_prepare()
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  return dict(path=path, splits=splits)


def load_build_options(task: str, data_dir: str) -> dict:
  """The options a dataset was built with (seed, sizes, task options)."""
  return text_data.read_build_options(task, _dataset_dir(task, data_dir),
                                     data_dir)


def load_task(task: str, data_dir: str) -> tasks_lib.Task:
  """The task configured exactly as the dataset under ``data_dir`` was built."""
  opts = load_build_options(task, data_dir)["task_options"]
  return tasks_lib.get_task(task, **{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in opts.items()})


def data_source(task: str, data_dir: str, split: str):
  """``tfds.data_source`` of one split (random access, no TensorFlow)."""
  if task in text_data.TEXT_DATASETS:
    return text_data.data_source(task, data_dir, split)
  opts = load_build_options(task, data_dir)
  known = [s for s in ("train", "validation", "test")
           if (s == "train" and (load_task(task, data_dir).fixed_splits
                                 or opts["num_train"] > 0))
           or (s != "train" and opts[f"num_{s}"] > 0)]
  if split not in known:
    raise ValueError(f"Unknown or empty split {split!r}; this dataset has {known}.")
  return tfds.data_source(dataset_name(task), split=split, data_dir=data_dir,
                          download=False)


class Loader:
  """Shuffled, host-sharded, resumable batches of one split.

  Each epoch is a permutation of the split drawn from ``(seed, epoch)``; host
  ``process_index`` of ``process_count`` takes every ``process_count``-th
  element of it, so hosts never share an example within an epoch, and every
  host yields the same number of batches (a remainder is dropped). Iterating
  yields dicts of numpy arrays:

    prompt: ``[b, P]`` int32, BOS + prompt, PAD-padded to the task's P.
    prompt_length: ``[b]`` int32.
    answer: ``[b, T]`` int32 reference solution + EOS, PAD-padded.
    answer_length: ``[b]`` int32.
    index: ``[b]`` int64, the example's index in generation order.

  ``state()`` is a small dict to store in a checkpoint; ``restore(state)``
  continues with exactly the batch that would have come next.

  Args:
    task: dataset task name.
    data_dir: where ``python -m tsearch.data build`` wrote it.
    split: ``train``, ``validation`` or ``test``.
    batch_size: examples per batch on this host.
    seed: shuffle seed.
    shuffle: False keeps the stored order.
    num_epochs: stop after this many epochs; None repeats forever.
    process_index, process_count: this host and the number of hosts.
  """

  def __init__(self, task: str, data_dir: str, split: str, batch_size: int, *,
               seed: int = 0, shuffle: bool = True, num_epochs: int | None = None,
               process_index: int = 0, process_count: int = 1):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if not 0 <= process_index < process_count:
      raise ValueError(f"Need 0 <= process_index < process_count, got "
                       f"{process_index}, {process_count}.")
    self.task = load_task(task, data_dir)
    self._source = data_source(task, data_dir, split)
    self._n = len(self._source)
    self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
    self.num_epochs = num_epochs
    self.process_index, self.process_count = process_index, process_count
    self.batches_per_epoch = (self._n // process_count) // batch_size
    if self.batches_per_epoch == 0:
      raise ValueError(
          f"Split {split!r} has {self._n} examples: too few for batch_size="
          f"{batch_size} on each of {process_count} hosts.")
    self._epoch, self._step = 0, 0

  def __len__(self):
    return self.batches_per_epoch

  def state(self) -> dict:
    return dict(epoch=self._epoch, step=self._step, seed=self.seed)

  def restore(self, state: dict) -> None:
    if state["seed"] != self.seed:
      raise ValueError(f"Loader state is for seed {state['seed']}, this loader has {self.seed}.")
    self._epoch, self._step = int(state["epoch"]), int(state["step"])

  def _host_indices(self, epoch):
    order = (np.random.default_rng([self.seed, epoch]).permutation(self._n)
             if self.shuffle else np.arange(self._n))
    return order[self.process_index::self.process_count]

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._step >= self.batches_per_epoch:
      self._epoch, self._step = self._epoch + 1, 0
    if self.num_epochs is not None and self._epoch >= self.num_epochs:
      raise StopIteration
    idx = self._host_indices(self._epoch)[
        self._step * self.batch_size:(self._step + 1) * self.batch_size]
    records = self._source.__getitems__(idx.tolist())
    self._step += 1
    return self._collate(records)

  def _collate(self, records) -> dict[str, np.ndarray]:
    t = self.task
    b = len(records)
    prompt = np.zeros((b, t.max_prompt_length), np.int32)
    answer = np.zeros((b, t.max_answer_length), np.int32)
    for i, r in enumerate(records):
      prompt[i, :len(r["prompt"])] = r["prompt"]
      answer[i, :len(r["answer"])] = r["answer"]
    return dict(prompt=prompt, prompt_length=(prompt != 0).sum(1).astype(np.int32),
                answer=answer, answer_length=(answer != 0).sum(1).astype(np.int32),
                index=np.array([r["index"] for r in records], np.int64))


def _parse_option(s: str) -> tuple[str, Any]:
  if "=" not in s:
    raise argparse.ArgumentTypeError(f"--option takes key=value, got {s!r}.")
  k, v = s.split("=", 1)
  try:
    return k, ast.literal_eval(v)
  except (ValueError, SyntaxError):
    return k, v


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tsearch.data", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  b = sub.add_parser("build", help="build one task's dataset")
  b.add_argument("task", help=f"one of {', '.join(DATASET_TASKS + text_data.TEXT_DATASETS)}")
  b.add_argument("--data_dir", required=True)
  b.add_argument("--seed", type=int, default=0)
  for k, v in _DEFAULT_SIZES.items():
    b.add_argument(f"--{k}", type=int, default=None,
                   help=f"default {v} (a fixed-list task such as game24 sets "
                   "its own: validation 100, the rest train)")
  b.add_argument("--option", type=_parse_option, action="append", default=[],
                 help="task option key=value, e.g. --option max_digits=4 (repeatable)")
  args = parser.parse_args(argv)
  try:
    out = build(args.task, args.data_dir, seed=args.seed, num_train=args.num_train,
                num_validation=args.num_validation, num_test=args.num_test,
                task_options=dict(args.option))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"Wrote {args.task} to {out['path']}: "
        + ", ".join(f"{k}={v}" for k, v in sorted(out["splits"].items())))
  return 0


if __name__ == "__main__":
  sys.exit(main())
