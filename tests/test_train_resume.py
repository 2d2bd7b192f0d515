"""A run killed with kill -9 and resumed equals a run never stopped."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from train import config as config_lib
from train import loop
from train import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 16, 4


def _config():
  c = config_lib.load_config_file(os.path.join(REPO, "configs", "tiny.py"))
  c.warm_start.steps = STEPS
  c.checkpoint.every_steps = EVERY
  c.log_every_steps = 1
  c.progress_bar = False
  c.search.steps = 0
  return c


def _flags():
  return [f"--config.warm_start.steps={STEPS}",
          f"--config.checkpoint.every_steps={EVERY}",
          "--config.log_every_steps=1", "--config.progress_bar=False",
          "--config.search.steps=0"]


def _comparable(lines):
  return [{k: v for k, v in line.items() if k != "steps_per_second"}
          for line in lines]


def test_kill_9_and_resume_matches_uninterrupted(tmp_path):
  straight = str(tmp_path / "straight")
  loop.train(_config(), straight)

  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(
      [sys.executable, "-m", "train", "--config",
       os.path.join(REPO, "configs", "tiny.py"), "--workdir", killed,
       *_flags(), "--config.debug.step_delay_s=0.3"],
      cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  ckpt_dir = os.path.join(killed, "checkpoints")
  deadline = time.time() + 240
  try:
    while time.time() < deadline:
      done = [int(d) for d in (os.listdir(ckpt_dir)
                               if os.path.isdir(ckpt_dir) else [])
              if d.isdigit()]
      if done and max(done) >= 2 * EVERY:
        break
      assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
      time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == -signal.SIGKILL
  ckpt = loop.checkpointer(_config(), killed)
  killed_at = ckpt.latest_step()
  ckpt.close()
  assert 2 * EVERY <= killed_at < STEPS, killed_at
  # The killed run logged up to (at least) its checkpoint.
  assert max(m["step"] for m in metrics_lib.read_metrics(killed)) >= killed_at

  loop.train(_config(), killed)  # resumes

  _, _, p_straight, s1 = loop.latest_params(_config(), straight)
  _, _, p_resumed, s2 = loop.latest_params(_config(), killed)
  assert s1 == s2 == STEPS
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), p_straight,
               p_resumed)
  m1 = _comparable(metrics_lib.read_metrics(straight))
  m2 = _comparable(metrics_lib.read_metrics(killed))
  assert [m["step"] for m in m1] == list(range(1, STEPS + 1))
  assert m1 == m2
  # Training did something: the answer-token loss went down.
  assert m1[-1]["loss/policy"] < m1[0]["loss/policy"] - 0.3
