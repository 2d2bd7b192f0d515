"""``python -m train --config configs/<name>.py --workdir <dir> [--config.a.b=v]``.

Parses flags, calls :func:`train.loop.train`, then (``eval.summary``)
:func:`train.summary.run`, whose last line is ``summary task=<name>
greedy=<x> search=<y> minutes=<m>``; nothing else lives here. Launch the
same command on every host of a multi-host run (with ``--num_processes`` or
the cluster's environment variables).
"""
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from train import config as config_lib

_STARTED = time.time()  # the summary's minutes (imports before it: < 1 s)

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file under configs/.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Directory for checkpoints, metrics and built data.")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in a multi-host run (calls "
    "jax.distributed.initialize); unset: one, or from the cluster env.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 in a multi-host "
    "run; unset: from the cluster env.")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index in a multi-host run (0 .. "
    "num_processes-1); unset: from the cluster env.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Fail on a bad workdir before JAX starts up.
  try:
    workdir = config_lib.prepare_workdir(_WORKDIR.value)
  except ValueError as e:
    print(f"FATAL: {e}", file=sys.stderr)
    sys.exit(2)
  from train import loop, summary  # pylint: disable=import-outside-toplevel
  try:
    loop.maybe_initialize_distributed(_NUM_PROCESSES.value,
                                      _COORDINATOR.value, _PROCESS_ID.value)
  except ValueError as e:
    print(f"FATAL: {e}", file=sys.stderr)
    sys.exit(2)
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  try:
    final = loop.train(_CONFIG.value, workdir)
    print("final metrics:", {k: round(v, 5) for k, v in final.items()})
    if _CONFIG.value.eval.get("summary", False):
      summary.run(_CONFIG.value, workdir, started=_STARTED)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    print(f"FATAL: {type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
