"""Search over loaded pretrained checkpoints is exact.

The same test as the native model's (tests/test_lm_search.py): every node's
logits and value equal a plain forward over its whole sequence (1e-4), here
over the tiny Qwen2.5 (q/k/v biases, an embedding larger than the
environment's vocabulary) and Gemma 3 (sliding-window layers whose window of
6 is shorter than the paths, their own RoPE base, sandwich norms) checkpoints
of tests/goldens, including after a reroot has moved committed tokens into
the prompt cache (where a slot's index is no longer its position).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import tsearch
from models import hf
from tests.lm_toy_env import ToyEnv
from tests.test_lm_search import (assert_terminal_rewards, assert_tree_exact,
                                  prompts)

GOLDENS = os.path.join(os.path.dirname(__file__), "goldens")
ENV = ToyEnv(vocab_size=16, max_len=10)


def _split(family):
  cfg, params = hf.load(os.path.join(GOLDENS, family), max_seq_len=48)
  # A non-zero value head, so that values are checked too.
  params["value_head"]["kernel"] = jax.random.normal(
      jax.random.key(0), params["value_head"]["kernel"].shape) * 0.3
  return nnx.split(hf.to_model(cfg, params))


@pytest.mark.parametrize("family,mode,s,policy", [
    ("qwen2", "token", 1, "puct"), ("gemma3", "token", 1, "puct")])
def test_search_over_loaded_checkpoint_matches_full_forward(family, mode, s,
                                                            policy):
  # Gemma 3 in step mode (Gumbel): the reroot test below, which checks its
  # tree before the reroot the same way.
  g, st = _split(family)
  prompt, lengths = prompts(p=8)
  check_search(g, st, prompt, lengths, _config(mode, policy, s))


def _config(mode, policy, s, **kw):
  # Gumbel and a hot step temperature: the random checkpoint's peaked
  # distributions would otherwise give few distinct steps and a shallow tree.
  return tsearch.LMSearchConfig(
      mode=mode, policy=policy, num_simulations=16, num_children=3,
      step_length=s, max_depth=4, keep_logits=True, step_temperature=3.0,
      **kw)


def check_search(g, st, prompt, lengths, config):
  """Searches; every node is exact, the tree deep and its values real."""
  out = tsearch.lm_search(g, st, ENV, prompt, lengths, jax.random.key(3),
                          config=config)
  tree = out.search_tree
  assert int(tree.node_depth.max()) >= 3
  # Gemma's window (6) is shorter than prompt + path for the deep nodes.
  s = config.step_length
  assert int(lengths.max()) + int(tree.node_depth.max()) * s > 6
  n = assert_tree_exact(g, st, tree, prompt, lengths, mode=config.mode)
  assert n == int(tree.num_nodes.sum())
  assert_terminal_rewards(tree, ENV)
  assert np.abs(np.asarray(tree.raw_values)).max() > 1e-3
  return out


@pytest.mark.slow
def test_search_after_reroot_over_sliding_window_model():
  g, st = _split("gemma3")
  prompt, lengths = prompts(p=8)
  # First the step-mode search over the checkpoint, checked as above (one
  # compiled search for both checks).
  config = _config("step", "gumbel", 3, reserve_tokens=3)
  out = check_search(g, st, prompt, lengths, config)
  t = out.search_tree
  child = np.asarray(t.children_index[:, 0])
  live = (child > 0) & ~np.take_along_axis(np.asarray(t.node_terminal),
                                           np.maximum(child, 0), axis=1)
  assert live.any(-1).all()
  slot = jnp.asarray(np.where(live, np.asarray(t.children_visits[:, 0]),
                              -1).argmax(-1), jnp.int32)
  acts = np.asarray(t.children_actions)
  committed = [[int(x) for x in acts[b, 0, int(slot[b])] if x >= 0]
               for b in range(2)]
  tree, cache = jax.jit(tsearch.lm_reroot)(t, out.prompt_cache, slot)
  more = tsearch.lm_search(g, st, ENV, prompt, lengths, jax.random.key(6),
                           config=config, tree=tree, prompt_cache=cache)
  assert_tree_exact(g, st, more.search_tree, prompt, lengths, committed,
                    mode="step")
