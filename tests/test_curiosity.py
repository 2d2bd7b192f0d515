"""The curiosity (surprisal) bonus of PUCT: ``puct_search(curiosity_weight=w)``.

score(a) = Q(a) + c(N) P(a) sqrt(N) / (1 + n(a))
                + w min(-log P(a), MAX_SURPRISAL) / (1 + n(a)).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tsearch
from train import config as config_lib
from train import search_config
from tsearch._src import selection as sel
from tsearch._src import toy_mdp as toy

PB_C_INIT, PB_C_BASE = 1.25, 19652.0
PRIOR = np.array([0.9, 0.09, 0.01])
VISITS = np.array([1, 0, 0])
NODE_VISITS = 2  # the node's own visit + its child's


def _zero_q(tree, node_index):  # an mctx-style Q transform: Q = 0 everywhere
  del node_index
  return jnp.zeros(tree.children_visits.shape[-1])


def _rows(prior_logits, mask=(True, True, True)):
  k = len(prior_logits)
  return sel.NodeRows(
      node_visits=jnp.array([NODE_VISITS], jnp.int32),
      node_values=jnp.zeros(1), raw_values=jnp.zeros(1),
      prior_logits=jnp.asarray([prior_logits], jnp.float32),
      visits=jnp.asarray([VISITS[:k]], jnp.int32),
      values=jnp.zeros((1, k)), rewards=jnp.zeros((1, k)),
      discounts=jnp.ones((1, k)), mask=jnp.asarray([mask]))


def _select(rows, weight):
  return int(sel.puct_select(
      rows, jnp.zeros(rows.visits.shape), pb_c_init=PB_C_INIT,
      pb_c_base=PB_C_BASE, qtransform=_zero_q, curiosity_weight=weight)[0])


def _hand_scores(weight):
  """The docstring's formula, by hand (Q = 0)."""
  n = NODE_VISITS
  c = PB_C_INIT + math.log((n + PB_C_BASE + 1) / PB_C_BASE)
  return (c * PRIOR * math.sqrt(n) / (1 + VISITS)
          + weight * np.minimum(-np.log(PRIOR), sel.MAX_SURPRISAL)
          / (1 + VISITS))


def test_bonus_flips_selection_to_the_low_prior_unvisited_child():
  rows = _rows(np.log(PRIOR))
  # Without the bonus the prior wins: slot 0 (0.636 c vs 0.127 c vs 0.014 c).
  assert np.argmax(_hand_scores(0.0)) == 0
  assert _select(rows, 0.0) == 0
  # The weight at which slot 2 (P = 0.01, unvisited) ties slot 0:
  #   a0 + w s0 / 2 = a2 + w s2,  s = -log P.
  a = _hand_scores(0.0)
  s = -np.log(PRIOR) / (1 + VISITS)
  w_tie = (a[0] - a[2]) / (s[2] - s[0])
  for w, want in ((0.98 * w_tie, 0), (1.02 * w_tie, 2), (1.0, 2)):
    assert np.argmax(_hand_scores(w)) == want  # slot 1 never leads here
    assert _select(rows, w) == want, w
  # Illegal slots stay masked: without slot 2, the bonus gives slot 1.
  assert _select(_rows(np.log(PRIOR), (True, True, False)), 1.0) == 1
  assert np.argmax(_hand_scores(1.0)[:2]) == 1


B, K, SIMS, STATES = 8, 6, 24, 40


def _search(mdp, key, weight=None):
  kw = {} if weight is None else dict(curiosity_weight=weight)
  return tsearch.puct_search(mdp, key, toy.root(mdp, jnp.arange(B)),
                             toy.expand_fn, num_simulations=SIMS,
                             dirichlet_fraction=0.0, **kw)


_jit_search = jax.jit(_search, static_argnames=("weight",))


def _mdp(seed):
  mdp = toy.make_toy_mdp(jax.random.key(seed), STATES, K)
  return mdp.replace(prior_logits=3.0 * mdp.prior_logits)  # a sharp prior


