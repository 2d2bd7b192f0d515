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

``search.sample_labels='majority'`` learns with no answer key: a sample
is labelled right when it gives the final answer most of its prompt's
samples give (:func:`majority_labels`; at least
``search.majority_min_share`` of them), for SFT and the value alike. The
verifier then only scores the logged solve rates and the labels'
precision.

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
from tsearch._src.algorithms import family
from tsearch._src.rollout import answer_sequence

from train import experimental
from train import search_learn
from train import step as step_lib


def sample_rows(graphdef, state, task, prompt, prompt_length, key, *,
                num_samples: int, temperature: float,
                labels: str = "verifier", min_share: float = 0.5):
  """``num_samples`` answers per prompt, scored, as supervised rows.

  Args:
    graphdef, state: the model.
    task: a one-player task.
    prompt: ``[B, P]`` int32; prompt_length: ``[B]``.
    key: JAX key of the samples.
    num_samples: ``N`` answers per prompt.
    temperature: sampling temperature.
    labels: what makes the targets. ``"verifier"``: the task's reward.
      ``"majority"``: no answer key; a sample is labelled right when it
      gives its prompt's most frequent final answer (``task.answer_ids``,
      else the whole answer; ties to the first sample) and that answer was
      given by at least ``min_share`` of the ``N`` samples; other prompts'
      samples are all labelled wrong.
    min_share: ``"majority"``'s agreement threshold, in (0, 1].

  Returns:
    ``(rows, stats)``: ``rows`` of :func:`train.step.supervised_loss_fn`
    with ``B * N`` rows, problem-major (``tokens [B*N, P + T]``,
    ``value_target`` the label, ``policy_weight`` 1 on answers labelled
    right); ``stats`` the sample solve rate, the share of prompts with a
    verified sample (pass@N) and the tokens sampled (the verifier scores
    these whatever the labels), and with ``"majority"`` the share of
    prompts labelled (``search/labelled``) and of labelled-right samples
    that are right (``search/label_precision``).
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
  label = reward
  if labels == "majority":
    label, agreed = majority_labels(task, prompts, out, min_share=min_share)
  tokens = answer_sequence(prompts, plen, answers, alen, pad_id=task.pad_id)
  pos = jnp.arange(tokens.shape[1])[None, :]
  end = (plen + alen)[:, None]
  start = plen[:, None]
  rows = dict(
      tokens=tokens,
      token_mask=(pos < end).astype(jnp.float32),
      loss_mask=((pos >= start) & (pos < end)).astype(jnp.float32),
      value_mask=((pos >= start - 1) & (pos < end)).astype(jnp.float32),
      value_target=label,
      policy_weight=(label > 0.5).astype(jnp.float32))
  solved = reward.reshape(b, n) > 0.5
  stats = {"search/solve_rate": jnp.mean(solved),
           "search/pass_at_n": jnp.mean(jnp.any(solved, -1)),
           "search/answer_tokens": jnp.mean(alen),
           "search/tokens_forwarded": jnp.mean(out.tokens_forwarded)}
  if labels == "majority":
    chosen = label > 0.5
    stats["search/labelled"] = jnp.mean(agreed)
    stats["search/label_precision"] = (
        jnp.sum(chosen & (reward > 0.5)) / jnp.maximum(jnp.sum(chosen), 1))
  return rows, stats


def majority_labels(task, prompts, out, *, min_share: float):
  """Pseudo-labels by self-consistency (no answer key; Wang et al. 2023's
  vote as a training signal, as in TTRL, Zuo et al. 2025, and Lee et al.
  2025's self-improvement).

  Args:
    task: the task (``answer_ids`` compares final answers written in other
      words; symbol tasks compare whole answers).
    prompts: ``[B * N, P]`` each sample's prompt.
    out: :class:`tsearch.SearchOutput` of ``N`` samples per prompt.
    min_share: the least share of the ``N`` samples that must give the
      most frequent answer for its samples to be labelled right.

  Returns:
    ``(label [B * N] float32, agreed [B] bool)``: 1 on the samples that
    give their prompt's most frequent finished answer where ``agreed``.
  """
  b, n, _ = out.candidates.shape
  ids = task.answer_ids(task.run(prompts, out.candidates.reshape(b * n, -1)))
  # A vote is a finished sample with a final answer.
  voted = out.candidate_finished
  if ids is not None:
    ids = ids.reshape(b, n)
    voted = voted & (ids >= 0)
  same = family.same_answers(out.candidates, ids)
  same = same & voted[:, :, None] & voted[:, None, :]
  top = family.choose(out.candidates, out.candidate_lengths,
                      jnp.zeros((b, n), jnp.float32), voted,
                      aggregate="majority", answer_ids=ids)
  rb = jnp.arange(b)
  votes = jnp.sum(same[rb, top], -1)  # samples that give the chosen answer
  agreed = votes >= jnp.maximum(min_share * n, 1.0)
  label = same[rb, top] & agreed[:, None]
  return label.reshape(b * n).astype(jnp.float32), agreed


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
    labels = s.get("sample_labels", "verifier")
    min_share = float(s.get("majority_min_share", 0.5))

    def prepare(params, batch, key):
      return sample_rows(fns.graphdef, fns.state(params), task,
                         batch["prompt"], batch["prompt_length"], key,
                         num_samples=n, temperature=temperature,
                         labels=labels, min_share=min_share)

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
