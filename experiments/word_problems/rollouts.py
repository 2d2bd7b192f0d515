"""The training search of configs/word_problems.py from a checkpoint: what
solved_lines.py and packed_check.py inspect; and the ``a op b = c`` lines of
an answer, which solved_lines.py and first_error.py check."""
import re

import jax

import tsearch
from train import config as config_lib
from train import evaluate as ev
from train import search_config

LINE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b,
       "*": lambda a, b: a * b, "/": lambda a, b: a / b}


def arithmetic_ok(a: str, op: str, b: str, result: str) -> bool:
  """Whether ``a op b = result`` (the groups of :data:`LINE`) is true."""
  return OPS[op](int(a), int(b)) == int(result)


def training_search(num_problems: int, *, workdir: str = "/tmp/wp1",
                    step: int = 2000, split: str = "validation", seed: int = 0):
  """``(task, fns, params, problems, prompt_lengths, rollout)``: the
  config's training search (the checker inside) on ``num_problems``."""
  c = config_lib.load_config_file("configs/word_problems.py")
  task, fns, [(_, params)] = ev.restore(c, workdir, [step])
  problems = task.eval_problems(num_problems, split=split)
  prompts, lengths = task.encode_prompts(problems)
  cfg = search_config.lm_search_config(c.search, task)
  moves = search_config.num_moves(c.search, task)
  run = jax.jit(lambda st, p, l, k: tsearch.rollout(
      fns.graphdef, st, task, p, l, k, config=cfg, num_moves=moves))
  rollout = run(fns.state(params), prompts, lengths, jax.random.key(seed))
  return task, fns, params, problems, lengths, rollout
