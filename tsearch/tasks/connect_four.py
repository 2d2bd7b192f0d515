"""Connect Four over move tokens, built on ``pgx.make("connect_four")``.

Tokens (:data:`~tsearch.tasks.vocab.CONNECT_FOUR_VOCAB`): ``"0".."6"`` are
the columns, token ``4 + a`` is pgx action ``a``. The prompt is BOS followed
by an opening (the moves already played, e.g. ``"<bos>33"``); the answer is
the rest of the game, one token per move. There is no EOS: the state is
terminal when the game is over (win, draw, or an illegal move).

Sign convention (as mctx/pgx and :class:`tsearch.ExpandOutput`):
``reward(state)`` is the game's result from the point of view of the player
who made the last move: +1 if that move won, 0 for a draw or a game not
over, -1 if the move was illegal (the mover loses, as in pgx). It is the
reward on the edge for the player who chose the action; values are from the
point of view of the player to move, and ``discount`` is -1 on non-terminal
edges, 0 into a terminal state.

A problem is a tuple of columns (the opening). ``step_delimiter`` is -1:
every move token is a step.
"""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pgx

from tsearch.tasks import base
from tsearch.tasks import vocab as V

NUM_COLUMNS = 7
MOVE0 = V.CONNECT_FOUR_VOCAB.id("0")  # token of column 0


@chex.dataclass(frozen=True)
class ConnectFourState:
  tokens: chex.Array  # [B, T] int32 move tokens after the prompt
  length: chex.Array  # [B] int32
  valid: chex.Array  # [B] bool, no illegal move so far
  done: chex.Array  # [B] bool, game over
  game: pgx.State  # pgx connect_four state, leaves [B, ...]
  last_reward: chex.Array  # [B] float32, last move's result for its mover
  prompt_ok: chex.Array  # [B] bool, the opening is legal and not finished


class ConnectFour(base.Task):
  """Two-player Connect Four; see the module docstring for signs.

  Args:
    max_opening: most opening moves in a prompt (``P = 1 + max_opening``).
    constrain: ``legal_mask`` gives the legal columns (else every move token,
      EOS and the delimiter, all of which but legal columns lose).
  """
  num_players = 2
  has_solutions = False  # self-play only: no reference answers
  step_delimiter = -1

  def __init__(self, *, max_opening: int = 8, constrain: bool = True):
    if not 0 <= max_opening <= 41:
      raise ValueError(f"max_opening must be in [0, 41], got {max_opening}.")
    self.name = "connect_four"
    self.vocab = V.CONNECT_FOUR_VOCAB
    self.max_opening, self.constrain = max_opening, constrain
    self.max_prompt_length = 1 + max_opening
    self.max_answer_length = 42
    self.env = pgx.make("connect_four")

  def options(self):
    return dict(max_opening=self.max_opening, constrain=self.constrain)

  # ---------------------------------------------------------------- host side
  def prompt_text(self, problem) -> str:
    problem = tuple(problem)
    if len(problem) > self.max_opening:
      raise ValueError(f"Opening {problem} has {len(problem)} moves; max_opening="
                       f"{self.max_opening}.")
    if any(not 0 <= c < NUM_COLUMNS for c in problem):
      raise ValueError(f"Opening moves must be columns 0..6, got {problem}.")
    return "".join(str(c) for c in problem)

  def sample_problems(self, seed: int, num: int) -> list:
    """Random legal openings of 0..max_opening moves that do not end the game."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < num:
      n = int(rng.integers(0, self.max_opening + 1))
      board = [[] for _ in range(NUM_COLUMNS)]
      moves = []
      ended = False
      for _ in range(n):
        col = int(rng.choice([c for c in range(NUM_COLUMNS) if len(board[c]) < 6]))
        board[col].append(len(moves) % 2)
        moves.append(col)
        if reference_winner(moves) is not None:  # Game over: draw again.
          ended = True
          break
      if not ended:
        out.append(tuple(moves))
    return out

  def solution_text(self, problem) -> str:
    raise NotImplementedError("Connect Four has no reference solution; use search.")

  # --------------------------------------------------------------- device side
  def _init(self, prompt, base_state):
    b = prompt.shape[0]
    key = jax.random.key(0)  # pgx picks which player id moves first; fixed.
    game = jax.vmap(self.env.init)(jnp.broadcast_to(key, (b,)))

    def replay(c, tok):
      game, ok = c
      is_move = (tok >= MOVE0) & (tok < MOVE0 + NUM_COLUMNS)
      action = jnp.clip(tok - MOVE0, 0, NUM_COLUMNS - 1)
      legal = is_move & game.legal_action_mask[jnp.arange(b), action] & ~game.terminated
      ok &= legal | (tok == V.PAD)
      stepped = jax.vmap(self.env.step)(game, action)
      game = base.select_rows(legal, stepped, game)
      return (game, ok), None
    (game, ok), _ = jax.lax.scan(replay, (game, prompt[:, 0] == V.BOS), prompt[:, 1:].T)
    pad_after = jnp.where(jnp.cumsum(prompt[:, 1:] == V.PAD, 1) > 0,
                          prompt[:, 1:] == V.PAD, True).all(1)
    ok &= ~game.terminated & pad_after
    return ConnectFourState(**base_state, game=game,
                            last_reward=jnp.zeros((b,), jnp.float32), prompt_ok=ok)

  def _grammar_mask(self, state):
    b = state.length.shape[0]
    mask = jnp.zeros((b, self.vocab.size), bool)
    return mask.at[:, MOVE0:MOVE0 + NUM_COLUMNS].set(state.game.legal_action_mask)

  def _update(self, state, token):
    b = token.shape[0]
    is_move = (token >= MOVE0) & (token < MOVE0 + NUM_COLUMNS)
    action = jnp.clip(token - MOVE0, 0, NUM_COLUMNS - 1)
    legal = is_move & state.game.legal_action_mask[jnp.arange(b), action]
    mover = state.game.current_player
    game = jax.vmap(self.env.step)(state.game, action)
    reward = game.rewards[jnp.arange(b), mover]
    return state.replace(game=game, last_reward=jnp.where(legal, reward, -1.0),
                         done=state.done | game.terminated | ~legal)

  def _reward(self, state):
    r = jnp.where(state.valid, state.last_reward, -1.0)
    return jnp.where(state.done & state.prompt_ok, r, 0.0)


def reference_winner(moves) -> int | None:
  """Pure-Python result of a move sequence: 0/1 (which player, by move
  parity, made four in a row first), -1 for a full-board draw, None if the
  game is not over. Raises ValueError on an illegal move or moves after the end."""
  board = np.full((6, NUM_COLUMNS), -1)
  heights = [0] * NUM_COLUMNS
  for t, col in enumerate(moves):
    if heights[col] >= 6:
      raise ValueError(f"Move {t} plays full column {col}.")
    r, p = heights[col], t % 2
    board[r, col] = p
    heights[col] += 1
    for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
      count = 1
      for sgn in (1, -1):
        rr, cc = r + sgn * dr, col + sgn * dc
        while 0 <= rr < 6 and 0 <= cc < NUM_COLUMNS and board[rr, cc] == p:
          count, rr, cc = count + 1, rr + sgn * dr, cc + sgn * dc
      if count >= 4:
        if t != len(moves) - 1:
          raise ValueError(f"Moves continue after the game ended at move {t}.")
        return p
  return -1 if len(moves) == 42 else None
