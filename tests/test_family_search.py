"""The search family: equivalences, budgets and exact compute counts."""
import jax
import numpy as np
import pytest

import tsearch
from tests.test_family_helpers import FixedSteps, model_for, tiny_model
from tsearch._src import algorithms as A
from tsearch.tasks import vocab as V

TASK = FixedSteps(steps=3, step_tokens=3)  # T = 9 answer tokens
GD, ST = model_for(TASK)
PROBLEMS = [7, 42, 913]  # prompt lengths 3, 4, 5 (BOS + digits + ":")
PT, PL = TASK.encode_prompts(PROBLEMS)
KEY = jax.random.key(3)
T = TASK.max_answer_length


def mcts_model(task):
  """A context for the prompt, the committed answer and one answer-long
  step of the tree (the rollout behind ``mcts``)."""
  return tiny_model(task.vocab.size,
                    task.max_prompt_length + 2 * task.max_answer_length)


MCTS_MODEL = mcts_model(TASK)


def run(name, budget, key=KEY, task=TASK, pt=PT, pl=PL, model=None, **kw):
  gd, st = model or (GD, ST)
  return jax.device_get(A.get_algorithm(name)(gd, st, task, pt, pl, key,
                                              budget=budget, **kw))


def test_greedy_equals_width_one_beam():
  out = run("greedy", 1)
  # Step-level beam search of width 1 with one greedy step per round is
  # greedy decoding (tests/test_generate.py: the argmax of full forwards),
  # although it stops at every step delimiter.
  beam = run("beam", 1, beam_width=1, greedy_tokens=True)
  np.testing.assert_array_equal(beam.answers, out.answers)
  np.testing.assert_allclose(beam.answer_scores, out.answer_scores, rtol=1e-6)
  assert len({tuple(a) for a in out.answers}) > 1  # not a degenerate model


def test_best_of_one_is_sampling_with_the_same_key():
  s = run("sampling", 1)
  b = run("best_of_n", 1, aggregate="best_value")  # same compiled program
  np.testing.assert_array_equal(b.answers, s.answers)
  other = run("sampling", 1, key=jax.random.key(4))
  assert not np.array_equal(other.answers, s.answers)


def test_particle_filter_with_equal_weights_is_independent_sampling():
  n = 4
  bon = run("best_of_n", n)
  pf = run("particle_filter", n, value_temperature=float("inf"))
  np.testing.assert_array_equal(pf.candidates, bon.candidates)
  # With value weights, resampling changes the particles.
  pf_v = run("particle_filter", n, value_temperature=0.01)
  assert not np.array_equal(pf_v.candidates, bon.candidates)
  # ... and duplicates some (resampled ancestors share their first steps).
  firsts = {tuple(c[:3]) for c in pf_v.candidates.reshape(-1, T)}
  assert len(firsts) < len({tuple(c[:3]) for c in bon.candidates.reshape(
      -1, T)})


@pytest.mark.parametrize("name,budget,kw,num_candidates", [
    ("greedy", 1, {}, 1),
    ("sampling", 1, {}, 1),
    ("best_of_n", 4, {}, 4),
    ("beam", 8, dict(beam_width=2), 2),
    ("dvts", 8, dict(expansions=2), 4),
    ("particle_filter", 4, {}, 4),
])
def test_token_counts_follow_from_the_configuration(name, budget, kw,
                                                    num_candidates):
  out = run(name, budget, **kw)
  live = 1 if name in ("greedy", "sampling") else budget  # sequences / round
  # Prompt once + every live sequence forwards each of its T answer tokens;
  # one batched call per token position plus the prefill.
  np.testing.assert_array_equal(out.tokens_forwarded, PL + live * T)
  np.testing.assert_array_equal(out.model_calls, np.full(len(PL), 1 + T))
  assert out.candidates.shape == (len(PL), num_candidates, T)
  assert out.candidate_finished.all()
  np.testing.assert_array_equal(out.candidate_lengths, T)


def test_counts_skip_finished_sequences():
  task = tsearch.get_task("arithmetic", max_digits=2)  # variable lengths
  gd, st = model_for(task)
  pt, pl = task.encode_prompts(task.sample_problems(seed=1, num=3))
  for name, kw in [("best_of_n", {}), ("beam", dict(beam_width=4)),
                   ("particle_filter", {})]:
    out = run(name, 4, task=task, pt=pt, pl=pl, model=(gd, st), **kw)
    lengths = out.candidate_lengths
    assert len(np.unique(lengths)) > 1, name
    np.testing.assert_array_equal(out.tokens_forwarded, pl + lengths.sum(-1))
    np.testing.assert_array_equal(out.model_calls, 1 + lengths.max(-1))
    # The chosen answer is a candidate and scored as one.
    idx = [np.flatnonzero((c == a).all(-1))[0]
           for c, a in zip(out.candidates, out.answers)]
    np.testing.assert_allclose(out.answer_scores, out.candidate_scores[
        np.arange(3), idx])


