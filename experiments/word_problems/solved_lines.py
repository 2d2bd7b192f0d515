"""How many of the training search's solved answers have a wrong line?

Runs the training search (configs/word_problems.py's search section, the
checker inside) from the warm-start checkpoint /tmp/wp1 (step 2000) on 96
validation problems and checks every ``a op b = c`` line of each solved
answer, and its intermediate results against the reference's.

  python experiments/word_problems/solved_lines.py
"""
import re, jax, numpy as np
from train import config as config_lib, evaluate as ev, search_config
import tsearch
c = config_lib.load_config_file("configs/word_problems.py")
task, fns, [(s, params)] = ev.restore(c, "/tmp/wp1", [2000])
probs = task.eval_problems(96, split="validation")
p, l = task.encode_prompts(probs)
cfg = search_config.lm_search_config(c.search, task)
r = jax.jit(lambda st, p, l, k: tsearch.rollout(fns.graphdef, st, task, p, l, k, config=cfg, num_moves=6))(fns.state(params), p, l, jax.random.key(0))
LINE = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
ops = {"+": lambda a,b: a+b, "-": lambda a,b: a-b, "*": lambda a,b: a*b, "/": lambda a,b: a/b}
solved = bad_arith = wrong_steps = 0
for i, pr in enumerate(probs):
  if r.outcome[i] < 0.5: continue
  solved += 1
  text = task.decode(np.asarray(r.answers[i]))
  lines = [x for x in text.split("\n") if not x.startswith("####")]
  arith_ok = all(LINE.search(x) and ops[LINE.search(x).group(2)](int(LINE.search(x).group(1)), int(LINE.search(x).group(3))) == int(LINE.search(x).group(4)) for x in lines)
  gold_results = [m.group(4) for m in LINE.finditer(pr.solution)]
  got_results = [m.group(4) for m in LINE.finditer(text)]
  bad_arith += not arith_ok
  wrong_steps += sorted(gold_results) != sorted(got_results)
print(f"solved {solved}/96; solved with a wrong line {bad_arith}; solved with intermediate results != reference {wrong_steps}")
