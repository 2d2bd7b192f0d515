"""The search family: bad input, answer aggregation and resampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tsearch
from tests.test_family_helpers import FixedSteps, model_for
from tsearch._src import algorithms as A

TASK = FixedSteps(steps=2, step_tokens=2)
GD, ST = model_for(TASK)
PT, PL = TASK.encode_prompts([5, 61])
KEY = jax.random.key(0)


def test_registry_names_and_unknown_name():
  assert list(A.ALGORITHMS) == ["greedy", "sampling", "best_of_n", "beam",
                                "dvts", "particle_filter", "best_first",
                                "mcts", "gumbel"]
  assert tsearch.get_algorithm("beam") is A.beam
  with pytest.raises(ValueError, match="Unknown algorithm 'bfs'.*greedy, "
                     "sampling, best_of_n, beam, dvts, particle_filter, best_first, mcts, "
                     "gumbel"):
    tsearch.get_algorithm("bfs")


@pytest.mark.parametrize("name", list(A.ALGORITHMS))
@pytest.mark.parametrize("budget", [0, -3, 2.0, True])
def test_bad_budget(name, budget):
  with pytest.raises(ValueError, match="budget must be a positive int"):
    A.get_algorithm(name)(GD, ST, TASK, PT, PL, KEY, budget=budget)


def test_beam_wider_than_capacity():
  with pytest.raises(ValueError, match="wider than the search's capacity"):
    A.beam(GD, ST, TASK, PT, PL, KEY, budget=8, beam_width=4, capacity=2)
  with pytest.raises(ValueError, match="wider than the search's capacity"):
    A.beam(GD, ST, TASK, PT, PL, KEY, budget=4, beam_width=8)
  with pytest.raises(ValueError, match="multiple of beam_width"):
    A.beam(GD, ST, TASK, PT, PL, KEY, budget=6, beam_width=4)
  with pytest.raises(ValueError, match="exceed capacity"):
    A.particle_filter(GD, ST, TASK, PT, PL, KEY, budget=8, capacity=4)
  with pytest.raises(ValueError, match="capacity 3 < num_simulations"):
    A.mcts(GD, ST, TASK, PT, PL, KEY, budget=4, capacity=3)


def test_other_bad_input():
  with pytest.raises(ValueError, match="aggregate must be one of"):
    A.best_of_n(GD, ST, TASK, PT, PL, KEY, budget=2, aggregate="max")
  with pytest.raises(ValueError, match="terminal_score must be one of"):
    A.dvts(GD, ST, TASK, PT, PL, KEY, budget=4, terminal_score="oracle")
  with pytest.raises(ValueError, match=r"prompt_tokens must be \[B, P=6\]"):
    A.greedy(GD, ST, TASK, PT[:, :4], PL, KEY)
  with pytest.raises(ValueError, match="multiple of expansions"):
    A.dvts(GD, ST, TASK, PT, PL, KEY, budget=6, expansions=4)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    A.sampling(GD, ST, TASK, PT, PL, KEY, temperature=0.0)
  long_task = FixedSteps(steps=20, step_tokens=2)
  with pytest.raises(ValueError, match="max_seq_len"):
    A.greedy(GD, ST, long_task, PT, PL, KEY)


def test_choose_majority_weighted_best_value():
  # Answers: A (twice, low value), B (once, high value), C (unfinished, top).
  a, b, c = [4, 5, 2], [6, 2, 0], [7, 7, 7]
  cand = jnp.array([[a, b, a, c]])
  values = jnp.array([[-0.2, 0.9, -0.4, 1.0]])
  finished = jnp.array([[True, True, True, False]])
  lengths = jnp.array([[3, 2, 3, 3]])

  def pick(how):
    return int(A.choose(cand, lengths, values, finished, aggregate=how)[0])

  assert pick("majority") == 0  # A: 2 votes
  assert pick("weighted") == 1  # A: 0 + 0 < B: 0.9
  # Weights are values clipped to the reward range [0, 1]: three answers A
  # valued 0 (wrong, by the value) add nothing against one B valued 0.3.
  # (Mapped from the head's (-1, 1) range, A would have 1.5 and win.)
  three = jnp.array([[a, a, a, b]])
  assert int(A.choose(three, lengths, jnp.array([[0.0, 0.0, 0.0, 0.3]]),
                      jnp.ones((1, 4), bool), aggregate="weighted")[0]) == 3
  # Two A at 0.4 beat one B at 0.7.
  assert int(A.choose(three, lengths, jnp.array([[0.4, 0.4, -1.0, 0.7]]),
                      jnp.ones((1, 4), bool), aggregate="weighted")[0]) == 0
  assert pick("best_value") == 1  # C is higher but unfinished
  # Nothing finished: every candidate is eligible.
  idx = A.choose(cand, lengths, values, jnp.zeros_like(finished),
                 aggregate="best_value")
  assert int(idx[0]) == 3


def test_systematic_resample():
  key = jax.random.key(1)
  np.testing.assert_array_equal(
      A.systematic_resample(key, jnp.zeros((3, 5))), np.tile(np.arange(5),
                                                             (3, 1)))
  # One particle carries (almost) all the weight.
  lw = jnp.array([[0.0, 50.0, 0.0, 0.0]])
  np.testing.assert_array_equal(A.systematic_resample(key, lw), [[1] * 4])
  # Weights 1:3 over two particles: one and three offspring.
  lw = jnp.log(jnp.array([[1.0, 3.0, 0.0, 0.0]]) + 1e-30)
  anc = np.asarray(A.systematic_resample(key, lw))[0]
  np.testing.assert_array_equal(np.bincount(anc, minlength=4), [1, 3, 0, 0])
