"""The search of a run: its ``search`` config section as a
:class:`tsearch.LMSearchConfig`, the number of moves a rollout makes, the
evaluation's MCTS, and the checks that the model's context holds them."""
from __future__ import annotations

import dataclasses

import ml_collections

import tsearch


def num_moves(search: ml_collections.ConfigDict, task) -> int:
  """Moves a rollout makes: ``search.max_moves``, else one per answer token
  (token level / one-token steps) or one per step of a task whose answers
  have a known number of steps (``task.num_moves``), else one per answer
  token."""
  if search.get("max_moves", 0):
    return int(search.max_moves)
  if (search.level == "step" and task.step_delimiter >= 0
      and task.num_moves):
    # A rollout that commits a take-back (``task.retract_token``: the search
    # found the first step dead) ends unfinished: the trainer packs every
    # move's candidates, so moves are not added for what is rare.
    return int(task.num_moves)
  return int(task.max_answer_length)


def eval_num_children(config) -> int | None:
  """``eval.mcts_num_children`` (0 or absent: the training search's K)."""
  return int(config.eval.get("mcts_num_children", 0)) or None


def eval_search_config(config: ml_collections.ConfigDict, task,
                       num_simulations: int) -> tsearch.LMSearchConfig:
  """Evaluation MCTS of a run (``train.evaluate``, ``train.summary``):
  the training search's options with PUCT, no root noise, acting on the
  most visited child, and ``eval.mcts_num_children`` slots per node."""
  cfg = lm_search_config(config.search, task, num_simulations=num_simulations,
                         acting_temperature=0.0, noise=False,
                         num_children=eval_num_children(config))
  return dataclasses.replace(cfg, policy="puct")


def lm_search_config(search: ml_collections.ConfigDict, task, *,
                     num_simulations: int | None = None,
                     num_children: int | None = None,
                     acting_temperature: float | None = None,
                     noise: bool = True) -> tsearch.LMSearchConfig:
  """The :class:`tsearch.LMSearchConfig` of a run's ``search`` section.

  Args:
    search: the config's ``search`` section.
    task: the task (sets the reserve for committed tokens).
    num_simulations: overrides ``search.num_simulations`` (evaluation).
    num_children: overrides ``search.num_children`` (evaluation).
    acting_temperature: overrides ``search.temperature`` (0: act on the most
      visited child).
    noise: Dirichlet noise at the root (PUCT); off for evaluation.
  """
  step = search.level == "step"
  s = int(search.get("step_length", 16)) if step else 1
  moves = num_moves(search, task)
  sims = int(search.num_simulations if num_simulations is None
             else num_simulations)
  depth = int(search.get("max_depth", 0)) or (moves if step else
                                               min(moves, sims))
  capacity = max(int(search.capacity), sims + 1)
  return tsearch.LMSearchConfig(
      mode=search.level, policy=search.algorithm, num_simulations=sims,
      num_children=int(num_children or search.num_children), step_length=s,
      max_depth=max(depth, 1), capacity=capacity,
      reserve_tokens=int(task.max_answer_length),
      step_temperature=float(search.get("step_temperature", 1.0)),
      dedupe_steps=bool(search.get("dedupe_steps", True)),
      terminal_lookahead=bool(search.get("terminal_lookahead", False)),
      prune_terminal_slots=bool(search.get("prune_terminal_slots", False)),
      verifier_in_search=bool(search.get("verifier_in_search", True)),
      dirichlet_fraction=(float(search.get("dirichlet_fraction", 0.25))
                          if noise else 0.0),
      pb_c_init=float(search.get("pb_c_init", 1.25)),
      curiosity_weight=float(search.get("curiosity_weight", 0.0)),
      temperature=float(search.temperature if acting_temperature is None
                        else acting_temperature),
      max_num_considered_actions=int(num_children or search.num_children),
      leaves_per_step=int(search.get("leaves_per_step", 1)),
      page_size=int(search.get("page_size", 0)),
      num_pages=int(search.get("num_pages", 0)))


def check_fits(search: ml_collections.ConfigDict, task,
               model_config) -> None:
  """Raises ValueError where the run's search cannot hold what it needs:
  ``capacity``, the players, the tree's positions and (step level) the
  packed training sequences within ``model.max_seq_len``."""
  if search.capacity < search.num_simulations + 1:
    raise ValueError(
        f"search.capacity={search.capacity} must be >= "
        f"search.num_simulations+1={search.num_simulations + 1}.")
  if task.num_players not in (1, 2):
    raise ValueError(f"{task.name} has {task.num_players} players; "
                     "search-and-learn supports 1 or 2.")
  cfg = lm_search_config(search, task)
  moves = num_moves(search, task)
  need = (task.max_prompt_length + cfg.reserve_tokens
          + cfg.max_depth * cfg.step_length)
  if need > model_config.max_seq_len:
    raise ValueError(
        f"Search needs {need} positions (prompt {task.max_prompt_length} + "
        f"{cfg.reserve_tokens} committed + max_depth {cfg.max_depth} x "
        f"step_length {cfg.step_length}) but model.max_seq_len="
        f"{model_config.max_seq_len}; raise --config.model.max_seq_len to "
        f"{need}.")
  if search.level == "step":
    packed = (task.max_prompt_length + task.max_answer_length + moves
              * search.num_children * cfg.step_length)
    if packed > model_config.max_seq_len:
      raise ValueError(
          f"Step-level training packs each trajectory with its {moves} x "
          f"{search.num_children} candidate steps of {search.step_length} "
          f"tokens into {packed} positions, more than model.max_seq_len="
          f"{model_config.max_seq_len}; raise --config.model.max_seq_len to "
          f"{packed} (RoPE: no parameters change).")
