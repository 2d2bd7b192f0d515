"""The rules environment for Countdown/Game 24 and the solver warm-start data."""
from fractions import Fraction
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsearch.tasks import countdown_solver
from tsearch.tasks.countdown_rules import StrictCountdown, number_tokens
import tsearch.tasks as tasks_lib
from tsearch.tasks import get_task
from tsearch.tasks import vocab as V


def test_number_tokens_match_the_task_notation():
  n = jnp.array([0, 7, 24, 9999, 1, 24, 13])
  d = jnp.array([1, 1, 1, 1, 4, 5, 1000])
  toks, lens = number_tokens(n, d)
  base = get_task("game24")
  for i, text in enumerate(["0", "7", "24", "9999", "(1/4)", "(24/5)",
                            "(13/1000)"]):
    assert int(lens[i]) == len(text)
    assert base.decode(np.asarray(toks[i, :lens[i]])) == text
    assert np.all(np.asarray(toks[i, lens[i]:]) == V.PAD)


@pytest.fixture(scope="module")
def env():
  return StrictCountdown(get_task("game24"))


def _rows(n):
  """The batch size a walk of ``n`` rows runs at: rows are independent, so
  batches are padded to a few sizes and each (environment, size, length)
  compiles once, not once per call and row count."""
  return max(8, 1 << (n - 1).bit_length())


def _pad_rows(n, *xs):
  return [np.concatenate([np.asarray(x), np.repeat(np.asarray(x)[:1],
                                                   _rows(n) - n, 0)])
          for x in xs]


@functools.lru_cache(maxsize=None)
def _walker(env):
  @jax.jit
  def run(prompts, answers):
    s = env.init_state(prompts)

    def body(s, t):
      legal = env.legal_mask(s)
      ok = jnp.where(t == V.PAD, True, legal[jnp.arange(t.shape[0]), t])
      return env.step(s, t), (ok, legal)
    s, (ok, legal) = jax.lax.scan(body, s, answers.T)
    return ok.T, jnp.swapaxes(legal, 0, 1), env.reward(s), env.is_terminal(s)
  return run


def _walk(env, prompts, answers):
  n = len(answers)
  out = jax.device_get(_walker(env)(*_pad_rows(n, prompts, answers)))
  return tuple(x[:n] for x in out)


@functools.lru_cache(maxsize=None)
def _verifier(env):
  return jax.jit(env.verify)


def _verify(env, prompts, answers):
  """``env.verify``, jitted once per environment (rows padded as a walk's)."""
  n = len(answers)
  return np.asarray(_verifier(env)(*_pad_rows(n, prompts, answers)))[:n]


def test_every_solution_is_legal_and_only_the_rules_are(env):
  base = env.base
  problems = [((4, 9, 10, 13), 24), ((1, 5, 5, 5), 24), ((3, 3, 8, 8), 24)]
  texts = [t for p in problems for t in countdown_solver.all_solutions(*p)[:6]]
  probs = [p for p in problems for _ in countdown_solver.all_solutions(*p)[:6]]
  prompts, _ = base.encode_prompts(probs)
  answers = np.stack([base.encode_answer(t) for t in texts])
  ok, legal, reward, terminal = _walk(env, prompts, answers)
  assert ok.all() and terminal.all()
  np.testing.assert_array_equal(reward, 1.0)
  first = np.flatnonzero(legal[0, 0])  # "4 9 10 13": a digit of 4, 9, 1x
  assert set(first) == {V.DIGIT0 + 4, V.DIGIT0 + 9, V.DIGIT0 + 1}
  # After "10-4=" only the exact result "6" then "\n" are legal.
  i = texts.index("10-4=6\n13-9=4\n6*4=24") if "10-4=6\n13-9=4\n6*4=24" in \
      texts else None
  if i is not None:
    assert np.flatnonzero(legal[i, 5]).tolist() == [V.DIGIT0 + 6]
    assert np.flatnonzero(legal[i, 6]).tolist() == [V.NEWLINE]


