"""Countdown / Game of 24 verifiers against an independent Fraction checker."""
import math
import re
from collections import Counter
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tsearch.tasks as tasks
from tsearch.tasks import countdown as cd

_NUM = r"(0|[1-9]\d{0,3}|\([1-9]\d{0,3}/[1-9]\d{0,3}\))"
_STEP = re.compile(_NUM + r"([-+*/])" + _NUM + "=" + _NUM)


def _parse(s):
  if s.startswith("("):
    n, d = (int(x) for x in s[1:-1].split("/"))
    if d < 2 or math.gcd(n, d) != 1:
      return None
    return Fraction(n, d)
  return Fraction(int(s))


def reference_check(task, problem, ids):
  """Pure-Python verifier written independently of the jnp one."""
  numbers, target = problem
  ids = list(np.asarray(ids)[:task.max_answer_length])
  if tasks.EOS not in ids:
    return 0.0
  ids = ids[:ids.index(tasks.EOS)]
  if any(i < 3 for i in ids):
    return 0.0
  lines = task.decode(ids).split("\n")
  if len(lines) != len(numbers) - 1:
    return 0.0
  pool = Counter(Fraction(x) for x in numbers)
  for line in lines:
    m = _STEP.fullmatch(line)
    if not m:
      return 0.0
    a, op, b, c = _parse(m.group(1)), m.group(2), _parse(m.group(3)), _parse(m.group(4))
    if None in (a, b, c):
      return 0.0
    for x in (a, b):
      if pool[x] == 0:
        return 0.0
      pool[x] -= 1
    if op == "/" and b == 0:
      return 0.0
    r = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b,
         "/": lambda: a / b}[op]()
    if r != c:
      return 0.0
    pool[c] += 1
  return float(+pool == Counter([Fraction(target)]))


@pytest.fixture(scope="module")
def countdown():
  return tasks.get_task("countdown")


@pytest.fixture(scope="module")
def game24():
  return tasks.get_task("game24")


@pytest.fixture(scope="module")
def verify_cd(countdown):
  return jax.jit(countdown.verify)


def test_gcd():
  a = jnp.array([0, 12, 7, 0, 2 ** 30, 46368], jnp.int32)
  b = jnp.array([5, 18, 13, 0, 6, 28657], jnp.int32)
  np.testing.assert_array_equal(cd.gcd(a, b), [math.gcd(int(x), int(y)) for x, y in zip(a, b)])


def test_exact_step_matches_fractions():
  V = cd.V
  ops = {V.PLUS: lambda a, b: a + b, V.MINUS: lambda a, b: a - b,
         V.TIMES: lambda a, b: a * b, V.DIVIDE: lambda a, b: a / b}
  rows = [(an, ad, op, bn, bd) for an, ad in ((0, 1), (3, 1), (7, 2), (12, 5))
          for bn, bd in ((0, 1), (4, 1), (2, 3), (13, 1)) for op in ops]
  n, d = jax.jit(cd.exact_step)(*(jnp.array(c, jnp.int32) for c in zip(*rows)))
  for (an, ad, op, bn, bd), ni, di in zip(rows, np.asarray(n), np.asarray(d)):
    if op == V.DIVIDE and bn == 0:
      assert di == 0, (an, ad, op, bn, bd)
      continue
    want = ops[op](Fraction(an, ad), Fraction(bn, bd))
    assert (ni, di) == (want.numerator, want.denominator), (an, ad, op, bn, bd)


def test_countdown_reference_solutions_get_full_reward(countdown, verify_cd):
  pairs = countdown.sample_with_solutions(1, 1000)
  prompts, _ = countdown.encode_prompts([p for p, _ in pairs])
  answers = np.stack([countdown.encode_answer(a) for _, a in pairs])
  np.testing.assert_array_equal(verify_cd(prompts, answers), np.ones(1000))
  # The DFS solver also solves problems it did not generate.
  some = [p for p, _ in pairs[:50]]
  np.testing.assert_array_equal(verify_cd(countdown.encode_prompts(some)[0],
                                          countdown.solution_tokens(some)), np.ones(50))


def test_game24_solver_solves_all_puzzles_and_verifies(game24):
  puzzles = [(nums, 24) for _, nums in tasks.game24_puzzles()]
  assert len(puzzles) == 1362
  prompts, _ = game24.encode_prompts(puzzles)
  answers = game24.solution_tokens(puzzles)  # raises if any has no solution
  rewards = jax.jit(game24.verify)(prompts, answers)
  np.testing.assert_array_equal(rewards, np.ones(1362))
  for i in range(0, 1362, 97):
    assert reference_check(game24, puzzles[i], answers[i]) == 1.0


