"""Connect Four task against pgx and an independent pure-Python referee."""
import jax
import jax.numpy as jnp
import numpy as np
import pgx
import pytest

import tsearch.tasks as tasks
from tsearch.tasks.connect_four import MOVE0, reference_winner


@pytest.fixture(scope="module")
def task():
  return tasks.get_task("connect_four")


def test_random_play_matches_pgx(task):
  b = 1000
  env = pgx.make("connect_four")
  prompts = np.zeros((b, task.max_prompt_length), np.int32)
  prompts[:, 0] = tasks.BOS

  @jax.jit
  def play(key):
    keys = jax.random.split(key, task.max_answer_length)
    first = jax.vmap(env.init)(jax.random.split(jax.random.key(1), b))

    def body(c, k):
      s, g, total = c
      mask = task.legal_mask(s)
      col = jax.random.categorical(k, jnp.where(mask[:, MOVE0:MOVE0 + 7], 0.0, -jnp.inf))
      token = jnp.where(task.is_terminal(s), tasks.PAD, col + MOVE0)
      gcol = jax.random.categorical(k, jnp.where(g.legal_action_mask, 0.0, -jnp.inf))
      g = jax.vmap(env.step)(g, gcol)
      # pgx gives rewards on the final step only (zeros after), so sum them.
      return (task.step(s, token), g, total + g.rewards), task.discount(s)
    init = (task.init_state(prompts), first, jnp.zeros((b, 2)))
    (s, g, total), discounts = jax.lax.scan(body, init, keys)
    return s, g, total, first.current_player, discounts
  s, g, total, first_player, discounts = play(jax.random.key(0))
  assert bool(task.is_terminal(s).all()) and bool(s.valid.all())
  # pgx's own game with the same random choices: move count and winner.
  np.testing.assert_array_equal(s.length, g._step_count)
  r = np.asarray(task.reward(s))
  last_mover_is_first = np.asarray(s.length) % 2 == 1
  winner_first = np.where(r == 1, np.where(last_mover_is_first, 1, -1), 0)
  pgx_first = np.asarray(total)[np.arange(b), np.asarray(first_player)]
  np.testing.assert_array_equal(winner_first, pgx_first)
  assert (r == 1).mean() > 0.8  # draws are rare in random play
  # Independent referee on the move sequences.
  tokens, lengths = np.asarray(s.tokens), np.asarray(s.length)
  for i in range(b):
    moves = (tokens[i, :lengths[i]] - MOVE0).tolist()
    w = reference_winner(moves)
    assert w is not None
    assert r[i] == (0.0 if w == -1 else 1.0)
    assert w == -1 or w == (lengths[i] - 1) % 2
  # Two players: discount -1 before the end, 0 at the end.
  d = np.asarray(discounts)
  assert set(np.unique(d)) <= {-1.0, 0.0} and (d[0] == -1).all()


def test_openings_and_illegal_moves(task):
  problems = [(3, 3, 3, 3, 3, 3), (), (0, 1, 0, 1, 0, 1)]
  prompts, lengths = task.encode_prompts(problems)
  assert task.decode(prompts[0]) == "<bos>333333" and lengths.tolist() == [7, 1, 7]

  @jax.jit
  def one_move(prompts, token):
    s = task.init_state(prompts)
    s2 = task.step(s, token)
    return s.prompt_ok, task.legal_mask(s), task.is_terminal(s2), task.reward(s2)
  # Full column, a non-move token, and a winning move.
  ok, mask, terminal, reward = one_move(prompts, jnp.array([MOVE0 + 3, tasks.EOS, MOVE0]))
  assert ok.tolist() == [True, True, True]
  mask = np.asarray(mask)
  assert not mask[0, MOVE0 + 3] and mask[0, MOVE0 + 2] and mask[1, MOVE0:MOVE0 + 7].all()
  assert terminal.tolist() == [True, True, True]
  np.testing.assert_array_equal(reward, [-1.0, -1.0, 1.0])
  # verify() replays whole answers: the first player wins in column 0; an
  # opening that already ended the game is not a valid prompt (reward 0).
  answers = np.zeros((2, task.max_answer_length), np.int32)
  answers[0, :7] = np.array([0, 1, 0, 1, 0, 1, 0]) + MOVE0
  answers[1, 0] = MOVE0 + 2
  prompts = task.encode_prompts([(), (0, 1, 0, 1, 0, 1, 0)])[0]
  np.testing.assert_array_equal(jax.jit(task.verify)(prompts, answers), [1.0, 0.0])


def test_sample_problems_and_bad_input(task):
  ps = task.sample_problems(0, 50)
  assert ps == task.sample_problems(0, 50) and all(reference_winner(p) is None for p in ps)
  assert bool(jax.jit(task.init_state)(task.encode_prompts(ps)[0]).prompt_ok.all())
  with pytest.raises(ValueError, match="max_opening"):
    tasks.get_task("connect_four", max_opening=50)
  with pytest.raises(ValueError, match="columns"):
    task.encode_prompt((7,))
  assert task.num_players == 2 and task.step_delimiter == -1


def test_sample_problems_long_openings_never_end_the_game():
  # Openings long enough to contain wins must be redrawn, not crash.
  task = tasks.get_task("connect_four", max_opening=30)
  problems = task.sample_problems(seed=0, num=200)
  assert len(problems) == 200
  assert max(len(p) for p in problems) > 7
  for p in problems:
    assert reference_winner(p) is None
