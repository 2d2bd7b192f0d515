"""Bad input gives clear errors: config keys, workdir, checkpoint shapes, data."""
import os
import subprocess
import sys

import pytest

from train import checkpoint as ckpt_lib
from train import config as config_lib
from train import data as data_lib
from train import experimental
from train import loop
from train import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny.py")



def _validate(c):
  """The config's checks, then the task-aware ones (``loop.setup_task``)."""
  config_lib.validate_config(c)
  loop.setup_task(c)

def _cli(*args):
  return subprocess.run([sys.executable, "-m", "train", "--config", TINY,
                         *args], cwd=REPO, capture_output=True, text=True,
                        timeout=120)


def _load_file(path):
  """A config file's config, with the (off) experimental group to set."""
  c = config_lib.load_config_file(path)
  if "experimental" not in c:
    c.experimental = experimental.config()
  return c


def _tiny(steps=2):
  c = _load_file(TINY)
  c.warm_start.steps = steps
  c.progress_bar = False
  c.batch_size = 8
  return c


def test_unknown_config_key_names_key_and_fix(tmp_path):
  r = _cli("--workdir", str(tmp_path), "--config.model.d_modle=8")
  assert r.returncode == 2
  assert "Unknown config key 'model.d_modle'" in r.stderr
  assert "d_model" in r.stderr  # the keys that do exist there
  assert "get_config()" in r.stderr
  assert "Traceback" not in r.stderr


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  r = _cli("--workdir", str(blocker / "run"))
  assert r.returncode == 2
  assert "Cannot write to workdir" in r.stderr and "writable" in r.stderr
  with pytest.raises(ValueError, match="--workdir is required"):
    config_lib.prepare_workdir("")


def test_checkpoint_from_another_model_shape(tmp_path):
  # Warm-start steps only: a checkpoint to restore is all it takes, and the
  # shapes are checked when it is restored, before any step of the second
  # run (tiny's 800 search steps would add minutes and prove nothing here).
  # One layer: the embedding's shape is what is compared.
  workdir = str(tmp_path / "run")
  first = _tiny()
  first.search.steps, first.model.num_layers = 0, 1
  loop.train(first, workdir)
  bigger = _tiny(steps=4)
  bigger.search.steps, bigger.model.num_layers = 0, 1
  bigger.model.d_model = 48
  with pytest.raises(ckpt_lib.CheckpointShapeError) as e:
    loop.train(bigger, workdir)
  msg = str(e.value)
  assert "params/embed_tokens/embedding: checkpoint (23, 64), model (23, 48)" \
      in msg
  assert "fresh --workdir" in msg


def test_data_not_built_gives_build_command(tmp_path):
  c = _tiny()
  c.data.source = "tfds"
  c.data.auto_build = False
  with pytest.raises(data_lib.DataNotBuiltError,
                     match="python -m tsearch.data build arithmetic"):
    loop.train(c, str(tmp_path / "run"))