def test_mcts_budget_and_counts():
  k, s = 3, TASK.step_tokens
  out = run("mcts", 1, num_children=k, model=MCTS_MODEL)
  # The rollout: the root is the prompt (one call, PL tokens) and K sampled
  # steps (s - 1 forwarded tokens each, s - 1 calls); each of the 3 moves
  # runs one simulation, expanding one node: its own s tokens and, below it,
  # K sampled steps (none below the last, terminal, step); it then commits
  # that node and keeps it (already paid for) as the next root.
  sampled = (1 + (s - 1), k * (s - 1))  # (calls, tokens) of a node
  calls = sampled[0] + 2 * sampled[0] + 1
  tokens = PL + sampled[1] + 2 * (s + sampled[1]) + s
  np.testing.assert_array_equal(out.model_calls, calls)
  np.testing.assert_array_equal(out.tokens_forwarded, tokens)
  assert out.candidate_finished.all()
  np.testing.assert_array_equal(out.answer_lengths, T)
  # The same answers as the rollout that makes training targets.
  cfg = tsearch.LMSearchConfig(mode="step", num_simulations=1, num_children=k,
                               step_length=T, max_depth=1, reserve_tokens=T,
                               temperature=0.0, dirichlet_fraction=0.0)
  # (Jitted: run eagerly, its ops compile one by one, twice as slow.)
  gd, st = MCTS_MODEL
  r = jax.device_get(jax.jit(lambda st, key: tsearch.rollout(
      gd, st, TASK, PT, PL, key, config=cfg, num_moves=T))(st, KEY))
  np.testing.assert_array_equal(r.answers, out.answers)
  np.testing.assert_array_equal(r.model_calls, out.model_calls)
  assert r.active.sum(1).tolist() == [3, 3, 3]  # one step per move


def test_mcts_needs_room_for_the_committed_answer():
  with pytest.raises(ValueError, match="the 9-token answer it commits"):
    run("mcts", 2)


def test_same_key_same_answers():
  a = run("beam", 8, beam_width=2)
  b = run("beam", 8, beam_width=2)
  np.testing.assert_array_equal(a.answers, b.answers)


@pytest.mark.slow
def test_mcts_act_on_solved_answers_with_a_verified_solution():
  # FixedSteps: reward 1 when the answer's first digit is even, else -1.
  # One-step answers: the verifier lookahead scores all K root steps at
  # the root's expansion and pruning leaves no simulation to spend on them,
  # so the plain search commits the first scored step while act_on_solved
  # commits a step the verifier accepted. The same key grows the same tree:
  # only the answer differs.
  one = FixedSteps(steps=1, step_tokens=3)
  model = mcts_model(one)
  problems = list(range(10, 42))
  pt, pl = one.encode_prompts(problems)
  kw = dict(task=one, pt=pt, pl=pl, model=model, num_children=4,
            terminal_lookahead=True, prune_terminal_slots=True)
  plain = run("mcts", 4, **kw)
  act = run("mcts", 4, act_on_solved=True, **kw)
  even = lambda out: (out.answers[:, 0] - V.DIGIT0) % 2 == 0  # noqa: E731
  for out in (plain, act):
    assert out.candidate_finished.all()
    np.testing.assert_array_equal(out.answer_scores,
                                  np.where(even(out), 1.0, -1.0))
  np.testing.assert_array_equal(act.tokens_forwarded, plain.tokens_forwarded)
  changed = (act.answers != plain.answers).any(-1)
  assert changed.any()
  assert even(act)[changed].all()  # a changed answer is a solution
  assert even(act).sum() > even(plain).sum()
  with pytest.raises(ValueError, match="prune_terminal_slots"):
    run("mcts", 6, num_children=3, prune_terminal_slots=True,
        model=MCTS_MODEL)
  c4 = tsearch.get_task("connect_four")
  with pytest.raises(ValueError, match="act_on_solved is for single-player "
                     "puzzles.*connect_four has 2 players"):
    run("mcts", 6, task=c4, act_on_solved=True)


def test_gumbel_plays_whole_answers():
  out = run("gumbel", 4, num_children=3, model=MCTS_MODEL)
  assert out.candidate_finished.all()
  np.testing.assert_array_equal(out.answer_lengths, T)
  again = run("gumbel", 4, num_children=3, model=MCTS_MODEL)
  np.testing.assert_array_equal(again.answers, out.answers)
