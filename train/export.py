"""Writes a run's trained policy as a Hugging Face checkpoint directory.

  python -m train.export --config configs/<name>.py --workdir <dir> \\
      --out <hf_dir> [--step N] [--dtype bfloat16]

The parameters of checkpoint ``--step`` (default: the latest) go to
``--out`` in the Hugging Face layout (:func:`models.hf.save`): for a run over
a loaded model (``model.checkpoint``) with that checkpoint's ``config.json``
(dtype updated) and tokenizer files, so any engine that serves the source
model serves the trained one; for a native model with a Llama
``config.json`` and no tokenizer (its tokens are the task's symbols). The
value head goes to ``value_head.safetensors`` beside the weights (engines
ignore it; ``models.hf.load`` and ``--config.model.checkpoint=<hf_dir>`` read
it back, so a further run starts from the trained values too).
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from train import config as config_lib


def export(config, workdir: str, out: str, *, step: int | None = None,
           dtype: str | None = None) -> int:
  """Writes checkpoint ``step`` (default: the latest) of the run in
  ``workdir`` to ``out``; returns the step written.

  Args:
    config: the run's config.
    workdir: the run's directory.
    out: the Hugging Face directory to write (created; weights replaced).
    step: the checkpoint; None: the latest.
    dtype: dtype of the written tensors (None: the parameters' own).
  """
  # pylint: disable=import-outside-toplevel
  from models import hf
  from train import loop
  _, fns, params, step = loop.latest_params(config, workdir, step)
  hf.save(out, fns.config, params,
          like=config.model.get("checkpoint", "") or None, dtype=dtype)
  return int(step)


def define_flags() -> dict:
  """The command's flags (defined only when it runs)."""
  f = dict(
      config=config_flags.DEFINE_config_file("config", None, "Run config."),
      workdir=flags.DEFINE_string("workdir", None, "Run directory."),
      out=flags.DEFINE_string("out", None, "Hugging Face directory to "
                              "write."),
      step=flags.DEFINE_integer("step", None, "Checkpoint step (default: "
                                "the latest)."),
      dtype=flags.DEFINE_enum("dtype", None, ["float32", "bfloat16",
                                              "float16"],
                              "dtype of the written tensors (default: the "
                              "parameters' own)."),
  )
  flags.mark_flags_as_required(["config", "workdir", "out"])
  return f


def main(argv, f: dict):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  v = {k: flag.value for k, flag in f.items()}
  try:
    step = export(v["config"], v["workdir"], v["out"], step=v["step"],
                  dtype=v["dtype"])
  except (ValueError, FileNotFoundError) as err:
    print(f"FATAL: {type(err).__name__}: {err}", file=sys.stderr)
    sys.exit(1)
  print(f"wrote checkpoint {step} of {v['workdir']} to {v['out']}")


if __name__ == "__main__":
  _FLAGS = define_flags()
  app.run(lambda argv: main(argv, _FLAGS),
          flags_parser=config_lib.parse_flags)