def test_game24_fraction_puzzle(game24):
  text = game24.solution_text(((1, 3, 4, 6), 24))
  assert "(1/4)" in text or "(3/4)" in text
  prompts, _ = game24.encode_prompts([((1, 3, 4, 6), 24)] * 3)
  answers = np.stack([game24.encode_answer(t) for t in [
      "3/4=(3/4)\n1-(3/4)=(1/4)\n6/(1/4)=24",
      "3/4=(6/8)\n1-(6/8)=(1/4)\n6/(1/4)=24",  # not in lowest terms
      "4-3=1\n1-1=0\n6/0=24"]])  # division by zero
  np.testing.assert_array_equal(jax.jit(game24.verify)(prompts, answers), [1, 0, 0])


def test_game24_splits():
  s = tasks.game24_splits()
  assert [r for r, _ in s["test"]] == list(range(901, 1001))
  ranks = [set(r for r, _ in s[k]) for k in ("train", "validation", "test")]
  assert sum(map(len, ranks)) == 1362 and len(set().union(*ranks)) == 1362
  assert len(ranks[1]) == 100 and s == tasks.game24_splits()


WRONG = [
    "",                                   # empty
    "13-9=4\n10-4=6\n4*6=25",              # wrong final arithmetic
    "13-9=5\n10-5=5\n5*5=25",              # wrong step arithmetic
    "13-9=4\n10-4=6\n6*4=24\n4*6=24",      # extra step
    "13-9=4\n10-4=6",                      # missing step
    "13-9=4\n4-4=0\n0+24=24",              # reuses 4, invents 24
    "13-10=3\n3*4=12\n12+12=24",           # reuses the result 12
    "12+12=24\n10-9=1\n1*13=13",           # invented numbers
    "9-13=0\n10-4=6\n4*6=24",              # negative result
    "13-09=4\n10-4=6\n4*6=24",             # leading zero
    "()+-=\n\n",                           # garbage
    "13-9=4\n10-4=6\n4*6=2",               # truncated result
]


def test_wrong_answers_get_zero(countdown, verify_cd):
  problem = ((4, 9, 10, 13), 24)
  texts = WRONG + ["13-9=4\n10-4=6\n4*6=24"]
  prompts, _ = countdown.encode_prompts([problem] * len(texts))
  answers = np.stack([countdown.encode_answer(t) for t in texts])
  truncated = answers[-1].copy()
  truncated[np.argmax(truncated == tasks.EOS)] = tasks.PAD  # no EOS
  answers = np.concatenate([answers, truncated[None]])
  prompts = np.concatenate([prompts, prompts[:1]])
  expected = [0.0] * len(WRONG) + [1.0, 0.0]
  np.testing.assert_array_equal(verify_cd(prompts, answers), expected)
  assert [reference_check(countdown, problem, a) for a in answers] == expected


def test_legal_mask_accepts_solutions_and_random_rollouts_agree(countdown):
  pairs = countdown.sample_with_solutions(2, 64)
  problems = [p for p, _ in pairs]
  prompts, _ = countdown.encode_prompts(problems)
  answers = np.stack([countdown.encode_answer(a) for _, a in pairs])

  @jax.jit
  def follow(prompts, answers):
    def body(s, tok):
      legal = countdown.legal_mask(s)[jnp.arange(tok.shape[0]), tok]
      return countdown.step(s, tok), legal
    s, legal = jax.lax.scan(body, countdown.init_state(prompts), answers.T)
    return legal.T, countdown.reward(s)
  legal, reward = follow(prompts, answers)
  assert bool(legal.all()) and bool((reward == 1).all())

  @jax.jit
  def rollout(prompts, key):
    def body(s, k):
      mask = countdown.legal_mask(s)
      tok = jax.random.categorical(k, jnp.where(mask, 0.0, -jnp.inf))
      return countdown.step(s, tok), mask.any(1)
    s, nonempty = jax.lax.scan(body, countdown.init_state(prompts),
                               jax.random.split(key, countdown.max_answer_length))
    return s, nonempty.all()
  s, nonempty = rollout(prompts, jax.random.key(0))
  assert bool(nonempty) and bool(s.valid.all() | True)
  for i in range(64):
    assert float(countdown.reward(s)[i]) == reference_check(countdown, problems[i], s.tokens[i])
  # Grammar-following rollouts never break syntax: every invalid one is
  # semantic or truncated, so the parser state stays consistent.
  done = np.asarray(s.done)
  lines = [countdown.decode(t).split("<eos>")[0].split("\n") for t in np.asarray(s.tokens)[done]]
  assert all(len(l) == 3 and all(_STEP.fullmatch(x) for x in l) for l in lines)


