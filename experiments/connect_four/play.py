"""Connect Four matches: the trained model with MCTS against baselines.

  python experiments/connect_four/play.py --config configs/connect_four.py --workdir <dir> \\
      --simulations 32 --games 64 --out results/connect_four.json

Agents (each picks one move for every game of a batch):

* ``model_mcts``: ``tsearch.lm_search`` (token level, PUCT, no root noise)
  over the trained model from the current position (the whole game so far
  is the prompt), acting on the most visited move;
* ``random``: a uniformly random legal move;
* ``rollout_mcts``: plain MCTS (``tsearch.puct_search``, uniform priors)
  whose leaf value is one random playout, at the same number of
  simulations.

The model plays first in half of the games and second in the other half.
Rows: ``{"opponent", "simulations", "games", "win_rate", "draw_rate",
"loss_rate", "seed", "verifier_in_search"}`` from the model's side (the
game's rules score finished games inside the model's search, so
``verifier_in_search`` is true), merged into ``--out``.
"""
from __future__ import annotations

import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pgx
from absl import app, flags
from ml_collections import config_flags

import tsearch
from tsearch._src.lm_search import LMSearchConfig, lm_search
from tsearch.tasks import get_task
from tsearch.tasks.connect_four import MOVE0, NUM_COLUMNS
from train import config as config_lib

_ENV = pgx.make("connect_four")


def random_move(key, game):
  """``[G]`` uniformly random legal columns."""
  logits = jnp.where(game.legal_action_mask, 0.0, -jnp.inf)
  return jax.random.categorical(key, logits).astype(jnp.int32)


def _playout(key, game):
  """Result of a random playout for the player to move in ``game``."""
  player = game.current_player

  def cond(c):
    return ~jnp.all(c[1].terminated)

  def body(c):
    key, g = c
    key, sub = jax.random.split(key)
    a = random_move(sub, g)
    stepped = jax.vmap(_ENV.step)(g, a)
    g = jax.tree.map(lambda n, o: jnp.where(
        g.terminated.reshape(g.terminated.shape + (1,) * (n.ndim - 1)), o, n),
        stepped, g)
    return key, g
  _, g = jax.lax.while_loop(cond, body, (key, game))
  return g.rewards[jnp.arange(player.shape[0]), player]


@functools.partial(jax.jit, static_argnames=("num_simulations",))
def rollout_mcts_move(key, game, *, num_simulations: int):
  """``[G]`` columns chosen by plain MCTS with random-playout values."""
  g = game.current_player.shape[0]
  mask = game.legal_action_mask
  key, root_key, search_key = jax.random.split(key, 3)
  root = tsearch.RootOutput(
      prior_logits=jnp.zeros((g, NUM_COLUMNS)),
      value=_playout(root_key, game), embedding=game,
      children_actions=jnp.broadcast_to(
          jnp.arange(NUM_COLUMNS, dtype=jnp.int32)[None, :, None],
          (g, NUM_COLUMNS, 1)),
      children_mask=mask)

  def expand_fn(params, key, tree, parent, slot):
    del params
    rows = jnp.arange(g)
    parent_game = jax.tree.map(lambda x: x[rows, parent], tree.embeddings)
    mover = parent_game.current_player
    child = jax.vmap(_ENV.step)(parent_game, slot)
    reward = child.rewards[rows, mover]
    value = jnp.where(child.terminated, 0.0, _playout(key, child))
    return tsearch.ExpandOutput(
        reward=reward, discount=jnp.where(child.terminated, 0.0, -1.0),
        prior_logits=jnp.zeros((g, NUM_COLUMNS)), value=value,
        terminal=child.terminated,
        children_actions=root.children_actions,
        children_mask=child.legal_action_mask & ~child.terminated[:, None],
        embedding=child)

  out = tsearch.puct_search(None, search_key, root, expand_fn,
                            num_simulations=num_simulations,
                            dirichlet_fraction=0.0, temperature=0.0)
  return out.action.astype(jnp.int32)


