"""Search-and-learn: search, commit moves, score, build targets, train — in
one jitted, data-parallel step.

On each device's share of prompts, :func:`tsearch.rollout` plays every
answer move by move with MCTS over the model (the tree as its KV cache,
the subtree below each committed move kept for the next). An action is one
token (``search.level='token'``, children = top-K legal tokens) or one step
(``'step'``: K steps sampled up to the task's step delimiter). The task's
verifier scores each trajectory. The rollout's moves are the targets of
the loss terms of :mod:`train.search_losses` (policy: the search's action
weights; value: outcome, tree value or a mix; SFT on solved answers; the
value head's one-step lookahead), weighted by the config; an experiment's
terms come from its own module (:mod:`train.retract_terms`, only imported
when ``experimental.retract_weight > 0``).

With ``search.replay_size > 0`` the targets go into an on-device replay
buffer and each search is followed by ``search.updates_per_search`` updates
on batches drawn from it (:func:`train.step.make_replay_train_step`). With
``experimental.anchor_weight > 0`` every update also trains on a fresh warm-start
batch (the step's side batch, terms ``anchor`` and ``anchor_value``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import tsearch

from train import experimental
from train import search_config
from train import search_losses
from train import step as step_lib


def _renamed(loss_fn, names):
  """``loss_fn`` with its terms renamed by ``names`` (old -> new)."""
  def renamed(params, batch, key):
    terms = loss_fn(params, batch, key)
    return {new: terms[old] for old, new in names.items()}
  return renamed


def anchor_loss_fn(apply_fn):
  """The warm-start loss (:func:`train.step.supervised_loss_fn`) as the
  terms ``anchor`` (language model) and ``anchor_value``."""
  return _renamed(step_lib.supervised_loss_fn(apply_fn),
                  {"policy": "anchor", "value": "anchor_value"})


def anchor_terms(config, fns, weights: dict):
  """With ``experimental.anchor_weight > 0``: :func:`anchor_loss_fn`, its
  terms' weights added to ``weights`` (the warm start's, scaled); else
  None."""
  w = float(experimental.values(config)["anchor_weight"])
  if not w:
    return None
  weights["anchor"] = w * float(config.warm_start.policy_weight)
  weights["anchor_value"] = w * float(config.warm_start.value_weight)
  return anchor_loss_fn(fns.apply)


class SearchLearn:
  """The jitted search-and-learn step of a run (used by :mod:`train.loop`).

  ``step(state, examples, key, anchor=None) -> (state, metrics)``; with a
  replay buffer (``search.replay_size > 0``) the buffer is :attr:`replay`,
  a pytree that the loop checkpoints and restores.
  """

  def __init__(self, config: ml_collections.ConfigDict, task, fns, optimizer,
               mesh, *, max_len: int, param_specs=None):
    """``param_specs``: sharded parameters (``train.step.make_train_step``);
    None: replicated."""
    del max_len  # rollouts use P + T, the task's own bound
    s = config.search
    search_config.check_fits(s, task, fns.config)
    two_player = task.num_players == 2
    self.task, self.mesh = task, mesh
    self.search_config = cfg = search_config.lm_search_config(s, task)
    self.moves = moves = search_config.num_moves(s, task)
    x = experimental.values(config)
    choices = s.level == "step" and bool(x["choice_tokens_only"])
    extensions = []
    if x["retract_weight"] > 0:  # config.validate_task checks the task
      from train import retract_terms  # pylint: disable=import-outside-toplevel
      extensions.append(retract_terms.extension(
          fns.apply, task, weight=float(x["retract_weight"]),
          sft_weight=float(s.sft_weight)))
    end_tokens = {e.end_token for e in extensions} - {None}
    if len(end_tokens) > 1:
      raise ValueError(f"Loss extensions ask for different end tokens "
                       f"{sorted(end_tokens)}; at most one is supported.")
    forward = search_losses.make_forward(
        fns.apply, level=s.level, pad_id=task.pad_id,
        max_seq_len=fns.config.max_seq_len,
        end_token=next(iter(end_tokens), None))
    # The extensions below read no end token.
    if x["step_dpo_weight"] > 0:  # config.validate checks the level
      from train import preference_terms  # pylint: disable=import-outside-toplevel
      extensions.append(preference_terms.extension(
          forward, weight=float(x["step_dpo_weight"]),
          beta=float(x["step_dpo_beta"]),
          margin=float(x["step_dpo_margin"]), loss=x["step_dpo_loss"]))
    if x["pav_value_weight"] > 0 or x["pav_policy_weight"] > 0:
      from train import advantage_terms  # pylint: disable=import-outside-toplevel
      extensions.append(advantage_terms.extension(
          value_weight=float(x["pav_value_weight"]),
          policy_weight=float(x["pav_policy_weight"]),
          clip=float(x["pav_clip"]), two_player=two_player))
    record_q = any(e.record_q for e in extensions)
    keep = search_losses.KEEP + (("children_choice",) if choices else ())
    for e in extensions:
      keep += tuple(k for k in e.keep if k not in keep)

    #: Whether the step takes a frozen reference policy (:meth:`step`).
    self.needs_reference = any(e.prepare is not None for e in extensions)
    self.reference = None

    def prepare(params, batch, key, reference=None):
      r = tsearch.rollout(
          fns.graphdef, fns.state(params), task, batch["prompt"],
          batch["prompt_length"], key, config=cfg, num_moves=moves,
          act_on_solved=bool(s.get("act_on_solved", False)),
          solved_by_prior=bool(x["solved_by_prior"]),
          record_choices=choices, record_q=record_q)
      active = r.active.astype(jnp.float32)
      stats = {"search/solve_rate": jnp.mean(r.outcome > 0.5),
               "search/mean_outcome": jnp.mean(r.outcome),
               "search/overflow_rate": jnp.mean(r.overflowed),
               "search/moves": jnp.mean(jnp.sum(active, -1)),
               "search/answer_tokens": jnp.mean(r.answer_length),
               "search/model_calls": jnp.mean(r.model_calls)}
      rows = {k: (batch["prompt_length"] if k == "prompt_length" else r[k])
              for k in keep}
      for e in extensions:
        if e.prepare is not None:
          rows = e.prepare(reference, rows)
        if e.stats is not None:
          stats.update(e.stats(rows))
      return rows, stats

    loss_fn = search_losses.make_loss_fn(
        forward, search_losses.terms(s, x, two_player=two_player),
        tuple(extensions))
    weights = search_losses.weights(s, x)
    for e in extensions:
      weights.update(e.weights)
    self.anchor_weight = float(x["anchor_weight"])
    side_loss_fn = anchor_terms(config, fns, weights)
    self.replay = None
    if s.replay_size and param_specs is not None:
      raise ValueError("search.replay_size > 0 is not supported with sharded "
                       "parameters yet; set --config.search.replay_size=0.")
    if self.needs_reference and param_specs is not None:
      raise ValueError("experimental.step_dpo_weight > 0 is not supported "
                       "with sharded parameters yet; set it to 0.")
    if s.replay_size:
      self._step = step_lib.make_replay_train_step(
          loss_fn, optimizer, mesh, prepare_fn=prepare, loss_weights=weights,
          updates=s.updates_per_search, side_loss_fn=side_loss_fn,
          reference=self.needs_reference)
      local = config.batch_size // jax.process_count()
      example = {"prompt": np.zeros((local, task.max_prompt_length),
                                    np.int32),
                 "prompt_length": np.ones((local,), np.int32)}
      self.replay = step_lib.init_replay(
          lambda p, b, k: prepare(p, b, k, p), fns_params_example(fns),
          example, mesh,
          size=s.replay_size)
    else:
      self._step = step_lib.make_train_step(
          loss_fn, optimizer, mesh, prepare_fn=prepare, loss_weights=weights,
          side_loss_fn=side_loss_fn, param_specs=param_specs,
          reference=self.needs_reference)

  def step(self, state, examples, key, anchor=None):
    """One search-and-learn step on ``examples`` (this process's prompts);
    ``anchor``: with ``experimental.anchor_weight > 0``, this process's rows of a
    warm-start batch (``step.supervised_loss_fn``'s), trained on in every
    update of the step."""
    args = step_args(self.mesh, examples, key, anchor, self.anchor_weight)
    if self.needs_reference:
      if self.reference is None:
        raise ValueError(
            "This run's loss (experimental.step_dpo_weight > 0) compares the "
            "policy with a frozen reference; set SearchLearn.reference (the "
            "parameters the search steps start from) before the first step.")
      args += (self.reference,)
    if self.replay is None:
      return self._step(state, *args)
    state, self.replay, metrics = self._step(state, self.replay, *args)
    return state, metrics


def step_args(mesh, examples, key, anchor, anchor_weight: float) -> tuple:
  """``(prompts, key[, anchor])`` of a search step, on the mesh; checks that
  ``anchor`` (a warm-start batch) is given exactly when ``anchor_weight``."""
  if (anchor is None) != (not anchor_weight):
    raise ValueError(
        f"experimental.anchor_weight={anchor_weight} needs a warm-start "
        "batch in every search step (and 0 none); got "
        f"{'none' if anchor is None else 'one'}.")
  batch = {"prompt": np.asarray(examples["prompt"], np.int32),
           "prompt_length": np.asarray(examples["prompt_length"], np.int32)}
  args = (step_lib.shard_batch(batch, mesh), key)
  if anchor is not None:
    args += (step_lib.shard_batch(anchor, mesh),)
  return args


def fns_params_example(fns):
  """Abstract parameters (``ShapeDtypeStruct`` pure dict) of a model."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  return nnx.to_pure_dict(fns.abstract_state)
