"""How long a training run takes to save and exit after SIGTERM, in steps.

Starts ``python -m train`` with the given config and overrides, waits for
its second logged metrics line (the first includes compilation; the
second's ``steps_per_second`` is the step time) plus ``--delay_s``, sends
SIGTERM, and times the exit. The loop keeps at most two
steps in flight, so the checkpoint should be written within about two
steps of the signal (before that change it waited for every step queued
since the last logged one: up to ``log_every_steps``).

  python bench/sigterm_latency.py --config configs/game24_left.py \\
      --from_workdir /tmp/g24l --from_step 3000 --delay_s 60 \\
      -- --config.search.steps=200 --config.experimental.choice_tokens_only=True

(``/tmp/g24l``: a ``configs/game24_left.py`` warm start,
``--config.search.steps=0``; search steps of about a minute on a 2-core
CPU). Prints the seconds from signal to exit, the median seconds per step
(from the run's ``steps_per_second`` after its first line), their ratio,
and the steps saved. The ratio means something only when a step takes
seconds or more: with
``configs/tiny.py`` (``-- --config.warm_start.steps=0
--config.search.steps=400``, a smoke check) the checkpoint write and exit,
about a second, are hundreds of its 10-ms steps.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def _lines(path):
  if not os.path.exists(path):
    return 0
  with open(path, encoding="utf-8") as f:
    return sum(1 for line in f if line.endswith("\n"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/tiny.py")
  parser.add_argument("--from_workdir", default=None,
                      help="copy this workdir's checkpoint --from_step first")
  parser.add_argument("--from_step", type=int, default=None)
  parser.add_argument("--delay_s", type=float, default=5.0,
                      help="seconds after the second metrics line")
  parser.add_argument("--timeout_s", type=float, default=1800.0)
  parser.add_argument("overrides", nargs="*",
                      help="--config.x=y flags for python -m train (after --)")
  args = parser.parse_args()
  workdir = tempfile.mkdtemp(prefix="tsearch_sigterm_")
  if args.from_workdir:
    step = str(args.from_step)
    shutil.copytree(os.path.join(args.from_workdir, "checkpoints", step),
                    os.path.join(workdir, "checkpoints", step))
  metrics = os.path.join(workdir, "metrics.jsonl")
  cmd = [sys.executable, "-m", "train", "--config", args.config,
         "--workdir", workdir, *args.overrides]
  with open(os.path.join(workdir, "train.log"), "w") as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    start = time.time()
    while _lines(metrics) < 2:
      if proc.poll() is not None or time.time() - start > args.timeout_s:
        proc.kill()
        sys.exit(f"The run ended or timed out before logging metrics; see "
                 f"{workdir}/train.log")
      time.sleep(0.5)
    time.sleep(args.delay_s)
    if proc.poll() is not None:
      sys.exit("The run finished before the signal; raise its step count.")
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=args.timeout_s)
    latency = time.time() - sent
  rates = [json.loads(line).get("steps_per_second")
           for line in open(metrics, encoding="utf-8")][1:]  # no compile
  rates = sorted(r for r in rates if r)
  step_s = 1.0 / rates[len(rates) // 2] if rates else float("nan")
  saved = sorted(int(d) for d in os.listdir(os.path.join(workdir,
                                                         "checkpoints"))
                 if d.isdigit())
  print(f"config={args.config} rc={rc} saved_steps={saved[-3:]}")
  print(f"sigterm latency_s={latency:.1f} step_s={step_s:.2f} "
        f"latency_in_steps={latency / step_s:.2f}")
  shutil.rmtree(workdir)


if __name__ == "__main__":
  main()
