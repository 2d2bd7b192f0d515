"""MCTS over a language model, with the search tree as its KV cache.

Two granularities share one expansion function:

* ``mode='token'``: an action is one token; a node's K child slots are its
  top-K legal next tokens, their logits the prior.
* ``mode='step'``: an action is a step of up to ``S`` tokens ending at the
  environment's step delimiter or EOS; expanding a node samples K candidate
  steps in one batched decode over ``B x K`` continuations that all read the
  tree's KV (the shared prefix is never copied per candidate); the prior is
  the steps' log-probability (optionally per token). Step payloads are padded
  with ``-1``.

Every node is evaluated by one forward of its own tokens against the prompt
cache and its ancestors' arena entries (see :mod:`tsearch.kv_arena`); no
prefix is encoded twice. (In step mode a chosen step's own <= S tokens are
forwarded a second time, in one parallel call, when its child is expanded:
keeping every sampled candidate's keys/values would cost K x S arena slots per
node instead of S.) Values come from the value head; a terminal node
(EOS / the environment's end) earns the environment's reward.

The environment is any object with the methods of :class:`tsearch.tasks.Task`
that search needs (every task in ``tsearch.tasks`` is one)::

  init_state(prompt_tokens [B, P]) -> state   (pytree, leaves [B, ...])
  step(state, token [B]) -> state             (no-op on a terminal state)
  legal_mask(state) -> [B, V_env] bool
  is_terminal(state) -> [B] bool
  reward(state) -> [B] float   (read where terminal)
  discount(state) -> [B] float (0 terminal, 1 or -1 for two players)
  step_delimiter: int (-1: every token is a step), eos_id: int
  step_ended(state, token [B]) -> [B] bool  (optional; default: the token is
      step_delimiter, or every token where it is -1)

It must be hashable (it is a static argument of the jitted search).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models
from models import KVContext
from models import sharding
from tsearch import kv_arena
from tsearch.tasks import base as task_base
from tsearch._src.base import ExpandOutput, RootOutput, step_ended
from tsearch._src.search import gumbel_search, puct_search
from tsearch._src import tree as tsearch_tree
from tsearch._src.tree import ROOT_INDEX, Tree
from tsearch._src.reroot import reroot

Array = chex.Array
_NEG = -1e30
PAD_ACTION = -1


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMSearchConfig:
  """Hyperparameters of :func:`lm_search`.

  Attributes:
    mode: ``'token'`` or ``'step'``.
    policy: ``'puct'`` or ``'gumbel'``.
    num_simulations: expansions per search.
    num_children: ``K`` child slots per node (top-K tokens or K steps).
    step_length: ``S``, tokens per action (1 in token mode).
    max_depth: deepest node (edges from the root) the arena holds; prompt
      capacity + ``max_depth * S`` must fit in the model's ``max_seq_len``.
    capacity: nodes per tree; default ``num_simulations + 1``.
    reserve_tokens: extra prompt-cache slots for tokens committed by
      :func:`lm_reroot` (0: no reroot planned).
    step_temperature: sampling temperature of candidate steps.
    dedupe_steps: step mode: a sampled step equal to an earlier slot's step
      is masked out, so the K slots hold distinct steps (repeats of a likely
      step would split its visits and waste expansions). Off: K independent
      samples, repeats included.
    length_normalize: step prior = mean instead of sum of token log-probs.
    terminal_lookahead: a node's value is ``max(value head, best reward of
      its child slots that end the episode)``. Expansion already steps the
      environment through every child slot's action (step mode: while
      sampling), so a slot that ends the episode is scored by the verifier
      at once, before it is visited; a winning slot is a proven lower bound
      on the value for the player to move (single- and two-player alike).
      If every valid slot ends the episode the value is exactly the best
      slot's reward (the tree holds no other move from there).
      The slots' scores are kept (embedding ``child_terminal``,
      ``child_reward`` ``[B, N, K]``, and ``child_prior``, the slots' prior
      logits before pruning and root noise; :func:`solved_slot` reads them) with
      the lookahead on and always in step mode, where sampling has stepped
      the environment anyway; token mode without the lookahead skips the
      extra environment step over the ``B x K`` slots.
    prune_terminal_slots: single-player puzzles (with ``terminal_lookahead``
      and acting on :func:`solved_slot`): below the root, a slot whose step
      ends the episode is not offered to the search (its reward is already
      in the node's value and in ``child_reward``), so no simulation is
      spent on a leaf whose outcome is known; a node left without slots is
      a leaf. PUCT also passes over such dead ends
      (``puct_search(skip_dead_ends=True)``).
    verifier_in_search: whether the search may call ``env.reward``. False
      (no answer key at test time, as in AlphaMath / ReST-MCTS*): a node
      that ends the episode earns the value head's estimate at its last
      token instead of the environment's reward, and ``env.reward`` is
      never called (the task's checker is left for training targets and
      scoring). The value head is then the judge of finished answers
      everywhere the verifier was: with ``terminal_lookahead`` (step mode
      only) a slot that ends the episode is scored by the value head at
      its last token, read in the same batched decode that samples it (one
      more forward position per step, counted in ``model_calls``), and
      ``prune_terminal_slots`` and acting on :func:`solved_slot` use those
      scores. Without ``terminal_lookahead`` slot scores hold no reward.
    keep_logits: store each node's next-token logits ``[B, N, V]`` in the
      tree (for tests and inspection; costs ``N * V`` floats per row).
    dirichlet_fraction, dirichlet_alpha, pb_c_init, temperature: PUCT options.
    curiosity_weight: PUCT only: weight ``w >= 0`` of a surprisal bonus
      ``w * min(-log P(a), 10) / (1 + n(a))`` added to each child's PUCT
      score (``puct_search(curiosity_weight=...)``, COS(M+O)S-style
      curiosity); 0 (the default) is plain PUCT. ``policy='gumbel'`` has no
      such term and raises if it is > 0.
    max_num_considered_actions, gumbel_scale: Gumbel options.
    leaves_per_step: leaves selected per tree in one search step (virtual
      loss, see :func:`tsearch.puct_search`) and expanded in one model call
      of ``B * leaves_per_step`` rows. 1: one leaf per call, mctx's loop.
      ``model_calls`` still counts one call per expanded leaf; the
      sequential calls of a search are about ``model_calls /
      leaves_per_step``.
    page_size: 0 (the default): each node reserves ``S`` key/value slots
      in the tree (the slab layout of :mod:`tsearch.kv_arena`). ``> 0``:
      the paged layout: keys/values live in a per-tree pool of pages of
      ``page_size`` tokens and a node of ``len`` tokens takes
      ``ceil(len / page_size)`` of them, so memory in use follows the
      tokens held when steps are shorter than ``S``. Must divide
      ``step_length`` (token mode: 1). Searches give the same trees,
      logits and values as the slab layout.
    num_pages: paged layout: pages in each tree's pool. 0 (the default):
      ``capacity * step_length / page_size``, enough for every node to
      hold a full step, so the pool never runs out. Smaller saves memory;
      at least ``step_length / page_size`` (one full step). A node whose
      pages do not fit is not stored: its row is marked
      ``Tree.overflowed`` (as a tree out of nodes is; the rollout reports
      it) and grows no further until :func:`lm_reroot` frees pages.
  """
  mode: str = "token"
  policy: str = "puct"
  num_simulations: int = 16
  num_children: int = 4
  step_length: int = 1
  max_depth: int = 8
  capacity: int | None = None
  reserve_tokens: int = 0
  step_temperature: float = 1.0
  dedupe_steps: bool = True
  length_normalize: bool = False
  terminal_lookahead: bool = False
  prune_terminal_slots: bool = False
  verifier_in_search: bool = True
  keep_logits: bool = False
  dirichlet_fraction: float = 0.25
  dirichlet_alpha: float = 0.3
  pb_c_init: float = 1.25
  curiosity_weight: float = 0.0
  temperature: float = 1.0
  max_num_considered_actions: int = 16
  gumbel_scale: float = 1.0
  leaves_per_step: int = 1
  page_size: int = 0
  num_pages: int = 0

  @property
  def pages_per_tree(self) -> int:
    """Pages in each tree's pool (0 in the slab layout)."""
    if self.page_size == 0:
      return 0
    if self.num_pages:
      return self.num_pages
    capacity = self.capacity or self.num_simulations + 1
    return capacity * (self.step_length // self.page_size)

  def __post_init__(self):
    if self.mode not in ("token", "step"):
      raise ValueError(f"mode must be 'token' or 'step', got {self.mode!r}.")
    if self.policy not in ("puct", "gumbel"):
      raise ValueError(f"policy must be 'puct' or 'gumbel', got {self.policy!r}.")
    for name in ("num_simulations", "num_children", "max_depth",
                 "leaves_per_step"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
    if self.step_length < 1:
      raise ValueError(
          f"step_length (S) must be >= 1 token, got {self.step_length}.")
    if self.mode == "token" and self.step_length != 1:
      raise ValueError("mode='token' needs step_length=1 (one token per "
                       f"action), got {self.step_length}.")
    if self.reserve_tokens < 0 or self.step_temperature <= 0:
      raise ValueError("reserve_tokens must be >= 0 and step_temperature > 0.")
    if self.prune_terminal_slots and not self.terminal_lookahead:
      raise ValueError("prune_terminal_slots needs terminal_lookahead=True "
                       "(a pruned slot's reward must reach its node's value).")
    if (not self.verifier_in_search and self.terminal_lookahead
        and self.mode != "step"):
      raise ValueError(
          "verifier_in_search=False with terminal_lookahead scores each "
          "finished slot by the value head read while the step is sampled: "
          "it needs mode='step'; in token mode turn terminal_lookahead off.")
    w = self.curiosity_weight
    if (not isinstance(w, (int, float, np.integer, np.floating))
        or isinstance(w, bool) or not math.isfinite(w) or w < 0):
      raise ValueError(
          "curiosity_weight must be a finite number >= 0 (the weight of the "
          f"surprisal bonus in PUCT; 0 turns it off), got {w!r}.")
    if self.policy == "gumbel" and w > 0:
      raise ValueError(
          f"curiosity_weight={w} applies to policy='puct' only (Gumbel MuZero "
          "has no PUCT score to add it to); set curiosity_weight=0.0 or "
          "policy='puct'.")
    if self.capacity is not None and self.capacity < self.num_simulations + 1:
      raise ValueError(f"capacity {self.capacity} < num_simulations + 1 = "
                       f"{self.num_simulations + 1}.")
    for name in ("page_size", "num_pages"):
      v = getattr(self, name)
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
        raise ValueError(f"{name} must be an int >= 0, got {v!r}.")
    if self.page_size and self.step_length % self.page_size:
      raise ValueError(
          f"page_size={self.page_size} must divide step_length="
          f"{self.step_length} (a node's S slots are whole pages); use a "
          "divisor of step_length, or page_size=0 for the slab layout.")
    if self.num_pages and not self.page_size:
      raise ValueError(
          f"num_pages={self.num_pages} sizes the page pool of the paged "
          "layout: set page_size > 0 too, or leave num_pages=0.")
    if self.page_size and self.num_pages:
      per_step = self.step_length // self.page_size
      if self.num_pages < per_step:
        raise ValueError(
            f"num_pages={self.num_pages} cannot hold one full step of "
            f"step_length={self.step_length} tokens in pages of "
            f"{self.page_size} ({per_step} pages); raise num_pages to >= "
            f"{per_step}, or 0 for a pool that never runs out.")


@chex.dataclass(frozen=True)
class LMSearchOutput:
  """The result of :func:`lm_search`; compute counts are per batch row."""
  action: Array  # [B] int32 root slot
  action_weights: Array  # [B, K]
  search_tree: Tree
  prompt_cache: kv_arena.PromptCache
  model_calls: Array  # [B] int32, forward calls this search made for the row
  tokens_forwarded: Array  # [B] int32, token positions those calls computed


# ---------------------------------------------------------------------------
# Checks.


def _check_static(model_cfg: models.ModelConfig, config: LMSearchConfig,
                  prompt_len: int, env_vocab: int) -> None:
  if config.mode == "token" and config.num_children > model_cfg.vocab_size:
    raise ValueError(
        f"num_children K={config.num_children} is larger than the vocabulary "
        f"({model_cfg.vocab_size}); a node cannot have more distinct tokens.")
  if env_vocab > model_cfg.vocab_size:
    raise ValueError(f"The environment's vocabulary ({env_vocab}) is larger "
                     f"than the model's ({model_cfg.vocab_size}).")
  if prompt_len > model_cfg.max_seq_len:
    raise ValueError(
        f"The prompt ({prompt_len} tokens) is longer than the model's context "
        f"max_seq_len={model_cfg.max_seq_len}.")
  need = prompt_len + config.reserve_tokens + config.max_depth * config.step_length
  if need > model_cfg.max_seq_len:
    raise ValueError(
        f"A tree of max_depth={config.max_depth} with step_length="
        f"{config.step_length} after a {prompt_len}-token prompt (+ "
        f"{config.reserve_tokens} reserved) needs {need} positions, deeper than "
        f"the KV arena / context allows (max_seq_len={model_cfg.max_seq_len}); "
        f"lower max_depth or step_length, or use a longer-context model.")


def _check_prompt(model_cfg, prompt_tokens, prompt_lengths):
  if prompt_tokens.ndim != 2 or prompt_lengths.shape != prompt_tokens.shape[:1]:
    raise ValueError(f"prompt_tokens must be [B, P] and prompt_lengths [B]; "
                     f"got {prompt_tokens.shape} and {prompt_lengths.shape}.")
  models.check_tokens(prompt_tokens, model_cfg.vocab_size, "prompt_tokens")
  if not isinstance(prompt_lengths, jax.core.Tracer):
    p = prompt_tokens.shape[1]
    lengths = np.asarray(prompt_lengths)
    if lengths.min() < 1 or lengths.max() > p:
      raise ValueError(f"prompt_lengths must lie in [1, P={p}], got "
                       f"{lengths.tolist()}.")


# ---------------------------------------------------------------------------
# Pieces of an expansion.


select_rows = task_base.select_rows


def _legal(env, state, vocab_size):
  legal = jnp.asarray(env.legal_mask(state), bool)
  pad = vocab_size - legal.shape[-1]
  return jnp.pad(legal, ((0, 0), (0, pad))) if pad else legal


def step_tokens(env, state, tokens, *, with_choices: bool = False):
  """Steps ``tokens [B, S]`` (``-1`` = none) into ``state``.

  ``with_choices``: returns ``(state, choices [B, S])`` instead, ``choices``
  true where the token was one of several legal ones when it was taken
  (``tsearch._src.rollout.choice_tokens``).
  """
  def body(st, tok):
    several = None
    if with_choices:
      several = (jnp.asarray(env.legal_mask(st), bool).sum(-1) > 1) & (
          tok >= 0)
    return select_rows(tok >= 0, env.step(st, jnp.maximum(tok, 0)), st), several
  state, choices = jax.lax.scan(body, state, tokens.T)
  return (state, choices.T) if with_choices else state


def _top_k_children(logits, legal, terminal, k):
  masked = jnp.where(legal, logits, _NEG)
  prior, idx = jax.lax.top_k(masked, k)
  mask = jnp.take_along_axis(legal, idx, axis=-1) & ~terminal[:, None]
  return idx[..., None].astype(jnp.int32), prior, mask


def repeated_slots(actions: Array, mask: Array) -> Array:
  """``[B, K]``: slot ``k`` holds the same step as a valid slot ``j < k``.

  Args:
    actions: ``[B, K, S]`` steps, ``-1`` padded.
    mask: ``[B, K]`` valid slots.
  """
  k = actions.shape[1]
  same = jnp.all(actions[:, :, None] == actions[:, None, :], -1)  # [B, K, K]
  earlier = jnp.tril(jnp.ones((k, k), bool), -1)[None]  # j < k
  return jnp.any(same & earlier & mask[:, None, :], -1)


def _sample_steps(graphdef, mstate, env, config: LMSearchConfig, ctx: KVContext,
                  logits, state, terminal, child_start, key):
  """K candidate steps per row in one batched decode over B x K sequences.

  Returns children_actions [B, K, S], prior [B, K], mask [B, K], and the
  number of forward calls / token positions it computed per row.
  """
  b, v = logits.shape
  k, s = config.num_children, config.step_length
  # The value head judges finished slots (no verifier): forward every token
  # of a step, the last one too, for the value at each slot's end.
  judge = config.terminal_lookahead and not config.verifier_in_search
  n_fwd = s if judge else s - 1
  lcfg = ctx[0].keys.shape  # ctx: a tuple of contexts shared by the K samples
  rep = lambda x: jnp.repeat(x, k, axis=0)  # noqa: E731  [B,...] -> [B*K,...]
  st = jax.tree.map(rep, state)
  done = jnp.repeat(terminal, k)  # [B*K]
  eos = env.eos_id

  def sample(j, cur_logits, st, done, key):
    legal = _legal(env, st, v)
    none = ~jnp.any(legal, axis=-1)
    masked = jnp.where(legal, cur_logits, _NEG)
    logp = jax.nn.log_softmax(masked, axis=-1)
    tok = jax.random.categorical(key, masked / config.step_temperature, axis=-1)
    skip = done | none
    tok = jnp.where(skip, PAD_ACTION, tok).astype(jnp.int32)
    lp = jnp.where(skip, 0.0, jnp.take_along_axis(
        logp, jnp.maximum(tok, 0)[:, None], axis=-1)[:, 0])
    st = select_rows(~skip, env.step(st, jnp.maximum(tok, 0)), st)
    ended = (tok == eos) | env.is_terminal(st) | step_ended(env, st, tok)
    return tok, lp, st, done | skip | ended

  keys = jax.random.split(key, s)
  tok0, lp0, st, done = sample(0, rep(logits), st, done, keys[0])
  st0 = st
  cache_shape = (lcfg[0], b, k, s) + lcfg[3:]
  cache_k = jnp.zeros(cache_shape, ctx[0].keys.dtype)
  cache_v = jnp.zeros(cache_shape, ctx[0].values.dtype)
  owner = jnp.arange(k * s) // s
  slot_j = jnp.arange(k * s) % s
  mine = owner[None, :] == jnp.arange(k)[:, None]  # [K, K*S]
  eye = jnp.broadcast_to(jnp.eye(k, dtype=bool), (b, k, k))

  def body(carry, inp):
    tok, st, done, cache_k, cache_v = carry
    j, key = inp  # forward token j, sample token j + 1
    pos = jnp.broadcast_to((child_start + j)[:, None], (b, k))
    step_mask = mine[None] & (slot_j < j)[None, None]  # [1, K, K*S]
    # Shared contexts ([B, C] masks, read once for all K samples) plus each
    # sample's own step so far (a [B, K, K*S] per-sample mask).
    full_ctx = tuple(ctx) + (KVContext(
        keys=cache_k.reshape(lcfg[:2] + (k * s,) + lcfg[3:]),
        values=cache_v.reshape(lcfg[:2] + (k * s,) + lcfg[3:]),
        mask=jnp.broadcast_to(step_mask, (b, k, k * s)),
        positions=(child_start[:, None] + slot_j[None]).astype(jnp.int32)),)
    out = models.forward(graphdef, mstate, jnp.maximum(tok, 0).reshape(b, k),
                         pos, full_ctx, attention_mask=eye)
    cache_k = cache_k.at[:, :, :, j].set(out.keys)
    cache_v = cache_v.at[:, :, :, j].set(out.values)
    nxt, lp, st2, done2 = sample(j + 1, out.logits.reshape(b * k, v), st,
                                 done, key)
    if judge:  # the forward of token S - 1 only reads its value
      more = jnp.broadcast_to(j + 1 < s, done.shape)
      nxt = jnp.where(more, nxt, PAD_ACTION)
      lp = jnp.where(more, lp, 0.0)
      st2 = select_rows(more, st2, st)
      done2 = jnp.where(more, done2, done)
    return (nxt, st2, done2, cache_k, cache_v), (nxt, lp,
                                                 out.value.reshape(b * k))

  vals = None
  if n_fwd > 0:
    step_keys = jnp.concatenate([keys[1:], keys[-1:]]) if judge else keys[1:]
    (_, st, _, _, _), (toks, lps, vals) = jax.lax.scan(
        body, (tok0, st0, done, cache_k, cache_v),
        (jnp.arange(n_fwd), step_keys))
    toks = jnp.concatenate([tok0[None], toks], axis=0)[:s]  # [S, B*K]
    lps = jnp.concatenate([lp0[None], lps], axis=0)[:s]
  else:
    toks, lps = tok0[None], lp0[None]
  actions = toks.T.reshape(b, k, s)
  logp_sum = lps.sum(0).reshape(b, k)
  n_tok = (actions >= 0).sum(-1)
  prior = logp_sum / jnp.maximum(n_tok, 1) if config.length_normalize else logp_sum
  mask = (n_tok > 0) & ~terminal[:, None]
  if config.dedupe_steps:
    mask = mask & ~repeated_slots(actions, mask)
  calls = jnp.full((b,), n_fwd, jnp.int32)
  tokens = jnp.full((b,), n_fwd * k, jnp.int32)
  judged = None
  if judge:  # the value at each slot's last token (n_tok - 1)
    last = jnp.maximum(n_tok - 1, 0).reshape(1, b * k)
    judged = jnp.take_along_axis(vals, last, axis=0).reshape(b, k)
  return actions, prior, mask, calls, tokens, _slot_scores(
      env, st, mask, config.verifier_in_search, judged)


def _slot_scores(env, child_state, mask, verifier: bool = True,
                 values: Array | None = None):
  """``(terminal, reward)`` ``[B, K]`` of the child slots' end states
  (leaves ``[B * K, ...]``); False / 0 on illegal slots. Where the verifier
  may not be consulted the reward is ``values`` (the value head at each
  slot's end, ``[B, K]``), or 0 without them."""
  b, k = mask.shape
  terminal = jnp.asarray(env.is_terminal(child_state), bool).reshape(b, k)
  terminal = terminal & mask
  if not verifier:
    judged = jnp.zeros((b, k)) if values is None else values
    return terminal, jnp.where(terminal, judged, 0.0).astype(jnp.float32)
  reward = jnp.asarray(env.reward(child_state), jnp.float32).reshape(b, k)
  return terminal, jnp.where(terminal, reward, 0.0)


def _children(graphdef, mstate, env, config, ctx, logits, state, terminal,
              child_start, key):
  legal = _legal(env, state, logits.shape[-1])
  if config.mode == "token":
    k = config.num_children
    actions, prior, mask = _top_k_children(logits, legal, terminal, k)
    zero = jnp.zeros(terminal.shape, jnp.int32)
    scores = None
    if config.terminal_lookahead:  # one more env.step over B x K states
      child = env.step(jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), state),
                       actions.reshape(-1))
      scores = _slot_scores(env, child, mask)
    return actions, prior, mask, zero, zero, scores
  return _sample_steps(graphdef, mstate, env, config, ctx, logits, state,
                       terminal, child_start, key)


def _embedding(config, kv, env_state, calls, tokens, logits, scores, prior):
  emb = dict(kv=kv, env_state=env_state, model_calls=calls,
             tokens_forwarded=tokens)
  if scores is not None:  # and the prior before pruning and root noise
    emb.update(child_terminal=scores[0], child_reward=scores[1],
               child_prior=prior)
  if config.keep_logits:
    emb["logits"] = logits
  return emb


def _lookahead(config, value, scores, mask):
  if not config.terminal_lookahead:
    return value
  terminal, reward = scores
  best = jnp.max(jnp.where(terminal, reward, -jnp.inf), axis=-1)
  best = best.astype(value.dtype)
  every = jnp.any(mask, -1) & jnp.all(terminal | ~mask, -1)
  return jnp.where(every, best, jnp.maximum(value, best))


def solved_children(tree: Tree, *, threshold: float = 0.5) -> Array | None:
  """``[B, N, K]`` child slots the verifier accepted at expansion
  (``child_reward >= threshold``; with ``verifier_in_search=False`` and
  ``terminal_lookahead``, the value head's score), visited or not, in a tree made by
  :func:`lm_search`; None where the tree keeps no slot scores (token mode
  without ``terminal_lookahead``)."""
  emb = tree.embeddings
  if "child_terminal" not in emb:
    return None
  return emb["child_terminal"] & (emb["child_reward"] >= threshold)


def solved_slot(tree: Tree, max_depth: int, *, threshold: float = 0.5,
                by_prior: bool = False) -> tuple[Array, Array]:
  """:func:`tsearch.solved_root_slot` that also counts the
  :func:`solved_children` slots of a tree made by :func:`lm_search`.
  Jittable.

  ``by_prior``: of the root slots that lead to a verified solution, the one
  the policy's prior favours (``solved_root_slot``'s ``prefer`` with the
  root's prior logits before pruning and root noise, embedding
  ``child_prior``; needs a tree that keeps slot scores, i.e.
  ``terminal_lookahead`` or step mode).

  Returns:
    ``found [B]`` bool and ``slot [B]`` int32 (0 where nothing is found).
  """
  prefer = None
  if by_prior:
    if "child_prior" not in tree.embeddings:
      raise ValueError("solved_slot(by_prior=True) reads the root's prior "
                       "from the slot scores a tree keeps only in step mode "
                       "or with terminal_lookahead=True; turn one on.")
    prefer = tree.embeddings["child_prior"][:, tsearch_tree.ROOT_INDEX]
  return tsearch_tree.solved_root_slot(
      tree, max_depth, threshold=threshold,
      solved_children=solved_children(tree, threshold=threshold),
      prefer=prefer)


# ---------------------------------------------------------------------------
# Root and expand_fn.


def make_lm_root(graphdef: nnx.GraphDef, state: nnx.State, env: Any,
                 prompt_tokens: Array, prompt_lengths: Array, rng_key: Array,
                 *, config: LMSearchConfig
                 ) -> tuple[RootOutput, kv_arena.PromptCache]:
  """Encodes the prompts and proposes the root's children.

  Args:
    graphdef, state: a split :class:`models.Transformer`.
    env: the environment (see the module docstring).
    prompt_tokens: ``[B, P]`` int32, right-padded.
    prompt_lengths: ``[B]`` int32 in ``[1, P]``.
    rng_key: key for the root's sampled steps (step mode).
    config: :class:`LMSearchConfig`.

  Returns:
    ``(root, prompt_cache)``: the :class:`tsearch.RootOutput` (whose embedding
    is an empty arena entry plus the environment state) and the prompt's
    :class:`tsearch.kv_arena.PromptCache` of capacity ``P + reserve_tokens``,
    to pass to the expand function as ``params=(state, prompt_cache)``.
  """
  mcfg = models.model_config_of(graphdef, state)
  prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
  prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
  _check_prompt(mcfg, prompt_tokens, prompt_lengths)
  b, p = prompt_tokens.shape
  env_state = env.init_state(prompt_tokens)
  env_vocab = jnp.shape(env.legal_mask(env_state))[-1]
  _check_static(mcfg, config, p, env_vocab)
  positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  valid = positions < prompt_lengths[:, None]
  out = models.forward(graphdef, state, prompt_tokens, positions,
                       token_mask=valid)
  rows = jnp.arange(b)
  last = prompt_lengths - 1
  logits, value = out.logits[rows, last], out.value[rows, last]
  r = config.reserve_tokens
  pad5 = ((0, 0), (0, 0), (0, r), (0, 0), (0, 0))
  prompt = kv_arena.PromptCache(
      keys=kv_arena.constrain_cache(jnp.pad(out.keys, pad5)),
      values=kv_arena.constrain_cache(jnp.pad(out.values, pad5)),
      mask=jnp.pad(valid, ((0, 0), (0, r))),
      num_used=jnp.full((b,), p, jnp.int32), overflowed=jnp.zeros((b,), bool),
      positions=jnp.broadcast_to(jnp.arange(p + r, dtype=jnp.int32),
                                 (b, p + r)))
  terminal = jnp.asarray(env.is_terminal(env_state), bool)
  actions, prior, mask, calls, toks, scores = _children(
      graphdef, state, env, config, (prompt.context(),), logits, env_state,
      terminal, prompt_lengths, rng_key)
  value = _lookahead(config, value, scores, mask)
  if config.page_size:
    kv = kv_arena.paged_node_kv_example(b, config.step_length,
                                        config.page_size)
  else:
    kv = kv_arena.constrain_arena(
        kv_arena.node_kv_example(mcfg, b, config.step_length), per_node=False)
  kv["start"] = prompt_lengths
  emb = _embedding(config, kv, env_state, calls + 1, toks + p, logits, scores,
                   prior)
  root = RootOutput(prior_logits=prior, value=value, embedding=emb,
                    children_actions=actions, children_mask=mask)
  return root, prompt


def make_lm_expand_fn(graphdef: nnx.GraphDef, env: Any, *,
                      config: LMSearchConfig):
  """``expand_fn(params=(model_state, prompt_cache), rng_key, tree, parent,
  slot) -> ExpandOutput`` for :func:`tsearch.puct_search` /
  :func:`tsearch.gumbel_search`.

  The new node's tokens (``tree.children_actions[b, parent, slot]``) are
  forwarded once against prompt + the parent's path in the arena; their
  keys/values become the node's arena entry. The environment state is stepped
  from the parent's; terminal nodes earn ``env.reward``. Children come from
  the last token's logits (top-K tokens, or K sampled steps).
  """
  max_depth = config.max_depth

  def expand_fn(params, rng_key, tree: Tree, parent_index, action_slot):
    mstate, prompt = params
    b = jnp.arange(tree.batch_size)
    # Under a mesh the arena is batch x KV-head sharded (models.sharding).
    emb = dict(tree.embeddings)
    if config.page_size:
      kv = emb["kv"]
      tree = tree.replace(arena=kv_arena.constrain_pool(tree.arena))
    else:
      emb["kv"] = kv = kv_arena.constrain_arena(emb["kv"])
      tree = tree.replace(embeddings=emb)
    tokens = tree.children_actions[b, parent_index, action_slot]  # [B, S]
    s = tokens.shape[1]
    valid = tokens >= 0
    n_tok = valid.sum(-1)
    start = kv["start"][b, parent_index] + kv["length"][b, parent_index]
    positions = start[:, None] + jnp.arange(tokens.shape[1])[None]
    # The parent is at depth <= max_depth - 1.
    ctx = kv_arena.path_contexts(tree, parent_index, max_depth - 1, prompt)
    out = models.forward(graphdef, mstate, jnp.maximum(tokens, 0), positions,
                         ctx, token_mask=valid)
    last = jnp.maximum(n_tok - 1, 0)
    logits, value = out.logits[b, last], out.value[b, last]
    env_state = step_tokens(
        env, jax.tree.map(lambda x: x[b, parent_index], emb["env_state"]),
        tokens)
    terminal = jnp.asarray(env.is_terminal(env_state), bool)
    if config.verifier_in_search:
      reward = jnp.where(terminal, env.reward(env_state), 0.0)
    else:  # no answer key: the value head judges the finished answer
      reward = jnp.where(terminal, value, 0.0)
    discount = jnp.asarray(env.discount(env_state), jnp.float32)
    node_ctx = ctx + (KVContext(keys=out.keys, values=out.values, mask=valid,
                                positions=positions.astype(jnp.int32)),)
    actions, prior, mask, calls, toks, scores = _children(
        graphdef, mstate, env, config, node_ctx, logits, env_state, terminal,
        start + n_tok, rng_key)
    value = _lookahead(config, value, scores, mask)
    if config.prune_terminal_slots:
      mask = mask & ~scores[0]
    node_kv = kv_arena.constrain_arena(dict(
        keys=jnp.moveaxis(out.keys, 0, 1), values=jnp.moveaxis(out.values, 0, 1),
        start=start.astype(jnp.int32), length=n_tok.astype(jnp.int32)),
                                       per_node=False)
    if config.page_size:  # kv_arena.store_node_pages puts them in pages
      node_kv = dict(new_keys=node_kv["keys"], new_values=node_kv["values"],
                     start=node_kv["start"], length=node_kv["length"],
                     pages=jnp.full((tree.batch_size, s // config.page_size),
                                    -1, jnp.int32))
    return ExpandOutput(
        reward=reward.astype(jnp.float32), discount=discount,
        prior_logits=prior, value=value, terminal=terminal,
        children_actions=actions, children_mask=mask,
        embedding=_embedding(config, node_kv, env_state, calls + 1, toks + s,
                             logits, scores, prior))

  return expand_fn


# ---------------------------------------------------------------------------
# Entry points.


def new_lm_tree(root: RootOutput, config: LMSearchConfig,
                model_cfg: models.ModelConfig) -> Tree:
  """An empty tree for :func:`lm_search`'s ``root`` (not yet written):
  ``capacity`` nodes, and with ``page_size > 0`` its page pool
  (``Tree.arena``) and page tables of -1. Pass it as ``tree=`` with the
  root to :func:`tsearch.puct_search` / :func:`tsearch.gumbel_search`,
  with :func:`search_store_fn`."""
  b = root.value.shape[0]
  tree = tsearch_tree.empty_tree(
      batch_size=b, capacity=config.capacity or config.num_simulations + 1,
      num_children=config.num_children, action_length=config.step_length,
      embedding_example=root.embedding)
  if not config.page_size:
    return tree
  emb = dict(tree.embeddings)
  emb["kv"] = dict(emb["kv"], pages=jnp.full_like(emb["kv"]["pages"], -1))
  pool = kv_arena.constrain_pool(kv_arena.page_pool(
      model_cfg, b, config.pages_per_tree, config.page_size))
  return tree.replace(embeddings=emb, arena=pool)


def search_store_fn(config: LMSearchConfig):
  """The ``store_fn`` the searches take for ``config``'s arena layout."""
  return kv_arena.store_node_pages if config.page_size else None


def used_sum(tree: Tree, x: Array) -> Array:
  used = jnp.arange(tree.capacity)[None] < tree.num_nodes[:, None]
  return jnp.sum(jnp.where(used, x, 0), axis=1).astype(jnp.int32)


@sharding.on_params_mesh
@functools.partial(jax.jit, static_argnames=("graphdef", "env", "config"))
def _lm_search_jit(graphdef, state, env, prompt_tokens, prompt_lengths,
                   rng_key, tree, prompt_cache, *, config):
  root_key, search_key = jax.random.split(rng_key)
  capacity = config.capacity
  if tree is None:
    root, prompt_cache = make_lm_root(graphdef, state, env, prompt_tokens,
                                      prompt_lengths, root_key, config=config)
    before_calls = before_tokens = 0
    if config.page_size:  # the search fills the tree made here, pool and all
      tree = new_lm_tree(root, config, models.model_config_of(graphdef,
                                                              state))
      capacity = None
  else:
    root = None
    before_calls = used_sum(tree, tree.embeddings["model_calls"])
    before_tokens = used_sum(tree, tree.embeddings["tokens_forwarded"])
  expand_fn = make_lm_expand_fn(graphdef, env, config=config)
  params = (state, prompt_cache)
  common = dict(num_simulations=config.num_simulations,
                max_depth=config.max_depth, tree=tree,
                leaves_per_step=config.leaves_per_step,
                capacity=capacity if tree is None else None,
                store_fn=search_store_fn(config))
  if config.policy == "puct":
    out = puct_search(params, search_key, root, expand_fn,
                      dirichlet_fraction=config.dirichlet_fraction,
                      dirichlet_alpha=config.dirichlet_alpha,
                      pb_c_init=config.pb_c_init,
                      curiosity_weight=config.curiosity_weight,
                      temperature=config.temperature,
                      skip_dead_ends=config.prune_terminal_slots, **common)
  else:
    out = gumbel_search(
        params, search_key, root, expand_fn,
        max_num_considered_actions=config.max_num_considered_actions,
        gumbel_scale=config.gumbel_scale, **common)
  t = out.search_tree
  return LMSearchOutput(
      action=out.action, action_weights=out.action_weights, search_tree=t,
      prompt_cache=prompt_cache,
      model_calls=used_sum(t, t.embeddings["model_calls"]) - before_calls,
      tokens_forwarded=(used_sum(t, t.embeddings["tokens_forwarded"])
                        - before_tokens))


def lm_search(graphdef: nnx.GraphDef, state: nnx.State, env: Any,
              prompt_tokens: Array, prompt_lengths: Array, rng_key: Array, *,
              config: LMSearchConfig, tree: Tree | None = None,
              prompt_cache: kv_arena.PromptCache | None = None
              ) -> LMSearchOutput:
  """Jitted MCTS (PUCT or Gumbel) over a language model; tree = KV cache.

  Args:
    graphdef, state: a split :class:`models.Transformer` (float32 or bf16).
    env: a hashable environment (e.g. a ``tsearch.tasks`` task).
    prompt_tokens: ``[B, P]`` int32, right-padded.
    prompt_lengths: ``[B]`` int32 in ``[1, P]``.
    rng_key: the same key gives the same tree.
    config: :class:`LMSearchConfig` (static).
    tree, prompt_cache: continue a search (after :func:`lm_reroot`); every
      row of ``tree`` must have a root.

  Returns:
    :class:`LMSearchOutput`: action, action weights, the tree, the prompt
    cache, and per-row compute (model calls, token positions forwarded) of
    this call.
  """
  mcfg = models.model_config_of(graphdef, state)
  prompt_tokens = jnp.asarray(prompt_tokens, jnp.int32)
  prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
  _check_prompt(mcfg, prompt_tokens, prompt_lengths)
  if (tree is None) != (prompt_cache is None):
    raise ValueError("Pass both tree and prompt_cache (to continue a search) "
                     "or neither.")
  if tree is not None:
    p = prompt_cache.mask.shape[1] - config.reserve_tokens
    _check_tree_layout(tree, config)
    if not isinstance(tree.node_depth, jax.core.Tracer):
      depth = int(np.max(np.asarray(tree.node_depth)))
      if depth > config.max_depth:
        raise ValueError(
            f"The tree is {depth} levels deep but the KV arena allows "
            f"max_depth={config.max_depth}; reroot it or raise max_depth.")
      if int(np.min(np.asarray(tree.num_nodes))) < 1:
        raise ValueError("Every row of a continued tree needs a root; a row "
                         "is empty (its committed child was never expanded).")
  else:
    p = prompt_tokens.shape[1]
  env_vocab = jnp.shape(jax.eval_shape(
      lambda t: env.legal_mask(env.init_state(t)), prompt_tokens))[-1]
  _check_static(mcfg, config, p, env_vocab)
  return _lm_search_jit(graphdef, state, env, prompt_tokens, prompt_lengths,
                        rng_key, tree, prompt_cache, config=config)


def _check_tree_layout(tree: Tree, config: LMSearchConfig) -> None:
  """A continued tree's arena must have the layout ``config`` asks for."""
  paged = kv_arena.is_paged(tree)
  if paged != bool(config.page_size):
    have = "paged" if paged else "slab"
    raise ValueError(
        f"The tree's KV arena has the {have} layout but config.page_size="
        f"{config.page_size}; continue a tree with the config that made it.")
  if not paged:
    if tree.embeddings["kv"]["keys"].shape[3] != config.step_length:
      raise ValueError("The tree's arena holds steps of "
                       f"{tree.embeddings['kv']['keys'].shape[3]} tokens but "
                       f"config.step_length={config.step_length}.")
    return
  pool = tree.arena["keys"].shape
  want = (config.pages_per_tree, config.page_size,
          config.step_length // config.page_size)
  have = (pool[1], pool[3], tree.embeddings["kv"]["pages"].shape[2])
  if have != want:
    raise ValueError(
        f"The tree's page pool has (num_pages, page_size, pages per node) = "
        f"{have} but the config asks for {want}; continue a tree with the "
        "config that made it.")


def lm_reroot(tree: Tree, prompt_cache: kv_arena.PromptCache,
              action_slot: Array) -> tuple[Tree, kv_arena.PromptCache]:
  """Commits root slot ``action_slot [B]``: keeps its subtree
  (:func:`tsearch.reroot`) and moves the new root's tokens into the prompt
  cache (needs ``reserve_tokens`` >= the committed tokens). A paged tree's
  pool then keeps only the kept nodes' pages
  (:func:`tsearch.kv_arena.compact_pages`). Jittable."""
  tree = reroot(tree, action_slot)
  prompt_cache, tree = kv_arena.commit_root_tokens(prompt_cache, tree)
  return kv_arena.compact_pages(tree), prompt_cache
