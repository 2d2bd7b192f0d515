"""Sample-and-learn: the search is ``N`` independent samples per prompt.

``search.method='sample'`` replaces the MCTS rollout of
:mod:`train.search_learn` by the simplest member of the search family,
:func:`tsearch.get_algorithm` ``('best_of_n')``: each prompt gets
``search.num_samples`` answers sampled at ``search.step_temperature``, and
the task's verifier scores each one (it makes the targets, as in every
training search; nothing here chooses an answer). The targets, in the warm
start's format (:func:`train.step.supervised_loss_fn`):

- **policy** (weight ``search.sft_weight``): the language-model loss on the
  verified answers only: rejection-sampling fine-tuning / expert iteration
  (STaR, Zelikman et al. 2022; ReST-EM, Singh et al. 2023).
- **value** (weight ``search.value_weight``): every position of every
  sampled answer (and the prompt's last token) regressed toward that
  answer's reward: the token-level outcome verifier of Cobbe et al. (2021),
  trained on the policy's own answers and mistakes, so that a value-guided
  search without an answer key (``train.evaluate``'s ``best_of_n`` with a
  ``weighted`` vote, ``beam``, ``particle_filter``) ranks the kind of
  answers the policy writes.

It is one jitted, data-parallel step like search-and-learn's: sampling,
scoring and the update, on each device's share of the prompts; with
``experimental.anchor_weight > 0`` every update also trains on the warm
start's batch (terms ``anchor``, ``anchor_value``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

import tsearch
from tsearch._src.rollout import answer_sequence

from train import experimental
from train import search_learn
from train import step as step_lib


def sample_rows(graphdef, state, task, prompt, prompt_length, key, *,
                num_samples: int, temperature: float):
  """``num_samples`` answers per prompt, scored, as supervised rows.

  Args:
    graphdef, state: the model.
    task: a one-player task.
    prompt: ``[B, P]`` int32; prompt_length: ``[B]``.
    key: JAX key of the samples.
    num_samples: ``N`` answers per prompt.
    temperature: sampling temperature.

  Returns:
    ``(rows, stats)``: ``rows`` of :func:`train.step.supervised_loss_fn`
    with ``B * N`` rows, problem-major (``tokens [B*N, P + T]``,
    ``value_target`` the verifier's reward, ``policy_weight`` 1 on verified
    answers); ``stats`` the sample solve rate, the share of prompts with a
    verified sample (pass@N) and the tokens sampled.
  """
  out = tsearch.get_algorithm("best_of_n")(
      graphdef, state, task, prompt, prompt_length, key, budget=num_samples,
      aggregate="best_value", temperature=temperature)
  b, n, t = out.candidates.shape
  prompts = jnp.repeat(prompt, n, axis=0)
  plen = jnp.repeat(prompt_length, n, axis=0)
  answers = out.candidates.reshape(b * n, t)
  alen = out.candidate_lengths.reshape(b * n)
  reward = task.verify(prompts, answers).astype(jnp.float32)
  tokens = answer_sequence(prompts, plen, answers, alen, pad_id=task.pad_id)
  pos = jnp.arange(tokens.shape[1])[None, :]
  end = (plen + alen)[:, None]
  start = plen[:, None]
  rows = dict(
      tokens=tokens,
      token_mask=(pos < end).astype(jnp.float32),
      loss_mask=((pos >= start) & (pos < end)).astype(jnp.float32),
      value_mask=((pos >= start - 1) & (pos < end)).astype(jnp.float32),
      value_target=reward,
      policy_weight=(reward > 0.5).astype(jnp.float32))
  solved = reward.reshape(b, n) > 0.5
  stats = {"search/solve_rate": jnp.mean(solved),
           "search/pass_at_n": jnp.mean(jnp.any(solved, -1)),
           "search/answer_tokens": jnp.mean(alen),
           "search/tokens_forwarded": jnp.mean(out.tokens_forwarded)}
  return rows, stats


class SampleLearn:
  """The jitted sample-and-learn step of a run (``search.method='sample'``;
  used by :mod:`train.loop` as :class:`train.search_learn.SearchLearn`).

  ``step(state, examples, key, anchor=None) -> (state, metrics)``.
  """

  #: No frozen reference policy, no replay buffer.
  needs_reference = False
  reference = None
  replay = None

  def __init__(self, config: ml_collections.ConfigDict, task, fns, optimizer,
               mesh, *, max_len: int, param_specs=None):
    del max_len  # rows are P + T long, the task's own bound
    s = config.search
    if task.num_players != 1:
      raise ValueError(
          f"search.method='sample' needs a one-player task; {task.name} has "
          f"{task.num_players} players. Use --config.search.method=mcts.")
    self.mesh = mesh
    n, temperature = int(s.num_samples), float(s.step_temperature)

    def prepare(params, batch, key):
      return sample_rows(fns.graphdef, fns.state(params), task,
                         batch["prompt"], batch["prompt_length"], key,
                         num_samples=n, temperature=temperature)

    weights = {"policy": float(s.sft_weight), "value": float(s.value_weight)}
    self.anchor_weight = float(experimental.values(config)["anchor_weight"])
    side_loss_fn = search_learn.anchor_terms(config, fns, weights)
    self._step = step_lib.make_train_step(
        step_lib.supervised_loss_fn(fns.apply), optimizer, mesh,
        prepare_fn=prepare, loss_weights=weights, side_loss_fn=side_loss_fn,
        param_specs=param_specs)

  def step(self, state, examples, key, anchor=None):
    """One step on ``examples`` (this process's prompts); ``anchor`` as in
    :meth:`train.search_learn.SearchLearn.step`."""
    return self._step(state, *search_learn.step_args(
        self.mesh, examples, key, anchor, self.anchor_weight))