_ALPHABET = [tasks.EOS, tasks.NEWLINE] + list(range(4, 23))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_fuzz_never_rewards_invalid(countdown, verify_cd, data):
  problem = data.draw(st.sampled_from([((4, 9, 10, 13), 24), ((1, 3, 4, 6), 24),
                                       ((84, 18, 9, 86), 197)]))
  base = countdown.encode(countdown.solution_text(problem)) + [tasks.EOS]
  kind = data.draw(st.integers(0, 2))
  if kind == 0:  # random tokens from the whole vocabulary
    ids = data.draw(st.lists(st.integers(0, 22), max_size=countdown.max_answer_length))
  elif kind == 1:  # plausible characters
    ids = data.draw(st.lists(st.sampled_from(_ALPHABET), max_size=30))
  else:  # a few edits of a correct answer
    ids = list(base)
    for _ in range(data.draw(st.integers(1, 3))):
      pos = data.draw(st.integers(0, len(ids)))
      tok = data.draw(st.sampled_from(_ALPHABET))
      op = data.draw(st.integers(0, 2))
      if op == 0:
        ids.insert(pos, tok)
      elif ids and op == 1:
        ids[min(pos, len(ids) - 1)] = tok
      elif ids:
        del ids[min(pos, len(ids) - 1)]
  answer = np.zeros((1, countdown.max_answer_length), np.int32)
  ids = ids[:countdown.max_answer_length]
  answer[0, :len(ids)] = ids
  prompts, _ = countdown.encode_prompts([problem])
  got = float(verify_cd(prompts, answer)[0])
  assert got == reference_check(countdown, problem, answer[0])


def test_bad_input(countdown):
  with pytest.raises(ValueError, match="num_numbers"):
    tasks.get_task("countdown", num_numbers=12)
  with pytest.raises(ValueError, match="max_number"):
    tasks.get_task("countdown", max_number=100_000)
  with pytest.raises(ValueError, match="4 numbers"):
    countdown.encode_prompt(((1, 2, 3), 6))
  with pytest.raises(ValueError, match="integers in"):
    countdown.encode_prompt(((1, 2, 3, 123456), 6))
  with pytest.raises(ValueError, match=r"\[B, P=26\]"):
    countdown.init_state(np.zeros((2, 5), np.int32))


def test_game24_sampling_avoids_test_ranks(game24):
  test = {nums for _, nums in tasks.game24_splits()["test"]}
  assert not any(p in test for p, _ in game24.sample_problems(1, 3000))
  assert all(p in test for p, _ in game24.sample_problems(1, 50, split="test"))
  with pytest.raises(ValueError, match="split"):
    game24.sample_problems(1, 5, split="dev")


def test_game24_extended_puzzles_lie_beyond_the_list(game24):
  """The extended pool is the solvable multisets with a number above 13; the
  same rule over 1..13 gives exactly the ranked list of 24.csv."""
  import itertools  # pylint: disable=import-outside-toplevel
  listed = {tuple(sorted(p)) for _, p in tasks.game24_puzzles()}
  rule = {m for m in itertools.combinations_with_replacement(range(1, 14), 4)
          if tasks.solve(m, 24) is not None}
  assert rule == listed and len(listed) == 1362
  ext = cd.game24_extended_puzzles(15)
  assert len(ext) == len(set(ext)) > 100
  assert all(max(m) > 13 and tuple(sorted(m)) == m for m in ext)
  every = [m for m in itertools.combinations_with_replacement(range(1, 16), 4)
           if max(m) > 13]
  assert set(ext) == {m for m in every if tasks.solve(m, 24) is not None}
  assert (1, 1, 2, 14) in ext and (1, 1, 1, 14) not in ext  # (14-2)*(1+1)
  # Sampled rows: none listed; "train+extended" mixes both pools.
  got = game24.sample_problems(3, 400, split="extended")
  assert all(tuple(sorted(p)) not in listed and t == 24 for p, t in got)
  mixed = game24.sample_problems(3, 400, split="train+extended")
  share = np.mean([tuple(sorted(p)) in listed for p, _ in mixed])
  assert 0.4 < share < 0.6
  assert game24.sample_problems(3, 400, split="train+extended") == mixed
  with pytest.raises(ValueError, match="max_number must be in"):
    cd.game24_extended_puzzles(13)