def test_wrong_arithmetic_and_unavailable_numbers_are_masked(env):
  base = env.base
  prompts, _ = base.encode_prompts([((4, 9, 10, 13), 24)] * 2)
  bad = np.stack([base.encode_answer("10-4=7\n13-9=4\n7*4=28"),
                  base.encode_answer("5+9=14\n10+13=23\n23-14=9")])
  ok, _, _, _ = _walk(env, prompts, bad)
  assert not ok[0, 5]  # "7" after "10-4="
  assert not ok[1, 0]  # 5 is not one of the numbers
  assert ok[0, :5].all()


def test_subtraction_below_zero_is_not_offered(env):
  base = env.base
  prompts, _ = base.encode_prompts([((1, 1, 1, 2), 24)])
  answer = np.asarray([base.encode("1")[0]] + [V.PAD] * (
      base.max_answer_length - 1))[None]
  _, legal, _, _ = _walk(env, prompts, answer)
  # 1 - x is never negative-free for x = 2 but 1 - 1 = 0 is fine: '-' legal.
  assert legal[0, 1, V.MINUS] and legal[0, 1, V.PLUS]
  prompts, _ = base.encode_prompts([((1, 2, 3, 4), 24)])
  _, legal, _, _ = _walk(env, prompts, answer)
  assert not legal[0, 1, V.MINUS]  # 1 - 2, 1 - 3, 1 - 4 are all negative


def test_all_solutions_and_labels_agree_with_the_solver():
  sols = countdown_solver.all_solutions((4, 9, 10, 13), 24)
  assert "13-9=4\n10-4=6\n6*4=24" in sols and len(sols) == len(set(sols))
  assert countdown_solver.all_solutions((1, 1, 1, 1), 24) == []
  rng = np.random.default_rng(0)
  text, labels = countdown_solver.random_derivation((4, 9, 10, 13), 24, rng)
  assert len(labels) == 3 and text.count("\n") == 2
  assert labels[-1] == ("=24" in text.split("\n")[-1])
  assert countdown_solver.solvable((Fraction(4), Fraction(6)), Fraction(24))
  assert not countdown_solver.solvable((Fraction(1), Fraction(1)), Fraction(24))


def test_solver_batch_is_seeded_and_verifies():
  env = StrictCountdown(get_task("game24"))
  a = countdown_solver.solver_traces(env, 5, 16, max_len=64)
  b = countdown_solver.solver_traces(env, 5, 16, max_len=64)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  pl = (a["token_mask"] > 0).sum(1)
  for r in range(16):
    if a["policy_weight"][r]:
      # Positives: the LM target is a verified answer, values all 1.
      lm = a["tokens"][r][a["loss_mask"][r] > 0]
      prompt = a["tokens"][r][(a["token_mask"][r] > 0)
                              & (a["loss_mask"][r] == 0)]
      padded_p = np.zeros((1, env.max_prompt_length), np.int32)
      padded_p[0, :len(prompt)] = prompt
      padded_a = np.zeros((1, env.max_answer_length), np.int32)
      padded_a[0, :len(lm)] = lm
      assert float(env.verify(padded_p, padded_a)[0]) == 1.0
      assert np.all(a["value_target"][r][a["value_mask"][r] > 0] == 1.0)
    assert a["value_mask"][r].sum() == 4  # prompt end + 3 step ends
    assert a["value_mask"][r, pl[r] - 1] == 1  # the EOS
  assert 0 < a["policy_weight"].mean() < 1


def test_solver_batch_split_draws_extended_puzzles():
  """``split="train+extended"`` (warm_start.problem_split) writes traces of
  puzzles with a number above 13, which the train split never has."""
  env = StrictCountdown(get_task("game24"))

  def numbers(batch):  # the prompts' numbers, row by row
    return [[int(x) for x in env.decode(
        [t for t in row[:env.max_prompt_length]
         if t not in (env.pad_id, env.bos_id)]
    ).split(":")[0].split()] for row in batch["tokens"]]

  train = countdown_solver.solver_traces(env, 5, 32, max_len=64)
  both = countdown_solver.solver_traces(env, 5, 32, max_len=64,
                                  split="train+extended")
  assert all(max(n) <= 13 for n in numbers(train))
  assert any(max(n) > 13 for n in numbers(both))
  assert both["policy_weight"].sum() > 0
  with pytest.raises(ValueError, match="split must be"):
    countdown_solver.solver_traces(env, 5, 4, max_len=64, split="bogus")