def test_config_validation_and_nan_check(tmp_path):
  c = _tiny()
  c.batch_size = 12  # 8 devices
  with pytest.raises(ValueError, match="multiple of 8"):
    loop.train(c, str(tmp_path / "run"))
  c = _tiny()
  c.search.value_target = "median"
  with pytest.raises(ValueError, match="search.value_target"):
    _validate(c)
  c = _tiny()
  c.search.pb_c_init = 0.0
  with pytest.raises(ValueError, match="search.pb_c_init=0.0: must be pos"):
    _validate(c)
  c = _tiny()
  c.experimental.step_policy_loss = "ce"
  with pytest.raises(ValueError, match="step_policy_loss='ce': use 'nll'"):
    _validate(c)
  c = _tiny()
  c.experimental.search_learning_rate = -1e-3
  with pytest.raises(ValueError, match="experimental.search_learning_rate=-0.001"):
    _validate(c)
  c = _tiny()
  c.search.terminal_lookahead = False
  c.search.prune_terminal_slots = True
  with pytest.raises(ValueError, match="prune_terminal_slots=True: needs "
                     "--config.search.terminal_lookahead=True"):
    _validate(c)
  c.search.terminal_lookahead = True
  _validate(c)  # together they are fine
  c = _tiny()
  c.search.level, c.experimental.value_policy_weight = "token", 1.0
  with pytest.raises(ValueError, match="value_policy_weight=1.0: the one-step"
                     " value lookahead target needs --config.search.level="
                     "step"):
    _validate(c)
  c.search.level = "step"
  _validate(c)
  c.experimental.value_policy_scale = -1.0
  with pytest.raises(ValueError, match="value_policy_scale=-1.0: must be >= 0"):
    _validate(c)
  c.experimental.value_policy_scale, c.experimental.value_policy_weight = 10.0, -0.5
  with pytest.raises(ValueError, match="value_policy_weight=-0.5: must be >= 0"):
    _validate(c)
  c = _tiny()
  c.search.level, c.experimental.choice_tokens_only = "token", True
  with pytest.raises(ValueError, match="choice_tokens_only=True: applies to "
                     "--config.search.level=step"):
    _validate(c)
  c.search.level = "step"
  _validate(c)
  c = _tiny()
  c.experimental.search_problem_split = "extended"
  with pytest.raises(ValueError, match="experimental.search_problem_split='extended': use "
                     r"one of \('train',\) for task"):
    _validate(c)
  c = _tiny()
  c.experimental.warm_start_problem_split = "train+extended"
  c.warm_start.data = "solver"
  with pytest.raises(ValueError, match="experimental.warm_start_problem_split="
                     r"'train\+extended': use one of \('train',\)"):
    _validate(c)
  c = _load_file(os.path.join(REPO, "configs",
                                               "game24_plain.py"))
  c.experimental.warm_start_problem_split = "train+extended"
  _validate(c)
  c.warm_start.data = "reference"
  with pytest.raises(ValueError, match="needs --config.warm_start.data=solver"):
    _validate(c)
  c = _load_file(os.path.join(REPO, "configs",
                                               "game24_plain.py"))
  c.experimental.anchor_weight = 1.0
  _validate(c)  # solver anchor, extended search problems
  c.warm_start.data = "reference"
  _validate(c)  # the anchor then draws a train batch of its own
  c.experimental.search_problem_split = "train"
  _validate(c)
  c = _load_file(os.path.join(REPO, "configs",
                                               "connect_four.py"))
  c.experimental.anchor_weight = 0.5
  with pytest.raises(ValueError, match="anchor_weight=0.5: connect_four has "
                     "no reference solutions to anchor on"):
    _validate(c)
  c = _tiny()
  c.eval.mcts_num_children = -1
  with pytest.raises(ValueError, match="eval.mcts_num_children=-1"):
    _validate(c)
  c = _load_file(os.path.join(REPO, "configs",
                                               "connect_four.py"))
  c.search.act_on_solved = True
  with pytest.raises(ValueError, match="act_on_solved=True: is for single"):
    _validate(c)
  c = _load_file(os.path.join(REPO, "configs",
                                               "game24_plain.py"))
  c.experimental.solved_by_prior = True
  _validate(c)  # step level, acting on solutions
  c.search.act_on_solved = False
  with pytest.raises(ValueError, match="solved_by_prior=True: chooses among "
                     ".* set --config.search.act_on_solved=True"):
    _validate(c)
  c.search.act_on_solved, c.search.level = True, "token"
  c.search.terminal_lookahead, c.search.prune_terminal_slots = False, False
  c.experimental.value_policy_weight, c.experimental.choice_tokens_only = 0.0, False
  with pytest.raises(ValueError, match="solved_by_prior=True: reads the root "
                     "prior .*terminal_lookahead=True"):
    _validate(c)
  c = _tiny()
  c.task.name, c.task.options = "countdown", dict(num_numbers=3,
                                                  notation="left")
  with pytest.raises(ValueError, match="notation='left' and retract=0 are "
                     "written by the game's rules; pass strict=True"):
    loop.setup_task(c)
  c.task.options = dict(num_numbers=3, strict=True, notation="sideways")
  with pytest.raises(ValueError, match="notation must be one of"):
    loop.setup_task(c)
  c.task.options = dict(num_numbers=3, strict=True, retract=2)
  with pytest.raises(ValueError, match="retract takes back a first step"):
    loop.setup_task(c)
  c.task.options = dict(num_numbers=3, strict=True)
  c.search.level, c.experimental.retract_weight = "step", 1.0
  with pytest.raises(ValueError, match="experimental.retract_weight=1.0: teaches "
                     "taking back a first step, but .* no take-back token"):
    loop.setup_task(c)
  c.search.level = "token"
  with pytest.raises(ValueError, match="experimental.retract_weight.*needs "
                     "--config.search.level=step"):
    _validate(c)
  with pytest.raises(metrics_lib.NonFiniteMetricError, match="step 7"):
    metrics_lib.check_finite(7, {"loss": float("nan")})


