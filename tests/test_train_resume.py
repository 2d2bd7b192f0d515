"""SIGTERM saves the current step and a resumed run continues; the warm
start's checkpoint interval. (kill -9: tests/test_multiprocess.py.)"""
import os
import signal
import subprocess
import sys
import time

import pytest

from train import config as config_lib
from train import loop
from train import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 16, 4
# configs/tiny.py with a smaller model and batch: what these tests check
# (resume, signals, checkpoint steps) does not depend on the size, and each
# process compiles the train step again (one layer instead of two halves it).
SMALL = dict(num_layers=1, d_model=32, num_heads=2, num_kv_heads=1,
             head_dim=16, mlp_dim=64)
BATCH = 8


def _config():
  c = config_lib.load_config_file(os.path.join(REPO, "configs", "tiny.py"))
  c.model.update(**SMALL)
  c.batch_size = BATCH
  c.warm_start.steps = STEPS
  c.checkpoint.every_steps = EVERY
  c.log_every_steps = 1
  c.progress_bar = False
  c.search.steps = 0
  return c


def _small_flags():
  """The command line's flags for :data:`SMALL` and :data:`BATCH`."""
  return ([f"--config.model.{k}={v}" for k, v in SMALL.items()]
          + [f"--config.batch_size={BATCH}"])


def _flags():
  return [f"--config.warm_start.steps={STEPS}",
          f"--config.checkpoint.every_steps={EVERY}",
          "--config.log_every_steps=1", "--config.progress_bar=False",
          "--config.search.steps=0", "--config.eval.summary=False",
          *_small_flags()]


def _comparable(lines):
  return [{k: v for k, v in line.items() if k != "steps_per_second"}
          for line in lines]


# kill -9 and resume: tests/test_multiprocess.py (both processes of a
# 2-process run killed, resumed, equal to an uninterrupted run).


@pytest.mark.slow
def test_sigterm_saves_current_step_and_resume_continues(tmp_path):
  # 0.5 s a step leaves
  # 13 steps (6.5 s) between the third logged step and the run's end for the
  # signal to land in.
  steps = STEPS
  workdir = str(tmp_path / "term")
  flags = ["--config", os.path.join(REPO, "configs", "tiny.py"), "--workdir",
           workdir, f"--config.warm_start.steps={steps}",
           "--config.checkpoint.every_steps=1000", "--config.log_every_steps=1",
           "--config.progress_bar=False", "--config.search.steps=0",
           # No evaluation after the resumed run's last step (tiny's: 500
           # problems, greedy and MCTS); resuming is what is tested here.
           "--config.eval.summary=False", *_small_flags()]
  proc = subprocess.Popen(
      [sys.executable, "-m", "train", *flags, "--config.debug.step_delay_s=0.5"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  metrics = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + 240
  try:
    while time.time() < deadline:
      if os.path.exists(metrics) and len(metrics_lib.read_metrics(workdir)) >= 3:
        break
      assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err.decode()[-3000:]  # a clean exit
  logged = max(m["step"] for m in metrics_lib.read_metrics(workdir))
  ckpt = loop.checkpointer(_config(), workdir)
  saved = ckpt.all_steps()
  ckpt.close()
  # Saved at the step it stopped at, which is no multiple of every_steps.
  assert saved == [logged] and 3 <= logged < steps, (saved, logged)

  out = subprocess.run([sys.executable, "-m", "train", *flags], cwd=REPO,
                       capture_output=True, timeout=300)
  assert out.returncode == 0, out.stderr.decode()[-3000:]
  assert f"Resumed from step {logged}" in out.stdout.decode()
  lines = metrics_lib.read_metrics(workdir)
  assert [m["step"] for m in lines] == list(range(1, steps + 1))
  ckpt = loop.checkpointer(_config(), workdir)
  assert ckpt.latest_step() == steps
  ckpt.close()


def test_warm_start_saves_at_its_own_interval_and_its_last_step(tmp_path):
  c = _config()
  c.warm_start.steps = 7
  c.checkpoint.update(every_steps=2, warm_start_every_steps=3, keep=10)
  loop.train(c, str(tmp_path / "run"))
  ckpt = loop.checkpointer(c, str(tmp_path / "run"))
  saved = ckpt.all_steps()
  ckpt.close()
  assert saved == [3, 6, 7], saved  # not 2, 4, 6: every_steps is the search's
  # Search steps after it save every every_steps again.
  ckpt = loop.checkpointer(c, str(tmp_path / "other"))
  assert [s for s in range(1, 13) if ckpt.should_save(s)] == [
      3, 6, 7, 8, 10, 12]
  c.checkpoint.warm_start_every_steps = 0  # 0: every_steps throughout
  ckpt.close()
  ckpt = loop.checkpointer(c, str(tmp_path / "other"))
  assert [s for s in range(1, 13) if ckpt.should_save(s)] == [
      2, 4, 6, 7, 8, 10, 12]
  ckpt.close()