def model_mcts_move(graphdef, state, task, history, key, *, num_simulations):
  """``[G]`` columns from ``lm_search`` over the model, ``history [G, P]``
  the prompt tokens (BOS + moves so far)."""
  lengths = (history != task.pad_id).sum(-1).astype(jnp.int32)
  cfg = LMSearchConfig(mode="token", policy="puct",
                       num_simulations=num_simulations,
                       num_children=NUM_COLUMNS,
                       max_depth=min(num_simulations, 42),
                       dirichlet_fraction=0.0, temperature=0.0)
  out = lm_search(graphdef, state, task, history, lengths, key, config=cfg)
  tree = out.search_tree
  token = tree.children_actions[jnp.arange(history.shape[0]), 0,
                                out.action, 0]
  return (token - MOVE0).astype(jnp.int32)


def play(graphdef, state, opponent: str, *, num_simulations: int,
         games: int, seed: int = 0) -> dict:
  """Plays ``games`` games (model first in the even ones)."""
  task = get_task("connect_four", max_opening=41)
  key = jax.random.key(seed)
  game = jax.vmap(_ENV.init)(jnp.broadcast_to(jax.random.key(0), (games,)))
  first = game.current_player  # pgx player id of the first mover
  model_player = jnp.where(jnp.arange(games) % 2 == 0, first, 1 - first)
  history = np.zeros((games, task.max_prompt_length), np.int32)
  history[:, 0] = task.bos_id
  step = jax.jit(jax.vmap(_ENV.step))
  for ply in range(42):
    if bool(jnp.all(game.terminated)):
      break
    key, k1, k2 = jax.random.split(key, 3)
    mine = model_mcts_move(graphdef, state, task, jnp.asarray(history), k1,
                           num_simulations=num_simulations)
    if opponent == "random":
      theirs = random_move(k2, game)
    else:
      theirs = rollout_mcts_move(k2, game, num_simulations=num_simulations)
    action = jnp.where(game.current_player == model_player, mine, theirs)
    live = ~game.terminated
    new = step(game, action)
    game = jax.tree.map(lambda n, o: jnp.where(
        live.reshape(live.shape + (1,) * (n.ndim - 1)), n, o), new, game)
    history[np.asarray(live), ply + 1] = np.asarray(action)[
        np.asarray(live)] + MOVE0
  result = np.asarray(game.rewards[jnp.arange(games), model_player])
  return dict(opponent=opponent, simulations=num_simulations, games=games,
              win_rate=float(np.mean(result > 0)),
              draw_rate=float(np.mean(result == 0)),
              loss_rate=float(np.mean(result < 0)))


_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_SIMS = flags.DEFINE_list("simulations", ["32"], "Simulations per move.")
_GAMES = flags.DEFINE_integer("games", 64, "Games per match (even).")
_OPPONENTS = flags.DEFINE_list("opponents", ["random", "rollout_mcts"],
                               "Opponents.")
_OUT = flags.DEFINE_string("out", None, "JSON file to merge the rows into.")
_SEED = flags.DEFINE_integer("seed", 0, "Key of the matches' random draws.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from train import loop  # pylint: disable=import-outside-toplevel
  _, fns, params, step = loop.latest_params(_CONFIG.value, _WORKDIR.value)
  rows = []
  for sims in _SIMS.value:
    for opp in _OPPONENTS.value:
      row = play(fns.graphdef, fns.state(params), opp,
                 num_simulations=int(sims), games=_GAMES.value,
                 seed=_SEED.value)
      row.update(stage="search_and_learn", step=int(step), seed=_SEED.value,
                 verifier_in_search=True)
      print(json.dumps(row), flush=True)
      rows.append(row)
  if _OUT.value:
    path = _OUT.value
    old = json.load(open(path))["rows"] if os.path.exists(path) else []
    key = lambda r: (r["opponent"], r["simulations"], r.get("seed"))
    keys = {key(r) for r in rows}
    old = [r for r in old if key(r) not in keys]
    with open(path, "w") as f:
      json.dump({"rows": old + rows}, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
