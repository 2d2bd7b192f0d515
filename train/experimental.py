"""Experiment switches: the opt-in ``experimental`` config group.

The default config (:func:`train.config.default_config`) holds the keys a
library user sets. Switches that one experiment needed (the Game of 24
recipes in ``experiments/game24/``) live here instead; a config file turns
them on with ``c.experimental = experimental.config(anchor_weight=1.0)``,
after which ``--config.experimental.<key>=v`` overrides them like any key.
Code reads them with :func:`values`, which gives the defaults below for a
config without the group, so a run without it behaves as if every switch
were off. They are checked here (:func:`validate`), where they are defined.
"""
from __future__ import annotations

from typing import Any

import ml_collections

DEFAULTS = dict(
    # Problems the search steps draw: one of the task's splits (e.g. Game of
    # 24's "train+extended": puzzles beyond its list, scored by the verifier).
    search_problem_split="train",
    # Problems the solver warm start writes solutions of (warm_start.data =
    # "solver"); a split beyond the dataset is an oracle ablation.
    warm_start_problem_split="train",
    # > 0: search steps run at this constant learning rate and the optim
    # schedule spans the warm start only (a second schedule).
    search_learning_rate=0.0,
    # > 0: every search update also trains on a fresh warm-start batch (its
    # LM and value losses at this weight), against forgetting (PPO-ptx): of
    # the search's problems, or with search_problem_split other than "train"
    # (and no solver warm start) of a train-split batch of its own.
    anchor_weight=0.0,
    # Step level: the policy over the K candidates toward the value head's
    # one-step lookahead softmax(log p + scale * value) (train.search_losses).
    value_policy_weight=0.0,
    value_policy_scale=10.0,
    # Step level: the policy loss as a weighted NLL of the K steps ("nll") or
    # a cross-entropy over the K candidates ("candidates").
    step_policy_loss="nll",
    # Step level: a step's log-prob sums only its choice tokens (not the
    # tokens the task forces).
    choice_tokens_only=False,
    # With search.act_on_solved: of several solving root slots, the one the
    # prior favours.
    solved_by_prior=False,
    # Step level, a task with a take-back token: P(take back) after each
    # first-move candidate toward 1 - its Q (train.retract_terms).
    retract_weight=0.0,
    # Step level: step-DPO on sibling steps ranked by the tree's Q, against
    # the frozen policy the search steps start from (train.preference_terms):
    # the term's weight, beta, the Q margin of a pair, "dpo" or "ipo".
    step_dpo_weight=0.0,
    step_dpo_beta=0.1,
    step_dpo_margin=0.1,
    step_dpo_loss="dpo",
    # Step level: process advantages A = Q(s, a) - V(s) from the tree
    # (train.advantage_terms): the value head after every visited candidate
    # toward its Q, and a policy gradient with A (clipped to +-pav_clip).
    pav_value_weight=0.0,
    pav_policy_weight=0.0,
    pav_clip=1.0,
)


