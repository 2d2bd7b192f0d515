"""Best-first (A*-style) search: its reduction to beam search, the priority
formula against a reference sampler, the frontier's overflow rule, the
verifier, exact compute counts and bad input.

Most of the time is compiling: the tests share three best-first programs
(``K = 4`` with capacity 1, 6 and 19) and one beam.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import models
from tests.test_family_helpers import FixedSteps, model_for
from tsearch._src import algorithms as A
from tsearch.tasks import vocab as V

TASK = FixedSteps(steps=3, step_tokens=3)  # T = 9: three 3-token steps
GD, ST = model_for(TASK)
PROBLEMS = [7, 42, 913, 5, 61, 300, 18, 2024]
PT, PL = TASK.encode_prompts(PROBLEMS)
KEY = jax.random.key(3)
T, S, K = TASK.max_answer_length, TASK.step_tokens, 4
RB = np.arange(len(PROBLEMS))


def run(name, budget, key=KEY, **kw):
  return jax.device_get(A.get_algorithm(name)(GD, ST, TASK, PT, PL, key,
                                              budget=budget, **kw))


def best_first(budget, **kw):
  return run("best_first", budget, expansions=K, **kw)


def assert_same(a, b):
  np.testing.assert_array_equal(a.answers, b.answers)
  np.testing.assert_allclose(a.answer_scores, b.answer_scores, rtol=1e-5)
  np.testing.assert_array_equal(a.candidate_finished, b.candidate_finished)
  np.testing.assert_array_equal(a.model_calls, b.model_calls)
  np.testing.assert_array_equal(a.tokens_forwarded, b.tokens_forwarded)


def first_steps():
  """The ``K`` first steps ``[B, K, S]`` that the first expansion samples
  from each prompt, their value ``[B, K]`` and log-probability ``[B, K]``:
  beam search's keys, drawn token by token from full forward passes."""
  forward = jax.jit(lambda s, t, p: models.forward(GD, s, t, p))
  sample_key, _ = jax.random.split(KEY)
  row_keys = jax.random.split(jax.random.fold_in(sample_key, 0), len(PL) * K)
  plen = np.repeat(PL, K)
  seq = np.repeat(PT, K, 0)
  seq = np.concatenate([seq, np.full((len(seq), S), TASK.pad_id)], 1)
  pos = np.broadcast_to(np.arange(seq.shape[1]), seq.shape)
  r = np.arange(len(seq))
  logprob = np.zeros(len(seq))
  for j in range(S):
    logits = forward(ST, seq, pos).logits[r, plen - 1 + j, :TASK.vocab.size]
    legal = TASK.mask_at(jnp.full((len(seq),), j))
    keys = jax.vmap(jax.random.fold_in)(row_keys, jnp.full((len(seq),), j))
    tok = np.asarray(jax.vmap(jax.random.categorical)(
        keys, jnp.where(legal, logits, -1e30)))
    logp = jax.nn.log_softmax(jnp.where(legal, logits, -jnp.inf), -1)
    logprob += np.asarray(logp)[r, tok]
    seq[r, plen + j] = tok
  value = np.asarray(forward(ST, seq, pos).value)[r, plen - 1 + S]
  return (seq[r[:, None], plen[:, None] + np.arange(S)].reshape(-1, K, S),
          value.reshape(-1, K), logprob.reshape(-1, K))


def test_capacity_one_is_width_one_beam_search():
  # One slot: each expansion keeps only its best child, as a width-1 beam
  # keeps the best of its K steps; the same keys draw the same steps.
  out = best_first(3, capacity=1)
  assert_same(out, run("beam", K, beam_width=1))
  np.testing.assert_array_equal(out.tokens_forwarded, PL + K * T)
  np.testing.assert_array_equal(out.model_calls, 1 + T)
  assert out.candidate_finished.all() and out.candidates.shape == (8, 1, T)
  # A larger budget changes nothing: the finished pop ends the search.
  assert_same(best_first(5, capacity=1), out)


