"""What training asks of a task: options, splits, moves, take-backs, held-out
problems and solver traces, through ``tsearch.get_task`` only."""
import jax
import numpy as np
import pytest

import tsearch
from tsearch.tasks import countdown_solver
from tsearch.tasks import vocab as V
from tsearch.tasks.countdown_rules import StrictCountdown


def test_rules_are_task_options_that_round_trip():
  t = tsearch.get_task("game24", strict=True, notation="left", retract=2,
                       max_answer_length=128)
  assert isinstance(t, StrictCountdown)
  assert t.show_left and not t.left_first and t.retract == 2
  assert t.options() == dict(max_answer_length=128, constrain=True,
                             strict=True, notation="left", retract=2)
  again = tsearch.get_task(t.name, **t.options())
  assert again == t and hash(again) == hash(t)
  first = tsearch.get_task("countdown", num_numbers=3, strict=True,
                           notation="left_first")
  assert first.left_first and first.notation == "left_first"
  plain = tsearch.get_task("game24")
  assert not isinstance(plain, StrictCountdown) and plain != t
  with pytest.raises(ValueError, match="pass strict=True"):
    tsearch.get_task("game24", notation="left")
  with pytest.raises(ValueError, match="pass strict=True"):
    tsearch.get_task("countdown", retract=1)
  with pytest.raises(ValueError, match="notation must be one of"):
    tsearch.get_task("game24", strict=True, notation="after")
  with pytest.raises(ValueError, match="Bad options"):
    tsearch.get_task("arithmetic", strict=True)


def test_moves_take_backs_and_splits():
  assert tsearch.get_task("game24").num_moves == 3
  assert tsearch.get_task("countdown", num_numbers=5).num_moves == 4
  assert tsearch.get_task("game24", strict=True).num_moves == 3
  assert tsearch.get_task("arithmetic").num_moves is None
  assert tsearch.get_task("game24", strict=True, notation="left",
                          retract=1).retract_token == V.COLON
  assert tsearch.get_task("game24", strict=True,
                          notation="left").retract_token is None
  assert tsearch.get_task("arithmetic").retract_token is None
  assert tsearch.get_task("game24").splits == (
      "train", "validation", "test", "extended", "train+extended")
  assert tsearch.get_task("countdown").splits == ("train", "validation",
                                                  "test")
  assert not tsearch.get_task("connect_four").has_solutions
  with pytest.raises(ValueError, match="Unknown split 'extended'"):
    tsearch.get_task("arithmetic").check_split("extended")


def test_attempts_count_take_backs():
  env = tsearch.get_task("game24", strict=True, notation="left", retract=2,
                         max_answer_length=104)
  texts = ["9+10=19 4 13 19\n:\n13-4=9 9 9 10\n:\n13-9=4 4 4 10\n"
           "10-4=6 4 6\n4*6=24",
           "13-9=4 4 4 10\n10-4=6 4 6\n4*6=24"]
  answers = np.zeros((2, 104), np.int32)
  for r, t in enumerate(texts):
    toks = env.encode(t) + [V.EOS]
    answers[r, :len(toks)] = toks
  prompts, _ = env.encode_prompts([((4, 9, 10, 13), 24)] * 2)
  state = jax.jit(env.run)(prompts, answers)
  np.testing.assert_array_equal(env.reward(state), [1.0, 1.0])
  np.testing.assert_array_equal(env.attempts(state), [3.0, 1.0])
  plain = tsearch.get_task("game24")
  np.testing.assert_array_equal(
      plain.attempts(plain.run(prompts[1:], answers[1:, :48])), [1.0])


def test_eval_problems():
  g = tsearch.get_task("game24", strict=True)
  test = g.eval_problems(None)
  assert len(test) == 100 and all(t == 24 for _, t in test)
  ranks = {nums: rank for rank, nums in tsearch.tasks.game24_puzzles()}
  assert sorted(ranks[nums] for nums, _ in test) == list(range(901, 1001))
  assert g.eval_problems(5) == test[:5]
  val = g.eval_problems(None, split="validation")
  assert len(val) == 100 and not set(val) & set(test)
  a = tsearch.get_task("arithmetic", max_digits=2)
  assert a.eval_problems(20) == a.eval_problems(20)
  assert a.eval_problems(20) != a.eval_problems(20, split="validation")
  with pytest.raises(ValueError, match="not 'train'"):
    a.eval_problems(4, split="train")


def test_solver_traces_are_written_in_the_rules_notation():
  env = tsearch.get_task("game24", strict=True, notation="left")
  out = env.solver_traces(3, 8, max_len=88, negative_fraction=0.0)
  ref = countdown_solver.solver_traces(env, 3, 8, max_len=88,
                                       negative_fraction=0.0)
  for k in out:
    np.testing.assert_array_equal(out[k], ref[k])
  # Every row is a solution with the numbers left after its first two steps.
  assert out["policy_weight"].tolist() == [1.0] * 8
  for row in out["tokens"]:
    text = env.decode(row[row != V.PAD])
    steps = text.split("\n")[1:4]
    assert [len(s.split(" ")) for s in steps] == [4, 3, 1], text
  # ... and the verifier accepts it after its prompt.
  prompts = np.full((8, env.max_prompt_length), V.PAD, np.int32)
  answers = np.full((8, 88), V.PAD, np.int32)
  for r, row in enumerate(out["tokens"]):
    pl = row.tolist().index(V.NEWLINE) + 1  # the prompt ends with "\n"
    prompts[r, :pl] = row[:pl]
    answers[r, :88 - pl] = row[pl:]
  np.testing.assert_array_equal(jax.jit(env.verify)(prompts, answers), 1.0)
  with pytest.raises(NotImplementedError, match="warm_start.data=reference"):
    tsearch.get_task("arithmetic").solver_traces(0, 2, max_len=16)