@pytest.mark.parametrize("name", sorted(
    f for f in os.listdir(os.path.join(REPO, "configs"))
    if f.endswith(".py") and not f.startswith("_")))
def test_every_config_validates(name):
  c = _load_file(os.path.join(REPO, "configs", name))
  _validate(c)
  c.experimental.search_problem_split = "extended"
  if c.task.name == "game24":
    _validate(c)
    c.data.source = "tfds"
    with pytest.raises(ValueError, match="needs --config.data.source=generated"):
      _validate(c)
  else:
    with pytest.raises(ValueError, match="experimental.search_problem_split"):
      _validate(c)


def test_unknown_experimental_switch_is_a_clear_error():
  with pytest.raises(ValueError, match=r"Unknown experimental switch\(es\) "
                     r"\['anchor_wieght'\]; known: .*'anchor_weight'"):
    experimental.config(anchor_wieght=1.0)
  c = _tiny()
  c.experimental.unlock()
  c.experimental.anchor_wieght = 1.0
  with pytest.raises(ValueError, match="Unknown config key.*experimental."
                     "anchor_wieght"):
    config_lib.validate_config(c)
  # Without the group every switch is off (its default).
  c = config_lib.load_config_file(TINY)
  del c["experimental"]
  assert experimental.values(c) == experimental.DEFAULTS


@pytest.mark.parametrize("process_0_sees_data", [False, True])
def test_process_0_decides_whether_the_data_is_built(tmp_path, monkeypatch,
                                                     process_0_sees_data):
  """On process 1 of 2, what process 0 saw decides, not the local look: the
  data is built here, yet process 0's "not built" makes this process raise
  too (no process waits alone at the barrier); process 0's "built" takes it
  to the barrier even though its own look would have said no."""
  from jax.experimental import multihost_utils
  import numpy as np
  from tsearch import data as tdata
  from tsearch.tasks import get_task
  task = get_task("arithmetic")
  data_dir = str(tmp_path / "data")
  if not process_0_sees_data:
    tdata.build("arithmetic", data_dir, num_train=40, num_validation=8,
                num_test=8)
  sent, synced = [], []
  monkeypatch.setattr(data_lib.jax, "process_count", lambda: 2)
  monkeypatch.setattr(data_lib.jax, "process_index", lambda: 1)

  def broadcast(x):
    sent.append(int(np.asarray(x)))
    return np.int32(process_0_sees_data)

  monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
  monkeypatch.setattr(multihost_utils, "sync_global_devices",
                      lambda name: synced.append(name))
  if process_0_sees_data:
    # Past the barrier the data is read; it is not here, so reading fails.
    with pytest.raises(Exception) as e:
      data_lib._ensure_built(task, data_dir, False)
    assert not isinstance(e.value, data_lib.DataNotBuiltError)
    assert synced == ["tsearch_data_built"]
  else:
    with pytest.raises(data_lib.DataNotBuiltError):
      data_lib._ensure_built(task, data_dir, False)
    assert synced == []
  assert sent == [0]  # process 1 does not look; it sends a placeholder
