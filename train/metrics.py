"""Metrics: JSON lines and TensorBoard events in the workdir, a progress bar.

Only process 0 writes. Every logged value is checked: a NaN or Inf stops the
run with the metric's name and step (a model that diverged should not keep
writing checkpoints).
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

import numpy as np


class NonFiniteMetricError(FloatingPointError):
  """A logged metric was NaN or Inf."""


def check_finite(step: int, metrics: Mapping[str, float]) -> None:
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    raise NonFiniteMetricError(
        f"Non-finite metrics at step {step}: {bad}. Training diverged; lower "
        "--config.optim.learning_rate, keep --config.optim.grad_clip on, or "
        "resume from an earlier checkpoint.")


class MetricWriter:
  """Appends ``{"step": s, name: value, ...}`` lines to ``metrics.jsonl`` and
  writes the same scalars as TensorBoard events.

  Args:
    workdir: run directory.
    enabled: False on every process but 0 (nothing is written).
    resume_step: drop lines logged after this step (they came from the part
      of a killed run that the checkpoint does not cover and will be
      logged again).
  """

  def __init__(self, workdir: str, *, enabled: bool = True,
               resume_step: int | None = None):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    if resume_step is not None and os.path.exists(self.path):
      keep = [line for line in open(self.path)
              if line.strip() and json.loads(line)["step"] <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(keep)
    elif resume_step is None and os.path.exists(self.path):
      os.remove(self.path)
    from tensorboardX import SummaryWriter
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: Mapping[str, float]) -> dict:
    """Checks and writes scalars; returns them as Python floats."""
    values = {k: float(np.asarray(v)) for k, v in metrics.items()}
    check_finite(step, values)
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": step, **values}, sort_keys=True) + "\n")
      for k, v in values.items():
        self._tb.add_scalar(k, v, step)
      self._tb.flush()
    return values

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """The lines of ``<workdir>/metrics.jsonl`` as dicts."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  return [json.loads(line) for line in open(path) if line.strip()]


class Progress:
  """A tqdm bar over optimizer steps with steps/s, ETA and the last loss."""

  def __init__(self, total: int, initial: int, *, enabled: bool):
    self._bar = None
    self._start = time.time()
    if enabled:
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=initial, unit="step",
                       dynamic_ncols=True, smoothing=0.1)

  def update(self, n: int = 1, **postfix):
    if self._bar is not None:
      self._bar.update(n)
      if postfix:
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()},
                              refresh=False)

  def close(self):
    if self._bar is not None:
      self._bar.close()