def test_one_expansion_answers_the_child_of_highest_priority():
  # One expansion cannot finish a three-step answer: the budget is spent and
  # the answer is the best partial one, the child of highest
  # value + cost_weight * logprob, unfinished.
  steps, value, logprob = first_steps()
  picks = []
  for w in (0.0, 1.0):
    out = best_first(1, capacity=1, cost_weight=w)
    idx = np.argmax(value + w * logprob, -1)
    np.testing.assert_array_equal(out.answers[:, :S], steps[RB, idx])
    assert (out.answers[:, S:] == TASK.pad_id).all()
    np.testing.assert_array_equal(out.answer_lengths, S)
    assert not out.candidate_finished.any()
    np.testing.assert_allclose(out.answer_scores, value[RB, idx], rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_array_equal(out.tokens_forwarded, PL + K * S)
    np.testing.assert_array_equal(out.model_calls, 1 + S)
    picks.append(idx)
  assert (picks[0] != picks[1]).any()  # the likelihood term matters


def test_default_capacity_drops_nothing_that_matters():
  budget = 6
  out = best_first(budget)  # capacity = budget
  assert_same(out, best_first(budget, capacity=1 + budget * (K - 1)))
  # Each expansion samples K steps of S tokens: S calls, K * S tokens.
  expansions = (out.model_calls - 1) // S
  np.testing.assert_array_equal(out.model_calls, 1 + S * expansions)
  np.testing.assert_array_equal(out.tokens_forwarded,
                                PL + K * S * expansions)
  assert (expansions <= budget).all()
  assert (expansions[out.candidate_finished[:, 0]] >= 3).all()
  # A* goes back to siblings: some problems spend more than a beam's three
  # expansions (and answer otherwise than the width-1 beam).
  assert (expansions > 3).any()
  assert not np.array_equal(out.answers, best_first(budget,
                                                    capacity=1).answers)
  # Same key, same answers; another key, other answers.
  assert_same(out, best_first(budget))
  other = best_first(budget, key=jax.random.key(4))
  assert not np.array_equal(other.answers, out.answers)


def test_budget_spent_returns_an_answer_finished_on_the_way():
  # A large cost_weight searches nearly breadth-first (shorter answers are
  # likelier). With 10 expansions no search pops a finished answer early,
  # so after 8 the frontier's top is partial everywhere: the answers that
  # finished on the way are returned.
  kw = dict(capacity=6, cost_weight=100.0)
  np.testing.assert_array_equal(best_first(10, **kw).model_calls, 1 + 10 * S)
  out = best_first(8, **kw)
  np.testing.assert_array_equal(out.model_calls, 1 + 8 * S)
  assert out.candidate_finished.all()
  np.testing.assert_array_equal(out.answer_lengths, T)


def test_verifier_changes_the_choice():
  # FixedSteps: the verifier accepts an answer whose first digit is even
  # (the top of the value range), else the bottom. Scored so, an accepted
  # answer outranks every partial one and is popped as soon as it is found.
  budget = 6
  value = best_first(budget)
  ver = best_first(budget, terminal_score="verifier")
  even = (ver.answers[:, 0] - V.DIGIT0) % 2 == 0
  lo, hi = models.model_config_of(GD, ST).value_range
  done = ver.candidate_finished[:, 0]
  np.testing.assert_array_equal(ver.answer_scores[done],
                                np.where(even, hi, lo)[done])
  value_even = (value.answers[:, 0] - V.DIGIT0) % 2 == 0
  assert (even & done).sum() > (value_even & value.candidate_finished[:, 0]
                                ).sum()


def test_merge_keeps_the_best_and_fills_free_slots():
  inf = np.inf
  merge = jax.jit(A.best_first_lib._merge)  # pylint: disable=protected-access
  stays, slot = merge(jnp.array([[3.0, -inf, 1.0, 2.0]]),
                      jnp.array([[5.0, 0.0, 2.5]]))
  # Kept: 5, 3, 2.5, 2; dropped: the entry of 1 (slot 2) and the child of
  # 0. Entering children take the free slots in order (1, then 2).
  np.testing.assert_array_equal(stays, [[True, False, False, True]])
  np.testing.assert_array_equal(slot, [[1, 4, 2]])
  # Ties keep the older entry; nothing -inf enters.
  stays, slot = merge(jnp.array([[1.0, 1.0]]), jnp.array([[1.0, -inf]]))
  np.testing.assert_array_equal(stays, [[True, True]])
  np.testing.assert_array_equal(slot, [[2, 2]])


@pytest.mark.parametrize("kw,match", [
    (dict(budget=0), "budget must be a positive int"),
    (dict(budget=2.0), "budget must be a positive int"),
    (dict(budget=2, expansions=0), "expansions must be a positive int"),
    (dict(budget=2, capacity=0), "capacity must be a positive int"),
    (dict(budget=2, cost_weight=-0.1), "cost_weight must be a finite"),
    (dict(budget=2, cost_weight=float("nan")), "cost_weight must be a finite"),
    (dict(budget=2, terminal_score="oracle"), "terminal_score must be one of"),
    (dict(budget=2, temperature=0.0), "temperature must be > 0"),
    (dict(budget=2, max_step_tokens=0), "max_step_tokens must be a positive"),
])
def test_bad_arguments(kw, match):
  with pytest.raises(ValueError, match=match):
    A.best_first(GD, ST, TASK, PT, PL, KEY, **kw)


def test_evaluate_takes_best_first():
  from train import evaluate  # pylint: disable=import-outside-toplevel
  assert evaluate.parse_methods("best_first:16") == [("best_first", 16)]
  assert evaluate.verifier_in_search("best_first",
                                     {"terminal_score": "verifier"})
  assert not evaluate.verifier_in_search("best_first", {})
