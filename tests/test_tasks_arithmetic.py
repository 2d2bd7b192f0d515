"""Arithmetic task: digit-level verifier, grammar mask, bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tsearch.tasks as tasks


def reference_check(task, problem, ids):
  a, op, b = problem
  ids = list(np.asarray(ids)[:task.max_answer_length])
  if tasks.EOS not in ids:
    return 0.0
  ids = ids[:ids.index(tasks.EOS)]
  if any(i < 3 for i in ids):
    return 0.0
  return float(task.decode(ids) == str(a + b if op == "+" else a * b))


@pytest.fixture(scope="module")
def task():
  return tasks.get_task("arithmetic", max_digits=6)


@pytest.fixture(scope="module")
def verify(task):
  return jax.jit(task.verify)


def test_reference_solutions_get_full_reward(task, verify):
  problems = task.sample_problems(0, 1000)
  assert {op for _, op, _ in problems} == {"+", "*"}
  prompts, lengths = task.encode_prompts(problems)
  assert task.decode(prompts[0]) == "<bos>" + task.prompt_text(problems[0])
  assert lengths[0] == len(task.prompt_text(problems[0])) + 1
  np.testing.assert_array_equal(verify(prompts, task.solution_tokens(problems)), np.ones(1000))


def test_large_operands_do_not_overflow():
  task = tasks.get_task("arithmetic", max_digits=20, min_digits=18)
  problems = [(99999999999999999999, "*", 99999999999999999999),
              (12345678901234567890, "+", 98765432109876543210)]
  problems += task.sample_problems(3, 30)
  prompts, _ = task.encode_prompts(problems)
  np.testing.assert_array_equal(jax.jit(task.verify)(prompts, task.solution_tokens(problems)),
                                np.ones(len(problems)))


def test_wrong_answers_get_zero(task, verify):
  problem = (123, "*", 45)  # 5535
  texts = ["5535", "5536", "553", "55350", "05535", "", "5+35", "=5535"]
  prompts, _ = task.encode_prompts([problem] * (len(texts) + 2))
  answers = [task.encode_answer(t) for t in texts]
  answers.append(task.encode_answer("5535", eos=False))  # truncated: no EOS
  answers.append(np.full_like(answers[0], tasks.BOS))  # garbage
  got = verify(prompts, np.stack(answers))
  expected = [1.0] + [0.0] * (len(texts) + 1)
  np.testing.assert_array_equal(got, expected)
  assert [reference_check(task, problem, a) for a in answers] == expected


def test_zero_and_legal_mask(task):
  prompts, _ = task.encode_prompts([(0, "*", 999), (5, "+", 5)])
  s = task.init_state(prompts)
  m = np.asarray(task.legal_mask(s))
  assert m[:, 4:14].all() and not m[:, tasks.EOS].any() and not m[:, 14:].any()
  s = task.step(s, jnp.array([4, 5]))  # "0", "1"
  m = np.asarray(task.legal_mask(s))
  assert m[0].tolist() == [i == tasks.EOS for i in range(task.vocab.size)]  # no leading 0
  assert m[1, 4:14].all() and m[1, tasks.EOS]
  s = task.step(s, jnp.array([tasks.EOS, 4]))
  s = task.step(s, jnp.array([7, tasks.EOS]))  # no-op on the finished row
  assert s.length.tolist() == [2, 3]
  np.testing.assert_array_equal(task.reward(s), [1.0, 1.0])
  assert np.asarray(task.legal_mask(s))[:, 1:].sum() == 0


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_fuzz_matches_reference(task, verify, data):
  a = data.draw(st.integers(0, 999_999))
  b = data.draw(st.integers(0, 999_999))
  op = data.draw(st.sampled_from(["+", "*"]))
  correct = task.encode(str(a + b if op == "+" else a * b)) + [tasks.EOS]
  ids = data.draw(st.one_of(
      st.lists(st.integers(0, 22), max_size=task.max_answer_length),
      st.lists(st.sampled_from(list(range(4, 14)) + [tasks.EOS]), max_size=14),
      st.just(correct)))
  answer = np.zeros((1, task.max_answer_length), np.int32)
  ids = ids[:task.max_answer_length]
  answer[0, :len(ids)] = ids
  got = float(verify(task.encode_prompts([(a, op, b)])[0], answer)[0])
  assert got == reference_check(task, (a, op, b), answer[0])


def test_bad_input(task):
  for opts, msg in [(dict(max_digits=0), "max_digits"), (dict(max_digits=33), "max_digits"),
                    (dict(min_digits=5, max_digits=3), "min_digits"),
                    (dict(ops=("-",)), "ops")]:
    with pytest.raises(ValueError, match=msg):
      tasks.get_task("arithmetic", **opts)
  with pytest.raises(ValueError, match="out of range"):
    task.encode_prompt((1234567, "+", 1))
  with pytest.raises(ValueError, match="not in the vocabulary"):
    task.encode("12x")


def test_package_docstring_example_runs():
  doc = tasks.__doc__.split("::\n\n")[1].split("\n\nConventions")[0]
  scope = {}
  exec("\n".join(line[2:] for line in doc.splitlines()), scope)
  np.testing.assert_array_equal(scope["rewards"], np.ones(8))
  assert scope["problems"][0] == ((4, 5, 7, 13), 24)