@pytest.mark.parametrize("strict", [False, True])
def test_example_stream_draws_game24_problems_from_its_split(strict):
  from tsearch.tasks import game24_splits  # pylint: disable=import-outside-toplevel
  from train import data as data_lib  # pylint: disable=import-outside-toplevel
  task = get_task("game24")
  task = StrictCountdown(task) if strict else task
  assert task.fixed_splits
  splits = game24_splits()
  key = lambda nums: tuple(sorted(nums))  # noqa: E731
  for split in ("test", "validation"):
    stream = data_lib.ExampleStream(task, 100, source="generated", seed=0,
                                     split=split)
    ex = stream.next()
    got = sorted(key(int(t) for t in task.decode(row[1:n]).split(":")[0]
                     .split()) for row, n in zip(ex["prompt"],
                                                 ex["prompt_length"]))
    # All 100 puzzles of the split, each once (the strict wrapper only
    # shuffles the order of a puzzle's numbers).
    assert got == sorted(key(nums) for _, nums in splits[split])
  train = {key(nums) for _, nums in splits["train"]}
  stream = data_lib.ExampleStream(task, 64, source="generated", seed=0)
  ex = stream.next()
  for row, n in zip(ex["prompt"], ex["prompt_length"]):
    nums = task.decode(row[1:n]).split(":")[0].split()
    assert key(int(t) for t in nums) in train
  # Search steps may draw the puzzles beyond the list (experimental.search_problem_split).
  ex = stream.next("extended")
  for row, n in zip(ex["prompt"], ex["prompt_length"]):
    nums = [int(t) for t in task.decode(row[1:n]).split(":")[0].split()]
    assert max(nums) > 13 and tasks_lib.solve(nums, 24) is not None
  assert stream.state()["step"] == 2
  with pytest.raises(ValueError, match="Unknown split 'extended'"):
    data_lib.ExampleStream(get_task("countdown"), 4, source="generated",
                           seed=0).next("extended")


def test_random_step_keeps_counts_solvable_first_steps():
  from tsearch.tasks import countdown as cdm  # pylint: disable=import-outside-toplevel
  assert countdown_solver.after_step([4, 9, 10, 13], 1, 3, 22) == [4, 10, 22]
  for numbers in [(4, 9, 10, 13), (1, 1, 1, 8), (3, 3, 8, 8)]:
    pool = [Fraction(x) for x in numbers]
    steps = countdown_solver.legal_steps(pool)
    ok = [cdm.solve([p for k, p in enumerate(pool) if k not in (i, j)] + [c],
                    24) is not None for i, j, _, c in steps]
    assert countdown_solver.random_step_keeps(numbers, 24) == pytest.approx(
        np.mean(ok))
  assert 0 < countdown_solver.random_step_keeps((4, 9, 10, 13), 24) < 0.5


