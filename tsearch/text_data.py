"""TFDS datasets of natural-language problems (text, tokenized later).

:mod:`tsearch.data` stores symbol-token tasks as token ids. The datasets
here store *text*: a real tokenizer (``models.Tokenizer``) turns it into
model ids when a run starts, so one dataset serves every checkpoint.

``gsm8k`` (registered as ``tsearch_gsm8k``): ``test`` = the official test
file (1,319 problems); ``validation`` = ``num_validation`` (default 500)
problems of the official train file chosen by ``seed``, ``train`` = the
other 6,973 (:func:`tsearch.tasks.gsm8k.split_indices`; the splits never
share a problem, which is checked while building). Each example holds
``question``, ``solution`` (the reference solution as in the file,
calculator annotations included; :func:`tsearch.tasks.gsm8k.target_text`
strips them for training), ``answer`` (the final answer after ``####``) and
``index`` (0-based line in its official file).

Build and read (array_record, no TensorFlow)::

  python -m tsearch.data build gsm8k --data_dir /tmp/tsearch_data [--seed 0 --num_validation 500]

  import tensorflow_datasets as tfds
  from tsearch import text_data
  text_data.build("gsm8k", "/tmp/tsearch_data")
  ds = text_data.data_source("gsm8k", "/tmp/tsearch_data", "test")
  len(ds), ds[0]["question"].decode()   # 1319, 'Janet’s ducks lay 16 eggs ...'
"""
from __future__ import annotations

import json
import os

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from tsearch.tasks import gsm8k

VERSION = "1.0.0"
TEXT_DATASETS = ("gsm8k",)


def dataset_name(task: str) -> str:
  _check(task)
  return f"tsearch_{task}"


def _check(task):
  if task not in TEXT_DATASETS:
    raise ValueError(f"No text dataset {task!r}; text datasets: {', '.join(TEXT_DATASETS)}.")


class TsearchGsm8k(tfds.core.GeneratorBasedBuilder):
  """GSM8K with a validation split cut from the official train file."""
  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): "First release."}

  def __init__(self, *, seed: int = 0, num_validation: int = gsm8k.NUM_VALIDATION,
               **kwargs):
    self._build_options = dict(task="gsm8k", seed=int(seed),
                               num_validation=int(num_validation))
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):  # as tsearch.data: no importlib_resources lookup
    return epath.Path(__file__)

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, description="GSM8K (Cobbe et al. 2021, MIT license) as text.",
        features=tfds.features.FeaturesDict({
            "question": tfds.features.Text(),
            "solution": tfds.features.Text(),
            "answer": tfds.features.Text(),
            "index": np.int64,
        }),
        metadata=tfds.core.MetadataDict(build_options=self._build_options),
        disable_shuffling=True)  # records keep the official files' order

  def _split_generators(self, dl_manager):
    del dl_manager
    o = self._build_options
    splits = {s: gsm8k.load_split(s, seed=o["seed"], num_validation=o["num_validation"])
              for s in gsm8k.SPLITS}
    questions = {k: {p.question for p in v} for k, v in splits.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
      if questions[a] & questions[b]:
        raise RuntimeError(f"GSM8K splits {a} and {b} share problems: "
                           f"{sorted(questions[a] & questions[b])[:2]}")
    return {k: self._generate_examples(v) for k, v in splits.items() if v}

  def _generate_examples(self, problems):
    for p in problems:
      yield p.index, dict(question=p.question, solution=p.solution,
                          answer=p.answer, index=p.index)


_BUILDERS = {"gsm8k": TsearchGsm8k}


def _dataset_dir(task, data_dir):
  return os.path.join(os.fspath(data_dir), dataset_name(task), VERSION)


def load_build_options(task: str, data_dir: str) -> dict:
  """The options a text dataset was built with."""
  return read_build_options(task, _dataset_dir(task, data_dir), data_dir)


def read_build_options(task: str, path: str, data_dir: str) -> dict:
  """The ``build_options`` of the dataset built under ``path`` (a clear
  error naming the build command when there is none); also
  :func:`tsearch.data.load_build_options`'s reader."""
  meta = os.path.join(path, "metadata.json")
  if not os.path.exists(meta):
    raise ValueError(
        f"No {task} dataset under {os.fspath(data_dir)!r} (looked for {path}). "
        f"Build it with: python -m tsearch.data build {task} --data_dir {os.fspath(data_dir)}")
  with open(meta) as f:
    return json.load(f)["build_options"]


def build(task: str, data_dir: str, *, seed: int = 0,
          num_validation: int | None = None) -> dict:
  """Builds (or finds already built, with identical options) a text dataset.

  Returns:
    ``{"path": dataset dir, "splits": {split: num_examples}}``.
  """
  _check(task)
  if num_validation is None:
    num_validation = gsm8k.NUM_VALIDATION
  builder = _BUILDERS[task](data_dir=data_dir, seed=seed, num_validation=num_validation)
  path = _dataset_dir(task, data_dir)
  if os.path.exists(os.path.join(path, "dataset_info.json")):
    stored = load_build_options(task, data_dir)
    if stored != builder._build_options:  # pylint: disable=protected-access
      raise ValueError(
          f"{path} already holds a {task} dataset built with {stored}, not "
          f"{builder._build_options}; use another --data_dir or delete {path}.")  # pylint: disable=protected-access
  builder.download_and_prepare()
  return dict(path=path, splits={k: v.num_examples for k, v in builder.info.splits.items()})


def data_source(task: str, data_dir: str, split: str):
  """``tfds.data_source`` of one split (random access, no TensorFlow)."""
  load_build_options(task, data_dir)  # a clear error when it was never built
  if split not in gsm8k.SPLITS:
    raise ValueError(f"Unknown split {split!r}; {task} has {gsm8k.SPLITS}.")
  return tfds.data_source(dataset_name(task), split=split, data_dir=data_dir,
                          download=False)
