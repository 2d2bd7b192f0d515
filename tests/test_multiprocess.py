"""``python -m train`` as 2 processes x 4 CPU devices (JAX's distributed
runtime on localhost, gloo collectives) equals one process with 8 devices,
and both processes killed with kill -9 resume from the checkpoint."""
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from train import loop
from train import metrics as metrics_lib
from tests import test_train_resume as resume

REPO = resume.REPO
WARM, SEARCH, EVERY = 4, 2, 2


# A plainer search than tiny's (no lookahead, no replay): what is tested is
# the processes, and a smaller search step compiles faster.
SEARCH_FLAGS = dict(num_simulations=4, capacity=8, terminal_lookahead=False,
                    act_on_solved=False, policy_on_solved=False, replay_size=0,
                    updates_per_search=1)


def _config():
  c = resume._config()  # pylint: disable=protected-access
  c.warm_start.steps = WARM
  c.search.steps = SEARCH
  c.search.update(**SEARCH_FLAGS)
  c.checkpoint.every_steps = EVERY
  return c


def _xla_flags(devices: int) -> str:
  """This process's XLA flags (tests/conftest.py's) with ``devices`` CPU
  devices."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if "xla_force_host_platform_device_count" not in f]
  return " ".join(flags + [
      f"--xla_force_host_platform_device_count={devices}"])


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir, port, *extra):
  env = dict(os.environ, XLA_FLAGS=_xla_flags(4))
  flags = [f"--config.warm_start.steps={WARM}",
           f"--config.search.steps={SEARCH}",
           f"--config.checkpoint.every_steps={EVERY}",
           "--config.log_every_steps=1", "--config.progress_bar=False",
           "--config.eval.summary=False"]
  flags += [f"--config.search.{k}={v}" for k, v in SEARCH_FLAGS.items()]
  flags += [*resume._small_flags(),  # pylint: disable=protected-access
            "--num_processes=2", f"--coordinator_address=localhost:{port}"]
  return [subprocess.Popen(
      [sys.executable, "-m", "train", "--config",
       os.path.join(REPO, "configs", "tiny.py"), "--workdir", workdir,
       *flags, f"--process_id={i}", *extra],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
      for i in range(2)]


def _steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(s) for s in (os.listdir(d) if os.path.isdir(d) else [])
                if s.isdigit())


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_after_kill_9(tmp_path):
  killed = str(tmp_path / "two")
  procs = _launch(killed, _free_port(), "--config.debug.step_delay_s=0.5")
  try:
    deadline = time.time() + 300
    while time.time() < deadline and not (_steps(killed)
                                          and _steps(killed)[-1] >= EVERY):
      for p in procs:
        assert p.poll() is None, p.stdout.read().decode()[-3000:]
      time.sleep(0.05)
    for p in procs:
      os.kill(p.pid, signal.SIGKILL)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
  assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
  killed_at = _steps(killed)[-1]
  assert EVERY <= killed_at < WARM + SEARCH, killed_at

  procs = _launch(killed, _free_port())  # resumes
  outs = [p.communicate(timeout=600)[0].decode() for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "Resumed from step" in outs[0]

  straight = str(tmp_path / "one")
  loop.train(_config(), straight)  # this process: 8 devices
  _, _, one, s1 = loop.latest_params(_config(), straight)
  _, _, two, s2 = loop.latest_params(_config(), killed)
  assert s1 == s2 == WARM + SEARCH
  # Same data, same keys: only the order of the cross-process sums may
  # differ from one process's.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-5,
      atol=1e-6), one, two)
  # Metrics written once, by process 0: one line per step, the killed run's
  # lines before the kill kept, and every value as the uninterrupted run's.
  m1 = metrics_lib.read_metrics(straight)
  m2 = metrics_lib.read_metrics(killed)
  assert [m["step"] for m in m2] == list(range(1, WARM + SEARCH + 1))
  for a, b in zip(m1, m2):
    assert set(a) == set(b)
    for k in a:
      if k != "steps_per_second":
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6,
                                   err_msg=f"step {a['step']} {k}")
  # An earlier checkpoint differs from the last; a missing one says which
  # steps exist.
  _, _, early, s0 = loop.latest_params(_config(), killed, EVERY)
  assert s0 == EVERY
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(early), jax.tree.leaves(two)))
  with pytest.raises(FileNotFoundError, match="No checkpoint 7 in"):
    loop.latest_params(_config(), killed, 7)
