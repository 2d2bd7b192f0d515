"""TFDS datasets (array_record, no TensorFlow) and the resumable loader."""
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import tsearch.tasks as tasks
from tsearch import data


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("tsearch_data")
  data.build("countdown", str(d), seed=5, num_train=300, num_validation=40, num_test=40)
  data.build("game24", str(d))
  data.build("arithmetic", str(d), num_train=200, num_validation=30, num_test=30,
             task_options=dict(max_digits=4, ops=("*",)))
  return str(d)


def _all(source):
  return [source[i] for i in range(len(source))]


def test_no_tensorflow_needed(data_dir):
  import sys
  assert "tensorflow" not in sys.modules


def test_build_round_trip(data_dir):
  task = data.load_task("countdown", data_dir)
  splits = data._split_problems(task, seed=5, num_train=300, num_validation=40, num_test=40)
  for split, pairs in splits.items():
    src = tfds.data_source("tsearch_countdown", split=split, data_dir=data_dir, download=False)
    got = {int(r["index"]): r for r in _all(src)}
    assert len(got) == len(pairs)
    for i, (problem, answer) in enumerate(pairs):
      r = got[i]
      assert r["prompt_text"].decode() == task.prompt_text(problem)
      assert r["answer_text"].decode() == answer
      assert task.decode(r["prompt"]) == "<bos>" + task.prompt_text(problem)
  texts = [{r["prompt_text"] for r in _all(data.data_source("countdown", data_dir, s))}
           for s in ("train", "validation", "test")]
  assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


def test_game24_test_split_is_ranks_901_to_1000(data_dir):
  src = data.data_source("game24", data_dir, "test")
  want = sorted(" ".join(map(str, nums)) for r, nums in tasks.game24_puzzles()
                if 901 <= r <= 1000)
  got = sorted(r["prompt_text"].decode().split(":")[0] for r in _all(src))
  assert len(got) == 100 and got == want
  assert len(data.data_source("game24", data_dir, "train")) == 1362 - 200


def test_same_seed_same_examples(data_dir, tmp_path):
  data.build("countdown", str(tmp_path), seed=5, num_train=300, num_validation=40, num_test=40)
  a = _all(data.data_source("countdown", data_dir, "train"))
  b = _all(data.data_source("countdown", str(tmp_path), "train"))
  assert [r["answer_text"] for r in a] == [r["answer_text"] for r in b]
  # Rebuilding the same dir with the same options is a no-op, other options an error.
  data.build("countdown", str(tmp_path), seed=5, num_train=300, num_validation=40, num_test=40)
  with pytest.raises(ValueError, match="already holds"):
    data.build("countdown", str(tmp_path), seed=6, num_train=300, num_validation=40, num_test=40)


def test_loader_batches_verify_and_resume(data_dir):
  loader = data.Loader("arithmetic", data_dir, "train", 16, seed=1)
  task = loader.task
  assert task.ops == ("*",) and task.max_digits == 4
  batch = next(loader)
  assert batch["prompt"].shape == (16, task.max_prompt_length)
  assert batch["answer"].shape == (16, task.max_answer_length)
  np.testing.assert_array_equal(jax.jit(task.verify)(batch["prompt"], batch["answer"]),
                                np.ones(16))
  for _ in range(20):  # crosses an epoch boundary (12 batches per epoch)
    next(loader)
  saved = loader.state()
  expected = [next(loader)["index"] for _ in range(5)]
  other = data.Loader("arithmetic", data_dir, "train", 16, seed=1)
  other.restore(saved)
  assert all((next(other)["index"] == e).all() for e in expected)
  # One epoch covers distinct examples; another seed gives another order.
  epoch = np.concatenate([b["index"] for b in data.Loader(
      "arithmetic", data_dir, "train", 10, seed=1, num_epochs=1)])
  assert len(epoch) == 200 and len(set(epoch.tolist())) == 200
  epoch2 = np.concatenate([b["index"] for b in data.Loader(
      "arithmetic", data_dir, "train", 10, seed=2, num_epochs=1)])
  assert (epoch != epoch2).any()


def test_loader_shards_hosts(data_dir):
  shards = [np.concatenate([b["index"] for b in data.Loader(
      "countdown", data_dir, "train", 7, seed=3, num_epochs=1, process_index=i,
      process_count=3)]) for i in range(3)]
  assert all(len(s) == 14 * 7 for s in shards)
  union = set().union(*(set(s.tolist()) for s in shards))
  assert len(union) == sum(len(s) for s in shards)


def test_bad_input(data_dir, tmp_path):
  with pytest.raises(ValueError, match="python -m tsearch.data build countdown"):
    data.Loader("countdown", str(tmp_path / "missing"), "train", 4)
  with pytest.raises(ValueError, match="known tasks|No dataset"):
    data.build("chess", str(tmp_path))
  with pytest.raises(ValueError, match="max_digits"):
    data.build("arithmetic", str(tmp_path), task_options=dict(max_digits=50))
  with pytest.raises(ValueError, match="distinct"):
    data.build("arithmetic", str(tmp_path / "a"), task_options=dict(max_digits=1))
  with pytest.raises(ValueError, match="split"):
    data.Loader("countdown", data_dir, "dev", 4)
  with pytest.raises(ValueError, match="too few"):
    data.Loader("countdown", data_dir, "test", 41)


def test_cli(tmp_path, capsys):
  assert data.main(["build", "countdown", "--data_dir", str(tmp_path), "--num_train", "20",
                    "--num_validation", "5", "--num_test", "5", "--option", "num_numbers=3"]) == 0
  out = capsys.readouterr().out
  assert "tsearch_countdown" in out and "train=20" in out
  assert data.load_task("countdown", str(tmp_path)).num_numbers == 3
  assert data.main(["build", "nope", "--data_dir", str(tmp_path)]) == 2