def test_step_candidates_are_the_legal_steps_written_out(env):
  pool = [Fraction(x) for x in (4, 9, 10, 13)]
  cands = countdown_solver.step_candidates(pool)
  steps = countdown_solver.legal_steps(pool)
  assert len(cands) == len(steps)
  assert ("13-9=4", [Fraction(4), Fraction(10), Fraction(4)]) in cands
  assert ("4/9=(4/9)", [Fraction(10), Fraction(13), Fraction(4, 9)]) in cands
  # first_step_keeps: 13-9=4 leaves 4 4 10 (4*10-4*4 is 24, not needed:
  # (10-4)*4 is); 4/9 leaves 10 13 (4/9), from which 24 is out of reach.
  assert countdown_solver.first_step_keeps((4, 9, 10, 13), "13-9=4 4 4 10\n", 24)
  assert countdown_solver.first_step_keeps((4, 9, 10, 13), "13-9=4\n10-4=6", 24)
  assert not countdown_solver.first_step_keeps((4, 9, 10, 13), "4/9=(4/9)", 24)
  assert countdown_solver.first_step_keeps((4, 9, 10, 13), "13-8=5", 24) is None
  # A first step taken back (task.retract) is not the one kept.
  assert countdown_solver.first_step_keeps(
      (4, 9, 10, 13), "4/9=(4/9) (4/9) 10 13\n:\n13-9=4 4 4 10\n", 24)
  assert not countdown_solver.first_step_keeps(
      (4, 9, 10, 13), "13-9=4 4 4 10\n:\n4/9=(4/9) (4/9) 10 13\n", 24)
  # Every written step is one the strict environment accepts as a first
  # step, and it leaves the numbers the candidate says.
  texts = [env.encode(t) + [env.step_delimiter] for t, _ in cands]
  answers = np.full((len(texts), max(map(len, texts))), V.PAD, np.int32)
  for r, toks in enumerate(texts):
    answers[r, :len(toks)] = toks
  prompt, _ = env.encode_prompts([((4, 9, 10, 13), 24)] * len(texts))
  ok, _, _, _ = _walk(env, jnp.asarray(prompt), jnp.asarray(answers))
  assert ok.all()

  @jax.jit
  def numbers_left(prompts, answers):
    def body(s, t):
      new = env.step(s, t)
      return jax.tree.map(lambda n, o: jnp.where(
          (t != V.PAD).reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, s), None
    s, _ = jax.lax.scan(body, env.init_state(prompts), answers.T)
    return s.inner.num_n, s.inner.num_d, s.inner.avail
  num_n, num_d, avail = jax.device_get(numbers_left(jnp.asarray(prompt),
                                                    jnp.asarray(answers)))
  for r, (text, left) in enumerate(cands):
    got = sorted(Fraction(int(n), int(d)) for n, d, a in zip(
        num_n[r], num_d[r], avail[r]) if a)
    assert got == sorted(left), text


def test_ranking_auc():
  assert countdown_solver.ranking_auc([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2]) == 1.0
  assert countdown_solver.ranking_auc([1, 0, 1, 0], [0.1, 0.9, 0.2, 0.8]) == 0.0
  # One of the four positive-negative pairs misordered, one tied.
  assert countdown_solver.ranking_auc([1, 1, 0, 0], [0.9, 0.5, 0.6, 0.5]) == \
      pytest.approx((2 + 0 + 0.5) / 4)
  with pytest.raises(ValueError, match="both positive and negative"):
    countdown_solver.ranking_auc([1, 1], [0.2, 0.3])


def _walk_solved(env, prompts, answers):
  """:func:`_walk`, asserting every answer token legal and every answer
  solved (by the walk and by ``verify``); returns the legal masks."""
  ok, legal, reward, terminal = _walk(env, prompts, answers)
  assert ok.all() and terminal.all()
  np.testing.assert_array_equal(reward, 1.0)
  np.testing.assert_array_equal(_verify(env, prompts, answers), 1.0)
  return legal


@pytest.fixture(scope="module")
def left_env():
  return StrictCountdown(get_task("game24", max_answer_length=72),
                         show_left=True)


def test_show_left_writes_the_numbers_left_and_forces_them(left_env):
  env = left_env
  assert env.annotate((4, 9, 10, 13), "13-9=4\n10-4=6\n4*6=24") == \
      "13-9=4 4 4 10\n10-4=6 4 6\n4*6=24"
  assert env.annotate((1, 5, 5, 5), "1/5=(1/5)", complete=False) == \
      "1/5=(1/5) (1/5) 5 5"
  with pytest.raises(ValueError, match="not among the numbers left"):
    env.annotate((4, 9, 10, 13), "13-8=5\n10-4=6\n4*6=24")
  problems = [((4, 9, 10, 13), 24), ((1, 5, 5, 5), 24), ((3, 3, 8, 8), 24),
              ((1, 1, 1, 8), 24)]
  prompts, _ = env.encode_prompts(problems)
  answers = env.solution_tokens(problems)
  assert "(1/5) 5 5\n" in env.decode(answers[1])
  legal = _walk_solved(env, jnp.asarray(prompts), jnp.asarray(answers))
  # Every suffix token is the only legal one: the policy chooses nothing
  # there (row 0: "13-9=4" is 6 tokens, then " 4 4 10" is forced).
  for t in range(6, 6 + len(" 4 4 10")):
    assert legal[0, t].sum() == 1
  assert legal[0, 0].sum() > 1  # the first operand: a real choice
  # The rollout's choice_tokens: in "13-9=4 4 4 10\n" the choices are
  # "1", "3", "-" and "9"; from "=" on every token is forced.
  from tsearch._src.rollout import choice_tokens  # pylint: disable=import-outside-toplevel
  step = np.asarray(answers[:1, :len("13-9=4 4 4 10\n")])[:, None]
  choice = jax.jit(lambda s, t: choice_tokens(env, s, t))(
      env.init_state(jnp.asarray(prompts[:1])), jnp.asarray(step))
  np.testing.assert_array_equal(choice[0, 0], np.arange(step.shape[-1]) < 4)
  # A wrong number left (the first one's first digit changed) fails.
  bad = np.asarray(answers).copy()
  at = list(bad[0]).index(V.SPACE) + 1
  bad[0, at] = V.DIGIT0 + (bad[0, at] - V.DIGIT0 + 1) % 10
  assert float(_verify(env, prompts[:1], bad[:1])[0]) == 0.0
  # Without show_left the same environment writes and accepts plain steps.
  plain = StrictCountdown(get_task("game24", max_answer_length=72))
  assert plain.annotate((4, 9, 10, 13), "13-9=4\n10-4=6\n4*6=24") == \
      "13-9=4\n10-4=6\n4*6=24"
  assert plain != env and hash(plain) != hash(env)


def _solver_batch_lines(env):
  """Each row's answer lines of a solver batch; asserts every row has 3
  step ends and every solved row verifies."""
  a = countdown_solver.solver_traces(env, 3, 16, max_len=88)
  out = []
  for r in range(16):
    ends = np.flatnonzero(a["value_mask"][r])
    assert len(ends) == 4  # prompt end + 3 step ends
    text = env.decode(a["tokens"][r][ends[0] + 1:ends[-1] + 1])
    out.append(text.replace("<eos>", "").split("\n"))
    if a["policy_weight"][r]:
      answer = np.zeros((1, env.max_answer_length), np.int32)
      answer[0, :ends[-1] - ends[0]] = a["tokens"][r][ends[0] + 1:ends[-1] + 1]
      prompt = np.zeros((1, env.max_prompt_length), np.int32)
      prompt[0, :ends[0] + 1] = a["tokens"][r][:ends[0] + 1]
      assert float(_verify(env, prompt, answer)[0]) == 1.0, text
  return out


def test_solver_batch_with_show_left(left_env):
  for lines in _solver_batch_lines(left_env):
    # The first two steps end with the numbers left (3, then 2).
    assert [len(line.split(" ")) for line in lines] == [4, 3, 1], lines


def test_solver_batch_fits_answers_to_a_shorter_max_len(left_env):
  """``max_len`` below ``P + T`` (``data.max_len``, configs/game24)
  keeps only answers that fit the trace, the same ones a task with
  ``T = max_len - P`` keeps; too short a ``max_len`` is a clear error."""
  long_env = StrictCountdown(
      get_task("game24", max_answer_length=128), show_left=True)
  p = long_env.max_prompt_length
  a = countdown_solver.solver_traces(long_env, 3, 16, max_len=p + 72)
  b = countdown_solver.solver_traces(left_env, 3, 16, max_len=p + 72)
  assert left_env.max_answer_length == 72
  jax.tree.map(np.testing.assert_array_equal, a, b)
  with pytest.raises(ValueError, match="raise --config.data.max_len"):
    countdown_solver.solver_traces(long_env, 3, 16, max_len=p + 20)


@pytest.fixture(scope="module")
def first_env():
  return StrictCountdown(get_task("game24", max_answer_length=72),
                         left_first=True)


def _answers(env, texts):
  out = np.zeros((len(texts), env.max_answer_length), np.int32)
  for r, text in enumerate(texts):
    tokens = env.encode(text) + ([env.eos_id] if text.count("\n") == 2 else [])
    out[r, :len(tokens)] = tokens
  return jnp.asarray(out)


@pytest.mark.slow
def test_left_first_chooses_the_numbers_left_then_a_step_reaching_them(
    first_env):
  env = first_env
  assert env.annotate((4, 9, 10, 13), "13-9=4\n10-4=6\n4*6=24") == \
      "4 4 10:13-9=4\n4 6:10-4=6\n4*6=24"
  assert env.annotate((1, 5, 5, 5), "1/5=(1/5)", complete=False) == \
      "(1/5) 5 5:1/5=(1/5)"
  with pytest.raises(ValueError, match="two notations"):
    StrictCountdown(get_task("game24"), show_left=True, left_first=True)
  assert env != StrictCountdown(get_task("game24", max_answer_length=72),
                                show_left=True)
  # Every solution, in this notation, is legal, solves and verifies.
  problems = [((4, 9, 10, 13), 24), ((1, 5, 5, 5), 24), ((3, 3, 8, 8), 24),
              ((1, 1, 1, 8), 24)]
  probs = [p for p in problems for _ in countdown_solver.all_solutions(*p)[:5]]
  texts = [env.annotate(p[0], t) for p in problems
           for t in countdown_solver.all_solutions(*p)[:5]]
  prompts = jnp.asarray(env.encode_prompts(probs)[0])
  answers = _answers(env, texts)
  legal = _walk_solved(env, prompts, answers)
  # The first token: the first character of the smallest number left by
  # some legal step, and nothing else.
  pool = [Fraction(x) for x in (4, 9, 10, 13)]
  lefts = [left for _, left in countdown_solver.step_candidates(pool)]
  assert {env.vocab.symbols[t] for t in np.flatnonzero(legal[0, 0])} == {
      cd_format(min(left))[0] for left in lefts}
  # Every legal first step, written after its numbers left, is accepted.
  steps = [env.annotate((4, 9, 10, 13), t, complete=False)
           for t, _ in countdown_solver.step_candidates(pool)]
  ok, legal, _, _ = _walk(env, jnp.repeat(prompts[:1], len(steps), 0),
                          _answers(env, steps))
  assert ok.all()
  # After "4 13 19:" only 9+10 and 10+9 reach those numbers.
  row = steps.index("4 13 19:9+10=19")
  at = len("4 13 19:")
  assert {env.vocab.symbols[t] for t in np.flatnonzero(legal[row, at])} == \
      {"1", "9"}
  assert np.flatnonzero(legal[row, at + 1]) == [V.PLUS]  # "9" then only "+"
  # Numbers left that no step reaches (4 13 18) or a step that does not
  # reach the numbers written (9-10... is not 4 13 19) fail.
  for text in ("4 13 18:9+10=19", "4 13 19:13-9=4"):
    ok, _, _, _ = _walk(env, prompts[:1], _answers(env, [text]))
    assert not ok.all(), text
  bad = _answers(env, ["4 13 18:9+10=19\n4 6:19-13=6\n4*6=24"])
  assert float(_verify(env, prompts[:1], bad)[0]) == 0.0
  # The rollout's choice_tokens: the numbers left hold the choices; only
  # 13-9 reaches 4 4 10, so the step after them is forced.
  from tsearch._src.rollout import choice_tokens  # pylint: disable=import-outside-toplevel
  text = "4 4 10:13-9=4\n"
  step = np.asarray(env.encode(text))[None, None]
  choice = jax.jit(lambda s, t: choice_tokens(env, s, t))(
      env.init_state(prompts[:1]), jnp.asarray(step))
  assert choice[0, 0, 0]  # the smallest number left: 1, 3, 4, 5, ...
  assert not np.asarray(choice[0, 0, text.index(":"):len(text)]).any()


def cd_format(x):
  from tsearch.tasks import countdown as cd  # pylint: disable=import-outside-toplevel
  return cd.format_number(x)


def test_solver_batch_with_left_first(first_env):
  for lines in _solver_batch_lines(first_env):
    # The first two steps start with the numbers left (3, then 2).
    assert [len(line.split(":")[0].split(" ")) for line in lines[:2]] == \
        [3, 2] and ":" not in lines[2], lines
  assert countdown_solver.first_step_keeps((4, 9, 10, 13), "4 4 10:13-9=4", 24)
  assert not countdown_solver.first_step_keeps((4, 9, 10, 13), "9 10 17:4+13=17", 24)


def test_retract_takes_back_the_first_step_and_bars_it():
  env = StrictCountdown(get_task("game24", max_answer_length=104),
                        show_left=True, retract=2)
  plain = StrictCountdown(get_task("game24", max_answer_length=104),
                          show_left=True)
  assert env != plain and hash(env) != hash(plain) and "retract=2" in repr(env)
  nums = (4, 9, 10, 13)
  texts = [
      # Two first steps taken back, then solved.
      "9+10=19 4 13 19\n:\n13-4=9 9 9 10\n:\n13-9=4 4 4 10\n10-4=6 4 6\n"
      "4*6=24",
      # Taken back, then a different solution.
      "9+4=13 10 13 13\n:\n13-9=4 4 4 10\n10-4=6 4 6\n4*6=24",
  ]
  base = env.base
  answers = np.zeros((len(texts), 104), np.int32)
  for r, t in enumerate(texts):
    toks = base.encode(t) + [V.EOS]
    answers[r, :len(toks)] = toks
  prompts, _ = env.encode_prompts([(nums, 24)] * len(texts))
  legal = _walk_solved(env, jnp.asarray(prompts), jnp.asarray(answers))
  line = len("9+10=19 4 13 19\n")
  # ":" only right after the first step's line, and "\n" is forced after it.
  assert legal[0, line, V.COLON] and legal[0, line].sum() > 2
  assert legal[0, line + 1].sum() == 1 and legal[0, line + 1, V.NEWLINE]
  assert not legal[0, 0, V.COLON] and not legal[1, 3, V.COLON]
  # After two retractions no third one (after row 0's third first step).
  third = texts[0].index("13-9") + len("13-9=4 4 4 10\n")
  assert texts[0][third:].startswith("10-4")
  assert not legal[0, third, V.COLON] and legal[0, third, V.DIGIT0 + 1]
  # The second step's line start offers no ":" either.
  second = texts[1].index("10-4")
  assert not legal[1, second + len("10-4=6 4 6\n"), V.COLON]
  # After taking back "9+4", neither "9+4" nor "4+9" can be written again:
  # after "9+" no "4" (13 and 10 still are), after "4+" no "9".
  def legal_after(prefix):
    toks = base.encode(texts[1][:texts[1].index(":") + 2] + prefix)
    a = np.zeros((1, 104), np.int32)
    a[0, :len(toks)] = toks
    _, lg, _, _ = _walk(env, jnp.asarray(prompts[:1]), jnp.asarray(a))
    return lg[0, len(toks)]
  after = legal_after("9+")
  assert not after[V.DIGIT0 + 4] and after[V.DIGIT0 + 1]
  assert not legal_after("4+")[V.DIGIT0 + 9]
  assert legal_after("4*")[V.DIGIT0 + 9]  # only that step is barred
  # The same answers without retract: ":" is no rule there, reward 0.
  np.testing.assert_array_equal(
      _verify(plain, prompts, answers), 0.0)
  # Only the first step's numbers return: the third step's result is the
  # kept steps' (a retraction's step cannot be reused as an operand).
  bad = base.encode("13-9=4 4 4 10\n:\n4*10=40 4 9 40\n") + [V.EOS]
  a = np.zeros((1, 104), np.int32)
  a[0, :len(bad)] = bad
  assert float(_verify(env, prompts[:1], a)[0]) == 0.0
  with pytest.raises(ValueError, match="set show_left=True with it"):
    StrictCountdown(get_task("game24"), retract=1)
  with pytest.raises(ValueError, match="non-negative integer"):
    StrictCountdown(get_task("game24"), show_left=True, retract=-1)
