"""KV arena: memory grows with tokens in the tree; path gathering; commits."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
import tsearch
from tsearch import kv_arena
from tests.lm_toy_env import ToyEnv

CFG = models.ModelConfig(vocab_size=20, num_layers=2, d_model=32, num_heads=4,
                         num_kv_heads=2, head_dim=8, mlp_dim=40,
                         max_seq_len=512)
G, S = nnx.split(models.Transformer(CFG, rngs=nnx.Rngs(0)))
ENV = ToyEnv()


def search_shapes(prompt_len, config, batch=4):
  prompt = jax.ShapeDtypeStruct((batch, prompt_len), jnp.int32)
  lengths = jax.ShapeDtypeStruct((batch,), jnp.int32)
  return jax.eval_shape(
      lambda s, p, l, k: tsearch.lm_search(G, s, ENV, p, l, k, config=config),
      S, prompt, lengths, jax.random.key(0))


@pytest.mark.parametrize("mode,s", [("token", 1), ("step", 4)])
def test_memory_grows_with_tree_tokens_not_nodes_times_context(mode, s):
  config = tsearch.LMSearchConfig(mode=mode, step_length=s, num_simulations=32,
                                  num_children=4, max_depth=16)
  per_token = 2 * CFG.num_layers * CFG.num_kv_heads * CFG.head_dim * 4
  b, n = 4, 33
  arena = {}
  for p in (16, 256):
    out = search_shapes(p, config)
    arena[p] = tsearch.kv_arena.arena_bytes(out.search_tree)
    prompt_bytes = kv_arena.prompt_cache_bytes(out.prompt_cache)
    assert arena[p] == b * n * s * per_token  # token slots of the tree
    assert prompt_bytes == b * p * per_token  # one prompt copy per row
    # A per-node copy of the prefix would need N x context.
    per_node_copy = b * n * (p + config.max_depth * s) * per_token
    assert arena[p] + prompt_bytes < per_node_copy / 8
  assert arena[16] == arena[256]  # independent of the context length


def hand_tree(step=2):
  """Root 0 -> 1 -> 2 and root 0 -> 3; node n's own tokens hold value n+1."""
  b = 1
  example = dict(kv=kv_arena.node_kv_example(CFG, b, step))
  tree = tsearch.empty_tree(batch_size=b, capacity=5, num_children=2,
                            action_length=step, embedding_example=example)
  kv = example["kv"]
  shape = tree.embeddings["kv"]["keys"].shape
  keys = jnp.broadcast_to(jnp.arange(1, 6, dtype=jnp.float32)[None, :, None,
                                                               None, None, None],
                          shape)
  new_kv = dict(kv, keys=keys, values=-keys,
                start=jnp.array([[3, 3, 5, 3, 0]]),
                length=jnp.array([[0, 2, 1, 2, 0]]))
  del kv
  return tree.replace(
      parents=jnp.array([[-1, 0, 1, 0, -1]]),
      action_from_parent=jnp.array([[-1, 0, 0, 1, -1]]),
      node_depth=jnp.array([[0, 1, 2, 1, 0]]),
      children_index=jnp.array([[[1, 3], [2, -1], [-1, -1], [-1, -1],
                                 [-1, -1]]]),
      num_nodes=jnp.array([4]),
      embeddings=dict(kv=new_kv))


def test_path_context_gathers_ancestors_only():
  tree = hand_tree()
  shape = (CFG.num_layers, 1, 3, CFG.num_kv_heads, CFG.head_dim)
  prompt = kv_arena.PromptCache(
      keys=jnp.full(shape, 9.0), values=jnp.full(shape, -9.0),
      mask=jnp.array([[True, True, False]]), num_used=jnp.array([3]),
      overflowed=jnp.array([False]))
  prompt_ctx, _ = kv_arena.path_contexts(tree, jnp.array([2]), 3, prompt)
  assert prompt_ctx.keys is prompt.keys  # read in place, not copied
  ctx = tsearch.kv_arena.path_context(tree, jnp.array([2]), 3, prompt)
  # 3 prompt slots + (max_depth + 1) * S arena slots.
  assert ctx.keys.shape == (CFG.num_layers, 1, 3 + 4 * 2, CFG.num_kv_heads,
                            CFG.head_dim)
  mask = np.asarray(ctx.mask[0])
  keys = np.asarray(ctx.keys[0, 0, :, 0, 0])
  attended = sorted(keys[mask].tolist())
  # Prompt (2 real slots), node 1 (2 tokens), node 2 (1 token); not node 3.
  assert attended == [2.0, 2.0, 3.0, 9.0, 9.0]
  np.testing.assert_array_equal(np.asarray(ctx.values[0, 0, :, 0, 0])[mask],
                                -keys[mask])


def test_commit_root_tokens_and_overflow():
  tree = hand_tree()
  tree = tsearch.reroot(tree, jnp.array([0]))  # node 1 becomes the root
  shape = (CFG.num_layers, 1, 5, CFG.num_kv_heads, CFG.head_dim)
  prompt = kv_arena.PromptCache(
      keys=jnp.zeros(shape), values=jnp.zeros(shape),
      mask=jnp.array([[True, True, True, False, False]]),
      num_used=jnp.array([3]), overflowed=jnp.array([False]))
  new_prompt, new_tree = tsearch.kv_arena.commit_root_tokens(prompt, tree)
  np.testing.assert_array_equal(new_prompt.mask, [[True] * 5])
  np.testing.assert_array_equal(new_prompt.keys[0, 0, 3:, 0, 0], [2.0, 2.0])
  np.testing.assert_array_equal(new_prompt.num_used, [5])
  kv = new_tree.embeddings["kv"]
  assert int(kv["length"][0, 0]) == 0 and int(kv["start"][0, 0]) == 5
  assert not new_prompt.overflowed.any()
  # A full cache: the commit is dropped and flagged, never written elsewhere.
  full, _ = tsearch.kv_arena.commit_root_tokens(new_prompt, tree)
  assert full.overflowed.all()
  np.testing.assert_array_equal(full.keys, new_prompt.keys)


def test_continued_tree_deeper_than_arena_errors():
  tree = hand_tree(step=1)
  tree = tree.replace(node_depth=jnp.array([[0, 1, 5, 1, 0]]),
                      embeddings=dict(tree.embeddings, env_state=None))
  config = tsearch.LMSearchConfig(num_simulations=4, num_children=2,
                                  max_depth=4)
  shape = (CFG.num_layers, 1, 3, CFG.num_kv_heads, CFG.head_dim)
  prompt = kv_arena.PromptCache(
      keys=jnp.zeros(shape), values=jnp.zeros(shape),
      mask=jnp.ones((1, 3), bool), num_used=jnp.array([3]),
      overflowed=jnp.array([False]))
  with pytest.raises(ValueError, match="KV arena allows max_depth=4"):
    tsearch.lm_search(G, S, ENV, jnp.ones((1, 3), jnp.int32), jnp.array([3]),
                      jax.random.key(0), config=config, tree=tree,
                      prompt_cache=prompt)