def test_zero_prior_on_a_legal_slot_stays_finite():
  logits = jnp.array([[0.0, -jnp.inf, jnp.finfo(jnp.float32).min]])
  s = np.asarray(sel.surprisal(logits))
  assert np.all(np.isfinite(s))
  np.testing.assert_allclose(s[0], [0.0, sel.MAX_SURPRISAL,
                                    sel.MAX_SURPRISAL])
  # Selection: the zero-prior slot (unvisited) wins on the capped bonus.
  assert _select(_rows([0.0, 0.0, -np.inf]), 5.0) == 2
  # A search whose every node has a legal zero-prior slot (-inf logit).
  mdp = _mdp(1)
  mdp = mdp.replace(prior_logits=mdp.prior_logits.at[:, 2].set(-jnp.inf))
  out = _jit_search(mdp, jax.random.key(0), 1.0)
  t = out.search_tree
  for x in (out.action_weights, t.node_values, t.children_values):
    assert np.all(np.isfinite(np.asarray(x)))
  assert not np.any(np.asarray(t.nonfinite))
  assert np.all(np.asarray(t.children_visits[:, 0, 2]) > 0)  # explored


def test_weight_zero_is_the_default_and_a_weight_spreads_root_visits():
  mdp, key = _mdp(0), jax.random.key(3)
  # Weight 0 is the default program, op for op (so the same tree: the run
  # below is mctx parity's rule, checked by tests/test_mctx_parity.py).
  lower = lambda w: _jit_search.lower(mdp, key, w).as_text()
  assert lower(0.0) == lower(None)
  assert lower(0) == lower(None)
  default = _jit_search(mdp, key, None)
  curious = _jit_search(mdp, key, 1.0)
  distinct = lambda out: np.sum(
      np.asarray(out.search_tree.children_visits[:, 0]) > 0, axis=-1)
  d0, d1 = distinct(default), distinct(curious)
  assert np.all(d1 >= d0)
  assert d1.sum() > d0.sum(), (d0, d1)
  # Lower-prior root children get more of the visits.
  prior = np.asarray(jax.nn.softmax(mdp.prior_logits[:B]))
  surprise = lambda out: np.sum(
      np.asarray(out.action_weights) * -np.log(prior), axis=-1).mean()
  assert surprise(curious) > surprise(default)


@pytest.mark.parametrize("weight", [-0.5, float("nan"), float("inf"), "1",
                                    True])
def test_bad_weights_raise(weight):
  with pytest.raises(ValueError, match="curiosity_weight"):
    # Checked before the root or the model is looked at.
    tsearch.puct_search(None, None, None, None, num_simulations=2,
                        curiosity_weight=weight)
  with pytest.raises(ValueError, match="curiosity_weight"):
    tsearch.LMSearchConfig(curiosity_weight=weight)


def test_config_threading_and_errors():
  assert tsearch.LMSearchConfig().curiosity_weight == 0.0
  assert tsearch.LMSearchConfig(curiosity_weight=0.5).curiosity_weight == 0.5
  with pytest.raises(ValueError, match="curiosity_weight=0.5 applies to "
                     "policy='puct' only"):
    tsearch.LMSearchConfig(policy="gumbel", curiosity_weight=0.5)
  tsearch.LMSearchConfig(policy="gumbel", curiosity_weight=0.0)  # fine
  c = config_lib.default_config()
  assert c.search.curiosity_weight == 0.0
  c.search.curiosity_weight = 0.5
  task = tsearch.get_task("arithmetic", max_digits=1)
  assert search_config.lm_search_config(
      c.search, task).curiosity_weight == 0.5
  for bad, algorithm in ((-1.0, "puct"), (float("nan"), "puct"),
                         (0.5, "gumbel")):
    c = config_lib.default_config()
    c.search.curiosity_weight = bad
    c.search.algorithm = algorithm
    with pytest.raises(ValueError, match="search.curiosity_weight"):
      config_lib.validate_config(c)