def config(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``experimental`` group: every switch, off, except ``overrides``."""
  unknown = sorted(set(overrides) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"Unknown experimental switch(es) {unknown}; known: "
                     f"{sorted(DEFAULTS)}.")
  return ml_collections.ConfigDict(dict(DEFAULTS, **overrides))


def values(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every switch of a run's config (the defaults where it has no group)."""
  group = cfg.get("experimental", None)
  group = {} if group is None else dict(group)
  unknown = sorted(set(group) - set(DEFAULTS))
  if unknown:
    raise ValueError(f"Unknown config key(s) experimental.{unknown[0]}; "
                     f"known: {sorted(DEFAULTS)}.")
  return dict(DEFAULTS, **group)


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the bad ``experimental.<key>`` and the fix."""
  x = values(cfg)
  search = cfg.search

  def need(cond, key, msg):
    if not cond:
      raise ValueError(
          f"Bad config value experimental.{key}={x[key]!r}: {msg}")
  step = search.level == "step"
  need(x["step_policy_loss"] in ("nll", "candidates"), "step_policy_loss",
       "use 'nll' or 'candidates'.")
  need(not x["choice_tokens_only"] or step, "choice_tokens_only",
       "applies to --config.search.level=step (a token-level child is one "
       "token); set it False or use level='step'.")
  need(x["value_policy_weight"] >= 0, "value_policy_weight", "must be >= 0.")
  need(x["value_policy_weight"] == 0 or step, "value_policy_weight",
       "the one-step value lookahead target needs --config.search.level=step.")
  need(x["value_policy_scale"] >= 0, "value_policy_scale",
       "must be >= 0 (a larger value-head score must raise a step's target).")
  need(x["retract_weight"] >= 0, "retract_weight", "must be >= 0.")
  need(x["retract_weight"] == 0 or step, "retract_weight",
       "teaches taking back a first step: needs --config.search.level=step.")
  need(x["step_dpo_weight"] >= 0, "step_dpo_weight", "must be >= 0.")
  need(x["step_dpo_weight"] == 0 or step, "step_dpo_weight",
       "pairs sibling steps of the searched tree: needs "
       "--config.search.level=step.")
  need(x["step_dpo_beta"] > 0, "step_dpo_beta", "must be > 0.")
  need(x["step_dpo_margin"] >= 0, "step_dpo_margin", "must be >= 0.")
  need(x["step_dpo_loss"] in ("dpo", "ipo"), "step_dpo_loss",
       "use 'dpo' or 'ipo'.")
  for key in ("pav_value_weight", "pav_policy_weight"):
    need(x[key] >= 0, key, "must be >= 0.")
    need(x[key] == 0 or step, key, "reads the searched tree's candidate "
         "steps: needs --config.search.level=step.")
  need(x["pav_clip"] > 0, "pav_clip", "must be > 0.")
  need(x["search_learning_rate"] >= 0, "search_learning_rate",
       "must be >= 0 (0: one schedule over all steps).")
  need(x["anchor_weight"] >= 0, "anchor_weight",
       "must be >= 0 (0 turns the warm-start anchor off).")
  need(x["warm_start_problem_split"] == "train"
       or cfg.warm_start.data == "solver", "warm_start_problem_split",
       "only the solver writes solutions beyond the dataset; it needs "
       "--config.warm_start.data=solver.")
  need(x["search_problem_split"] == "train"
       or cfg.data.source == "generated", "search_problem_split",
       "draws problems beyond the built dataset; it needs "
       "--config.data.source=generated.")
  need(not x["solved_by_prior"] or search.act_on_solved, "solved_by_prior",
       "chooses among the solutions search.act_on_solved follows; set "
       "--config.search.act_on_solved=True or leave it False.")
  need(not x["solved_by_prior"] or step or search.terminal_lookahead,
       "solved_by_prior", "reads the root prior the tree keeps with its slot "
       "scores (step level, or token level with "
       "--config.search.terminal_lookahead=True).")


def validate_task(cfg: ml_collections.ConfigDict, task) -> None:
  """The checks that need the task (run by ``train.config.validate_task``)."""
  x = values(cfg)
  splits = ("train",) + tuple(task.extra_splits)
  for key in ("search_problem_split", "warm_start_problem_split"):
    if x[key] not in splits:
      raise ValueError(f"Bad config value experimental.{key}={x[key]!r}: use "
                       f"one of {splits} for task {task.name!r}.")
  if x["anchor_weight"] and not task.has_solutions:
    raise ValueError(
        f"Bad config value experimental.anchor_weight={x['anchor_weight']!r}: "
        f"{task.name} has no reference solutions to anchor on; set it to 0.")
  if x["retract_weight"] and task.retract_token is None:
    raise ValueError(
        f"Bad config value experimental.retract_weight="
        f"{x['retract_weight']!r}: teaches taking back a first step, but "
        f"{task!r} has no take-back token; turn on the task's take-back "
        "option (e.g. --config.task.options.retract=1 with strict=True, "
        "notation='left') or set it to 0.")
