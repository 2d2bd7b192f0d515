"""Damaged checkpoints: every kind of file garbled, truncated or deleted is
named (step and file), and runs resume from the newest readable step."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import checkpoint as ckpt_lib
from train import loop
from tests import test_train_resume as resume


def _state(scale):
  return {"step": jnp.asarray(7 * scale, jnp.int32),
          "params": {"w": jnp.arange(65536.0).reshape(256, 256) * scale,
                     "b": jnp.ones((5,), jnp.bfloat16) * scale},
          "opt_state": {"mu": jnp.full((8, 12), 0.5 * scale)}}


def _damage(path, mode):
  data = open(path, "rb").read()
  if mode == "garble":
    rng = np.random.default_rng(len(data))
    start, n = len(data) // 4, max(1, len(data) // 2)
    garbage = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    if garbage == data[start:start + n]:  # vanishingly unlikely
      garbage = bytes(b ^ 0xFF for b in garbage)
    data = data[:start] + garbage + data[start + n:]
    open(path, "wb").write(data)
  elif mode == "truncate":
    open(path, "wb").write(data[:len(data) // 2])
  else:
    os.remove(path)


def _saved(tmp_path):
  """A directory with readable checkpoints 1 and 2 (2 is a copy to spoil)."""
  ck = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=5,
                             every_steps=1)
  ck.save(1, _state(1.0), {"data_position": 1})
  ck.save(2, _state(2.0), {"data_position": 2})
  ck.close()
  return str(tmp_path / "checkpoints")


def test_each_damaged_file_is_named_and_the_previous_step_restored(tmp_path):
  directory = _saved(tmp_path)
  pristine = str(tmp_path / "pristine")
  shutil.copytree(directory, pristine)
  files = ckpt_lib._files(os.path.join(directory, "2"))  # pylint: disable=protected-access
  assert ckpt_lib.MANIFEST in files
  kinds = {f.split("/")[0] if "/" not in f else f.rsplit("/", 1)[0]
           for f in files}
  assert {"state", "meta", "state/ocdbt.process_0/d"} <= kinds, files
  checked = 0
  for rel in files:
    if rel == ckpt_lib.MANIFEST:
      continue
    for mode in ("garble", "truncate", "delete"):
      shutil.rmtree(directory)
      shutil.copytree(pristine, directory)
      _damage(os.path.join(directory, "2", rel), mode)
      ck = ckpt_lib.Checkpointer(directory, keep=5, every_steps=1)
      with pytest.raises(ckpt_lib.CorruptCheckpointError) as info:
        ck.verify(2)
      assert (info.value.step, info.value.path) == (2, rel), (mode, rel)
      assert "step 2" in str(info.value) and rel in str(info.value)
      with pytest.raises(ckpt_lib.CorruptCheckpointError):
        ck.restore(2, _state(0.0))
      ck.verify(1)  # the other step is untouched
      ck.close()
      checked += 1
  assert checked >= 3 * 10

  # The newest readable step is restored and the damaged one moved aside.
  ck = ckpt_lib.Checkpointer(directory, keep=5, every_steps=1)
  step, tree, meta = ck.restore_latest(lambda _: _state(0.0))
  assert (step, meta) == (1, {"data_position": 1})
  np.testing.assert_array_equal(tree["params"]["w"], _state(1.0)["params"]["w"])
  assert ck.all_steps() == [1]
  assert os.path.isdir(directory + "_corrupt/2")
  ck.save(2, _state(3.0), {"data_position": 2})  # the step can be saved again
  ck.verify(2)
  ck.close()


def test_without_a_manifest_json_files_and_data_are_checked_by_reading(
    tmp_path):
  directory = _saved(tmp_path)
  step_dir = os.path.join(directory, "2")
  os.remove(os.path.join(step_dir, ckpt_lib.MANIFEST))
  pristine = str(tmp_path / "pristine")
  shutil.copytree(directory, pristine)
  jsons = [f for f in ckpt_lib._files(step_dir)  # pylint: disable=protected-access
           if ckpt_lib._is_json(os.path.join(step_dir, f))]  # pylint: disable=protected-access
  assert {"state/_METADATA", "meta/metadata"} <= set(jsons)
  for rel in jsons:
    shutil.rmtree(directory)
    shutil.copytree(pristine, directory)
    _damage(os.path.join(directory, "2", rel), "truncate")
    ck = ckpt_lib.Checkpointer(directory, keep=5, every_steps=1)
    with pytest.raises(ckpt_lib.CorruptCheckpointError, match="not valid JSON"
                       ) as info:
      ck.verify(2)
    assert info.value.path == rel
    ck.close()
  # The largest data file: orbax's read error becomes a named error.
  shutil.rmtree(directory)
  shutil.copytree(pristine, directory)
  data = max((f for f in ckpt_lib._files(step_dir) if "/d/" in f),  # pylint: disable=protected-access
             key=lambda f: os.path.getsize(os.path.join(step_dir, f)))
  _damage(os.path.join(step_dir, data), "truncate")
  ck = ckpt_lib.Checkpointer(directory, keep=5, every_steps=1)
  ck.verify(2)  # nothing to compare against ...
  with pytest.raises(ckpt_lib.CorruptCheckpointError, match="step 2"):
    ck.restore(2, _state(0.0))  # ... but reading it fails, and says so
  ck.close()


def test_an_unreadable_manifest_falls_back_to_reading(tmp_path):
  directory = _saved(tmp_path)
  _damage(os.path.join(directory, "2", ckpt_lib.MANIFEST), "garble")
  ck = ckpt_lib.Checkpointer(directory, keep=5, every_steps=1)
  ck.verify(2)
  tree, _ = ck.restore(2, _state(0.0))
  np.testing.assert_array_equal(tree["params"]["w"], _state(2.0)["params"]["w"])
  ck.close()


def test_all_checkpoints_unreadable_is_an_error_listing_them(tmp_path):
  directory = _saved(tmp_path)
  for step in ("1", "2"):
    _damage(os.path.join(directory, step, "state", "_METADATA"), "garble")
  ck = ckpt_lib.Checkpointer(directory, keep=5, every_steps=1)
  with pytest.raises(ckpt_lib.CorruptCheckpointError,
                     match=r"(?s)No checkpoint .* is readable.*step 2.*step 1"
                     r".*fresh --workdir"):
    ck.restore_latest(lambda _: _state(0.0))
  assert ck.all_steps() == [1, 2]  # nothing moved when nothing is readable
  ck.close()


def test_train_resumes_past_a_damaged_checkpoint_and_evaluate_names_it(
    tmp_path, capsys):
  """configs/tiny.py (smaller): a damaged latest checkpoint makes ``train``
  warn and resume from the previous one, reaching the same parameters, and
  asking for the damaged step by number lists the readable ones."""
  workdir = str(tmp_path / "run")
  config = resume._config()  # pylint: disable=protected-access
  loop.train(config, workdir)
  last = resume.STEPS
  ck = loop.checkpointer(config, workdir)
  target = jax.tree.map(np.asarray, ck.restore_params(
      last, loop.state_to_tree(loop.build(config, workdir, restoring=True)[2])
  )[0]["params"])
  ck.close()
  data = os.path.join(workdir, "checkpoints", str(last), "state")
  biggest = max(ckpt_lib._files(data),  # pylint: disable=protected-access
                key=lambda f: os.path.getsize(os.path.join(data, f)))
  _damage(os.path.join(data, biggest), "garble")

  with pytest.raises(ckpt_lib.CorruptCheckpointError,
                     match=rf"(?s)step {last} .*{biggest}.*Readable "
                     rf"checkpoints.*\[4, 8, 12\]"):
    loop.latest_params(config, workdir, step=last)

  capsys.readouterr()
  loop.train(config, workdir)
  out = capsys.readouterr().out
  assert f"resuming from step {last - resume.EVERY}" in out
  assert f"step {last} is unreadable: state/{biggest}" in out
  assert os.path.isdir(os.path.join(workdir, "checkpoints_corrupt", str(last)))
  _, _, params, step = loop.latest_params(config, workdir)
  assert step == last
  jax.tree.map(np.testing.assert_array_equal,
               jax.tree.map(np.asarray, params), target)
