"""Checkpoints with orbax: save every N steps and on SIGTERM/SIGINT, keep the
last k, resume exactly.

A checkpoint holds two items: ``state`` (parameters, optimizer state, random
state, step, and the replay buffer when there is one; ``StandardSave``) and
``meta`` (JSON: data position, model shapes, config). Before restoring, the
saved parameter shapes are compared with the model's, so a checkpoint of
another model is a clear error rather than an orbax shape trace.
"""
from __future__ import annotations

import os
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp

from train.model import flat_shapes

PyTree = Any


class CheckpointShapeError(ValueError):
  """The checkpoint was written by a model of another shape."""


class Checkpointer:
  """Thin wrapper over ``ocp.CheckpointManager`` with the trainer's items.

  Args:
    directory: where step directories go (created if missing).
    keep: how many of the latest checkpoints to keep.
    every_steps: :meth:`should_save` is True every this many steps.
    warm_start_steps: steps up to this one (a supervised warm start) are
      saved every ``warm_start_every_steps`` instead, and this step itself.
    warm_start_every_steps: 0: ``every_steps``.
  """

  def __init__(self, directory: str, *, keep: int, every_steps: int,
               warm_start_steps: int = 0, warm_start_every_steps: int = 0):
    self.directory = os.path.abspath(directory)
    self.every_steps = every_steps
    self.warm_start_steps = warm_start_steps
    self.warm_start_every_steps = warm_start_every_steps or every_steps
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True,
            # Synchronous: a checkpoint that save() returned from is on disk,
            # which is what a kill -9 right after it needs.
            enable_async_checkpointing=False),
        # Handlers up front, so a fresh manager can read item metadata.
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def should_save(self, step: int) -> bool:
    if step > self.warm_start_steps:
      return step % self.every_steps == 0
    return (step == self.warm_start_steps
            or step % self.warm_start_every_steps == 0)

  def save(self, step: int, state: PyTree, meta: dict) -> None:
    """Writes ``state`` (a pytree of arrays) and ``meta`` (JSON) at ``step``."""
    if step in self.all_steps():
      return
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True)
    self._manager.wait_until_finished()

  def restore(self, step: int, target: PyTree) -> tuple[PyTree, dict]:
    """Restores ``(state, meta)`` at ``step`` into the structure of ``target``.

    Raises:
      CheckpointShapeError: listing every array whose saved shape differs
        from ``target``'s (or that exists on only one side).
    """
    self.check_shapes(step, target)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=getattr(x, "sharding", None)),
        target)
    out = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def restore_params(self, step: int, target: PyTree) -> tuple[PyTree, dict]:
    """Like :meth:`restore`, for a ``target`` that may lack the saved replay
    buffer (e.g. evaluation): the buffer is read as saved and dropped."""
    tree = self._saved_tree(step)
    if "replay" in tree and "replay" not in target:
      replay = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(
              tuple(m.shape), m.dtype,
              sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
          tree["replay"], is_leaf=lambda m: hasattr(m, "shape"))
      out, meta = self.restore(step, dict(target, replay=replay))
      out = dict(out)
      out.pop("replay")
      return out, meta
    return self.restore(step, target)

  def has_replay(self, step: int) -> bool:
    """Whether the checkpoint at ``step`` holds a replay buffer."""
    return "replay" in self._saved_tree(step)

  def _saved_tree(self, step: int):
    metadata = self._manager.item_metadata(step)["state"]
    return getattr(metadata, "tree", metadata)

  def check_shapes(self, step: int, target: PyTree) -> None:
    metadata = self._manager.item_metadata(step)["state"]
    tree = getattr(metadata, "tree", metadata)
    saved = flat_shapes(jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree,
        is_leaf=lambda m: hasattr(m, "shape")))
    wanted = flat_shapes(target)
    diffs = []
    # Parameters first: the optimizer state only mirrors them.
    for key in sorted(set(saved) | set(wanted),
                      key=lambda k: (not k.startswith("params/"), k)):
      if saved.get(key) != wanted.get(key):
        diffs.append(f"  {key}: checkpoint {saved.get(key, 'missing')}, "
                     f"model {wanted.get(key, 'missing')}")
    if diffs:
      shown = "\n".join(diffs[:20])
      more = f"\n  ... and {len(diffs) - 20} more" if len(diffs) > 20 else ""
      raise CheckpointShapeError(
          f"The checkpoint at step {step} in {self.directory} was written by "
          f"a model of another shape; {len(diffs)} arrays differ:\n{shown}"
          f"{more}\nUse a fresh --workdir, or set the config's model section "
          "to the shapes the checkpoint was trained with.")

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


class StopRequest:
  """Turns SIGTERM/SIGINT into a flag the loop checks after each step, so the
  loop can save a checkpoint and exit cleanly (a second signal is not caught).
  """

  def __init__(self):
    self.signal: int | None = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone.
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal = signum
    # Restore the old handler so a second Ctrl-C kills at once.
    signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  @property
  def requested(self) -> bool:
    return self.signal is not None
