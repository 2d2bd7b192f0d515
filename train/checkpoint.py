"""Checkpoints with orbax: save every N steps and on SIGTERM/SIGINT, keep the
last k, resume exactly.

A checkpoint holds two items: ``state`` (parameters, optimizer state, random
state, step, and the replay buffer when there is one; ``StandardSave``) and
``meta`` (JSON: data position, model shapes, config). Before restoring, the
saved parameter shapes are compared with the model's, so a checkpoint of
another model is a clear error rather than an orbax shape trace.

Faults: after each save, a manifest (``tsearch_manifest.json``: size and
sha256 of every file of the step) is written next to orbax's files. A file
truncated, garbled or missing afterwards (a dying host, a full disk) makes
:meth:`Checkpointer.verify` and :meth:`Checkpointer.restore` raise
:class:`CorruptCheckpointError` naming the step and the file, and
:meth:`Checkpointer.restore_latest` falls back to the newest readable step
(moving the unreadable ones aside to ``<directory>_corrupt/``, never deleting
them). A checkpoint without a manifest (an older one) is checked by reading
it: an error while reading is reported the same way.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

from train.model import flat_shapes

PyTree = Any


class CheckpointShapeError(ValueError):
  """The checkpoint was written by a model of another shape."""


MANIFEST = "tsearch_manifest.json"
# What orbax / TensorStore errors on damaged or missing files say.
_DAMAGE_MARKS = ("DATA_LOSS", "FAILED_PRECONDITION", "OUT_OF_RANGE",
                 "NOT_FOUND", "Invalid JSON", "Error reading",
                 "error while reading array", "Unterminated string",
                 "Expecting")


class CorruptCheckpointError(ValueError):
  """A checkpoint's files are damaged or missing.

  Attributes:
    step: the checkpoint's step.
    path: the damaged file, relative to the step's directory (or the
      directory itself).
    reason: what is wrong with it.
  """

  def __init__(self, step: int, path: str, reason: str, *, hint: str = ""):
    self.step, self.path, self.reason = step, path, reason
    super().__init__(f"The checkpoint at step {step} is unreadable: {path}: "
                     f"{reason}.{(' ' + hint) if hint else ''}")


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def _files(directory: str) -> list[str]:
  """Every file under ``directory``, relative to it, sorted."""
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, _, names in os.walk(directory) for name in names)


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

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

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
    if jax.process_index() == 0:
      self._write_manifest(step)

  def _write_manifest(self, step: int) -> None:
    directory = self.step_dir(step)
    if not os.path.isdir(directory):
      return
    files = {rel: {"size": os.path.getsize(os.path.join(directory, rel)),
                   "sha256": _sha256(os.path.join(directory, rel))}
             for rel in _files(directory) if rel != MANIFEST}
    tmp = os.path.join(directory, MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump({"format": 1, "files": files}, f, indent=0, sort_keys=True)
    os.replace(tmp, os.path.join(directory, MANIFEST))

  def _manifest(self, step: int) -> dict | None:
    """The step's manifest, or None when it has none or it is unreadable
    (then the checkpoint is checked by reading it)."""
    path = os.path.join(self.step_dir(step), MANIFEST)
    try:
      with open(path, encoding="utf-8") as f:
        files = json.load(f)["files"]
      return {rel: (int(rec["size"]), str(rec["sha256"]))
              for rel, rec in files.items()}
    except FileNotFoundError:
      return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      logging.warning("Checkpoint %d: its manifest %s is unreadable (%s); "
                      "checking the checkpoint by reading it instead.",
                      step, MANIFEST, e)
      return None

  def verify(self, step: int) -> None:
    """Checks the files of the checkpoint at ``step`` against its manifest
    (size and sha256 of each), or, without a manifest, that its JSON files
    parse.

    Raises:
      CorruptCheckpointError: naming the step and the first damaged file.
    """
    directory = self.step_dir(step)
    if not os.path.isdir(directory):
      raise CorruptCheckpointError(step, directory, "no such directory")
    manifest = self._manifest(step)
    if manifest is None:
      for rel in _files(directory):
        if rel == MANIFEST or not _is_json(os.path.join(directory, rel)):
          continue
        try:
          with open(os.path.join(directory, rel), encoding="utf-8") as f:
            json.load(f)
        except (UnicodeDecodeError, ValueError) as e:
          raise CorruptCheckpointError(
              step, rel, f"not valid JSON ({type(e).__name__}: {e})") from e
      return
    for rel, (size, digest) in sorted(manifest.items()):
      path = os.path.join(directory, rel)
      if not os.path.isfile(path):
        raise CorruptCheckpointError(step, rel, "missing")
      have = os.path.getsize(path)
      if have != size:
        raise CorruptCheckpointError(
            step, rel, f"{have} bytes, {size} were written (truncated or "
            "overwritten)")
      if _sha256(path) != digest:
        raise CorruptCheckpointError(
            step, rel, "its contents changed after it was written (sha256 "
            "differs from the manifest)")

  def readable_steps(self) -> tuple[list[int], dict[int, CorruptCheckpointError]]:
    """``(readable steps, {unreadable step: error})`` by :meth:`verify`."""
    good, bad = [], {}
    for step in self.all_steps():
      try:
        self.verify(step)
        good.append(step)
      except CorruptCheckpointError as e:
        bad[step] = e
    return sorted(good), bad

  def _read_error(self, step: int, error: Exception) -> Exception:
    """``error`` raised by orbax while reading ``step``: a
    :class:`CorruptCheckpointError` naming the file when it can, if it
    looks like damaged or missing files; else ``error`` itself (a bug or a
    wrong target is not reported as a damaged checkpoint)."""
    text = f"{type(error).__name__}: {error}"
    if not (isinstance(error, (OSError, UnicodeDecodeError,
                               json.JSONDecodeError))
            or any(mark in text for mark in _DAMAGE_MARKS)
            or self.step_dir(step) in text):
      return error
    found = re.search(re.escape(self.step_dir(step)) + r"/([^\s\"':]+)", text)
    first = text.splitlines()[0] if text else type(error).__name__
    return CorruptCheckpointError(
        step, found.group(1) if found else "(a file of the checkpoint)",
        f"reading it failed with {first[:300]}")

  def restore(self, step: int, target: PyTree) -> tuple[PyTree, dict]:
    """Restores ``(state, meta)`` at ``step`` into the structure of ``target``.

    Raises:
      CheckpointShapeError: listing every array whose saved shape differs
        from ``target``'s (or that exists on only one side).
    """
    self.verify(step)
    return self._restore(step, target)

  def _restore(self, step: int, target: PyTree) -> tuple[PyTree, dict]:
    """:meth:`restore` after :meth:`verify`."""
    self.check_shapes(step, target)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=getattr(x, "sharding", None)),
        target)
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      err = self._read_error(step, e)
      if err is e:
        raise
      raise err from e
    return out["state"], out["meta"]

  def restore_latest(self, target_for: Callable[[int], PyTree], *,
                     params_only: bool = False
                     ) -> tuple[int, PyTree, dict] | None:
    """Restores the newest readable checkpoint: ``(step, state, meta)``, or
    None when there is no checkpoint at all.

    Args:
      target_for: ``step -> target`` (the structure to restore into).
      params_only: the caller reads the parameters only (e.g. to
        evaluate): unreadable newer steps are not moved aside.

    Top-level items that the checkpoint holds and the target lacks (the
    replay buffer, the step-DPO reference policy) are read and dropped,
    as by :meth:`restore_params`.

    Each unreadable newer step is logged as a warning and, when a readable
    one is found, moved to ``<directory>_corrupt/`` so that the run can save
    that step again.

    Raises:
      CorruptCheckpointError: every checkpoint is unreadable (listing them).
    """
    bad = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        # Verified first: target_for may read the step's metadata.
        self.verify(step)
        tree, meta = self._restore_params(step, target_for(step))
      except CorruptCheckpointError as e:
        logging.warning("%s Trying the previous checkpoint.", e)
        print(f"WARNING: {e} Trying the previous checkpoint.", flush=True)
        bad.append(e)
        continue
      if bad:
        print(f"WARNING: {'using' if params_only else 'resuming from'} "
              f"step {step}, the newest readable checkpoint; unreadable: "
              f"{[e.step for e in bad]}.", flush=True)
        if not params_only:
          self.quarantine([e.step for e in bad])
      return step, tree, meta
    if bad:
      listing = "\n".join(f"  {e}" for e in bad)
      raise CorruptCheckpointError(
          bad[0].step, bad[0].path, bad[0].reason,
          hint=f"No checkpoint in {self.directory} is readable:\n{listing}\n"
          "Move the directory away (or use a fresh --workdir) to start "
          "over.")
    return None

  def quarantine(self, steps: list[int]) -> None:
    """Moves the directories of ``steps`` to ``<directory>_corrupt/``."""
    if jax.process_index() != 0:
      return
    aside = self.directory.rstrip("/") + "_corrupt"
    os.makedirs(aside, exist_ok=True)
    for step in steps:
      dest = os.path.join(aside, str(step))
      n = 1
      while os.path.exists(dest):
        dest = os.path.join(aside, f"{step}.{n}")
        n += 1
      shutil.move(self.step_dir(step), dest)
      print(f"Moved the unreadable checkpoint {step} to {dest}.", flush=True)
    self._manager.reload()

  def restore_params(self, step: int, target: PyTree) -> tuple[PyTree, dict]:
    """Like :meth:`restore`, for a ``target`` that may lack saved top-level
    items other than the state (the replay buffer, the step-DPO reference
    policy; e.g. evaluation): those are read as saved and dropped."""
    self.verify(step)
    return self._restore_params(step, target)

  def _restore_params(self, step: int, target: PyTree
                      ) -> tuple[PyTree, dict]:
    """:meth:`restore_params` after :meth:`verify`."""
    tree = self._saved_tree(step)
    extra = [name for name in ("replay", "reference")
             if name in tree and name not in target]
    if not extra:
      return self._restore(step, target)
    # Read (replicated on every device, so on several processes each can
    # address them) and dropped.
    everywhere = jax.sharding.NamedSharding(
        jax.make_mesh((jax.device_count(),), ("all",)),
        jax.sharding.PartitionSpec())
    full = dict(target)
    for name in extra:
      full[name] = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype,
                                         sharding=everywhere),
          tree[name], is_leaf=lambda m: hasattr(m, "shape"))
    out, meta = self._restore(step, full)
    out = dict(out)
    for name in extra:
      out.pop(name)
    return out, meta

  def has_replay(self, step: int) -> bool:
    """Whether the checkpoint at ``step`` holds a replay buffer."""
    return self.has_item(step, "replay")

  def has_item(self, step: int, name: str) -> bool:
    """Whether the checkpoint at ``step`` holds the top-level item
    ``name`` (``replay``, ``reference``)."""
    return name in self._saved_tree(step)

  def _saved_tree(self, step: int):
    try:
      metadata = self._manager.item_metadata(step)["state"]
    except Exception as e:  # pylint: disable=broad-except
      err = self._read_error(step, e)
      if err is e:
        raise
      raise err from e
    if metadata is None:
      raise CorruptCheckpointError(step, "state",
                                   "orbax finds no readable metadata in it")
    return getattr(metadata, "tree", metadata)

  def check_shapes(self, step: int, target: PyTree) -> None:
    tree = self._saved_tree(step)
    saved = flat_shapes(jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree,
        is_leaf=lambda m: hasattr(m, "shape")))
    wanted = flat_shapes(target)
    # Parameters first: the optimizer state only mirrors them.
    differ = [key for key in sorted(
        set(saved) | set(wanted), key=lambda k: (not k.startswith("params/"), k))
              if saved.get(key) != wanted.get(key)]
    diffs = [f"  {key}: checkpoint {saved.get(key, 'missing')}, "
             f"model {wanted.get(key, 'missing')}" for key in differ]
    if diffs:
      shown = "\n".join(diffs[:20])
      more = f"\n  ... and {len(diffs) - 20} more" if len(diffs) > 20 else ""
      if any(k.startswith(("params/", "opt_state/")) for k in differ):
        cause = "a model of another shape"
        fix = ("set the config's model section to the shapes the checkpoint "
               "was trained with")
      else:
        cause = ("a run with other search options (its replay buffer or "
                 "reference policy differ)")
        fix = ("resume with the search options the checkpoint was written "
               "with (options such as experimental.step_dpo_weight add "
               "replay fields)")
      raise CheckpointShapeError(
          f"The checkpoint at step {step} in {self.directory} was written by "
          f"{cause}; {len(diffs)} arrays differ:\n{shown}"
          f"{more}\nUse a fresh --workdir, or {fix}.")

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _is_json(path: str) -> bool:
  """Whether orbax writes ``path`` as JSON (its metadata files)."""
  name = os.path.basename(path)
  return (name in ("_METADATA", "_sharding", "_CHECKPOINT_METADATA",
                   "metadata")
          or os.path.basename(os.path.dirname(path)) == "array_metadatas")


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
