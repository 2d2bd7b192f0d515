"""How many of the training search's solved answers have a wrong line?

Runs the training search (configs/word_problems.py's search section, the
checker inside) from the warm-start checkpoint /tmp/wp1 (step 2000) on 96
validation problems and checks every ``a op b = c`` line of each solved
answer, and its intermediate results against the reference's.

  python experiments/word_problems/solved_lines.py
"""
import numpy as np

from rollouts import LINE, arithmetic_ok, training_search

task, _, _, probs, _, r = training_search(96)


def line_ok(line: str) -> bool:
  m = LINE.search(line)
  return bool(m) and arithmetic_ok(*m.groups())


solved = bad_arith = wrong_steps = 0
for i, problem in enumerate(probs):
  if r.outcome[i] < 0.5:
    continue
  solved += 1
  text = task.decode(np.asarray(r.answers[i]))
  lines = [x for x in text.split("\n") if not x.startswith("####")]
  bad_arith += not all(line_ok(x) for x in lines)
  gold = sorted(m.group(4) for m in LINE.finditer(problem.solution))
  wrong_steps += gold != sorted(m.group(4) for m in LINE.finditer(text))
print(f"solved {solved}/{len(probs)}; solved with a wrong line {bad_arith}; "
      f"solved with intermediate results != reference {wrong_steps}")
