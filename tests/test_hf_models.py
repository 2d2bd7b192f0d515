"""Loaded Hugging Face checkpoints against the reference implementation.

``tests/goldens/<family>/`` holds tiny random checkpoints of Llama 3, Qwen2.5,
Qwen3 and Gemma 3 with the reference's outputs (``tools/make_goldens.py``,
transformers + torch, run once by a maintainer; torch is not needed here).
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import models
from models import hf

GOLDENS = os.path.join(os.path.dirname(__file__), "goldens")
FAMILIES = ("llama3", "qwen2", "qwen3", "gemma3")


def _golden(family):
  path = os.path.join(GOLDENS, family)
  ref = dict(np.load(os.path.join(path, "reference.npz")))
  with open(os.path.join(path, "reference.json")) as f:
    ref.update(json.load(f))
  return path, ref


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request):
  path, ref = _golden(request.param)
  cfg, params = hf.load(path)
  return request.param, path, ref, cfg, hf.to_model(cfg, params)


def test_config_fields_of_each_family():
  cfgs = {f: hf.model_config(hf.read_config(os.path.join(GOLDENS, f)))
          for f in FAMILIES}
  assert cfgs["llama3"].rope_scaling == models.RopeScaling(
      kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
      original_max_position_embeddings=32)
  assert cfgs["llama3"].tie_embeddings and not cfgs["qwen2"].tie_embeddings
  assert cfgs["qwen2"].qkv_bias and not cfgs["qwen2"].o_bias
  assert cfgs["qwen2"].vocab_size == 768  # embedding larger than tokenizer
  assert cfgs["qwen3"].qk_norm and cfgs["qwen3"].head_dim == 32
  g = cfgs["gemma3"]
  assert g.layer_types == ("sliding", "full", "sliding", "full")
  assert (g.sliding_window, g.rope_local_theta, g.rope_theta) == (6, 1e4, 1e6)
  assert g.rope_scaling == models.RopeScaling(kind="linear", factor=8.0)
  # The reference applies only the final soft-cap for Gemma 3 (it ignores
  # attn_logit_softcapping=50 in config.json), and so do we.
  assert (g.attn_logit_softcap, g.final_logit_softcap) == (None, 30.0)
  assert g.norm_offset == 1.0 and g.activation == "gelu_tanh"
  assert g.query_pre_attn_scalar == 16 and g.scale_embeddings


def test_logits_match_reference_on_padded_batch(loaded):
  family, _, ref, cfg, model = loaded
  ids = jnp.asarray(ref["input_ids"], jnp.int32)
  mask = np.asarray(ref["attention_mask"], bool)
  b, p = ids.shape
  pos = jnp.broadcast_to(jnp.arange(p), (b, p))
  out = model(ids, pos, token_mask=jnp.asarray(mask))
  got = np.asarray(out.logits)[mask]
  want = ref["logits"][mask]
  assert got.shape == want.shape and want.std() > 0.1, family
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
  # The new value head starts at zero: values are mid-range (0 here).
  np.testing.assert_array_equal(np.asarray(out.value)[mask], 0.0)


_forward = jax.jit(models.forward, static_argnums=0)


def _greedy(model, prompt, n):
  """KV-cached greedy decoding into a fixed-size cache (one compile); the
  sliding layers read the cache's key positions."""
  graphdef, state = nnx.split(model)
  p, cap = len(prompt), len(prompt) + n
  out = _forward(graphdef, state, jnp.asarray([prompt]), jnp.arange(p)[None])
  pad = ((0, 0), (0, 0), (0, cap - p), (0, 0), (0, 0))
  keys, values = jnp.pad(out.keys, pad), jnp.pad(out.values, pad)
  tok = int(jnp.argmax(out.logits[0, -1]))
  toks = [tok]
  for i in range(n - 1):
    ctx = models.KVContext(keys=keys, values=values,
                           mask=(jnp.arange(cap) < p + i)[None],
                           positions=jnp.arange(cap)[None])
    out = _forward(graphdef, state, jnp.asarray([[tok]]),
                   jnp.asarray([[p + i]]), ctx)
    keys = keys.at[:, :, p + i].set(out.keys[:, :, 0])
    values = values.at[:, :, p + i].set(out.values[:, :, 0])
    tok = int(jnp.argmax(out.logits[0, -1]))
    toks.append(tok)
  return toks


def test_greedy_32_tokens_match_reference(loaded):
  family, _, ref, cfg, model = loaded
  mask = np.asarray(ref["attention_mask"], bool)
  for row in range(ref["input_ids"].shape[0]):
    prompt = ref["input_ids"][row][mask[row]].tolist()
    got = _greedy(model, prompt, 32)
    assert got == ref["greedy"][row].tolist(), (family, row)
  assert len(set(ref["greedy"].ravel().tolist())) > 4  # not one token


def test_load_export_load_is_exact(loaded, tmp_path):
  family, path, _, cfg, _ = loaded
  _, params = hf.load(path)
  out = str(tmp_path / family)
  hf.save(out, cfg, params, like=path, max_shard_bytes=200_000)
  assert os.path.exists(os.path.join(out, "model.safetensors.index.json"))
  assert os.path.exists(os.path.join(out, "tokenizer.json"))
  cfg2, params2 = hf.load(out)
  assert cfg2 == cfg
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Tensor names and shapes are the reference's: same set as the source.
  src, dst = hf.tensor_index(path), hf.tensor_index(out)
  assert {k: v.shape for k, v in src.items()} == {
      k: v.shape for k, v in dst.items()}


def test_trained_value_head_round_trips(tmp_path):
  path, _ = _golden("qwen3")
  cfg, params = hf.load(path)
  params["value_head"]["kernel"] = jnp.full_like(
      params["value_head"]["kernel"], 0.01)
  params["value_head"]["bias"] = jnp.full_like(params["value_head"]["bias"],
                                               0.5)
  hf.save(str(tmp_path), cfg, params, like=path)
  _, again = hf.load(str(tmp_path))
  np.testing.assert_array_equal(np.asarray(again["value_head"]["bias"]), 0.5)
  np.testing.assert_array_equal(np.asarray(again["value_head"]["kernel"]),
                                np.float32(0.01))


def test_bfloat16_checkpoint_loads_exactly_into_bfloat16():
  path, _ = _golden("gemma3")  # weights stored in bfloat16
  cfg, params = hf.load(path, dtype="bfloat16")
  cfg32, params32 = hf.load(path)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params32)):
    if a.shape != (1,) and a.ndim:
      assert a.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b))


# ---------------------------------------------------------------------------
# Bad input.


def _copy(family, tmp_path):
  dst = str(tmp_path / family)
  shutil.copytree(os.path.join(GOLDENS, family), dst)
  return dst


def test_directory_without_config(tmp_path):
  with pytest.raises(hf.CheckpointError, match="no config.json"):
    hf.load(str(tmp_path))
  with pytest.raises(hf.CheckpointError, match="not a directory"):
    hf.load(str(tmp_path / "nope"))


def test_unsupported_architecture_names_the_supported(tmp_path):
  d = _copy("llama3", tmp_path)
  cfg = hf.read_config(d)
  cfg["architectures"] = ["MistralForCausalLM"]
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(cfg, f)
  with pytest.raises(hf.CheckpointError,
                     match="MistralForCausalLM.*supported: LlamaForCausalLM"):
    hf.load(d)


def _rewrite(d, fn):
  from safetensors.numpy import load_file, save_file
  import ml_dtypes  # noqa: F401  (bfloat16 for numpy)
  file = os.path.join(d, "model.safetensors")
  idx = hf.tensor_index(d)
  tensors = {k: np.array(hf._read(v, k)) for k, v in idx.items()}
  fn(tensors)
  save_file(tensors, file)
  del load_file


def test_missing_tensor_is_named(tmp_path):
  d = _copy("llama3", tmp_path)
  _rewrite(d, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(hf.CheckpointError,
                     match="model.layers.1.mlp.up_proj.weight.*missing"):
    hf.load(d)


def test_misshapen_tensor_is_named(tmp_path):
  d = _copy("llama3", tmp_path)
  name = "model.layers.0.self_attn.k_proj.weight"
  _rewrite(d, lambda t: t.__setitem__(name, t[name][:-2]))
  with pytest.raises(hf.CheckpointError, match=f"{name}.*shape"):
    hf.load(d)


def test_unsupported_dtype(tmp_path):
  d = _copy("llama3", tmp_path)
  name = "model.norm.weight"
  _rewrite(d, lambda t: t.__setitem__(name, t[name].astype(np.int8)))
  with pytest.raises(hf.CheckpointError, match=f"{name}.*dtype I8"):
    hf.load(d)


def test_corrupt_safetensors_file(tmp_path):
  d = _copy("llama3", tmp_path)
  with open(os.path.join(d, "model.safetensors"), "r+b") as f:
    f.truncate(1000)
  with pytest.raises(hf.CheckpointError, match="corrupt|truncated"):
    hf.load(d)


def test_tokenizer_larger_than_embedding(tmp_path):
  d = _copy("qwen2", tmp_path)
  cfg = hf.read_config(d)
  cfg["vocab_size"] = 600  # the tokenizer has 653 ids
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(cfg, f)
  with pytest.raises(hf.CheckpointError, match="tokenizer has 653 tokens"):
    hf.load(d)


def test_prompt_longer_than_context():
  path, _ = _golden("qwen3")
  cfg, params = hf.load(path, max_seq_len=16)
  model = hf.to_model(cfg, params)
  with pytest.raises(ValueError, match="exceed max_seq_len=16"):
    model(jnp.zeros((1, 20), jnp.int32), jnp.arange(20)[None])
  with pytest.raises(ValueError, match="longer than the model's context"):
    model(jnp.zeros((1, 2), jnp.int32), jnp.asarray([[15, 16]]))


def test_bfloat16_end_to_end_dtypes_and_accuracy():
  """Parameters, activations and KV caches in bfloat16; logits and values in
  float32 and close to the float32 model's (bench/bf16_accuracy.py measures
  it in full)."""
  import tsearch
  from tests.lm_toy_env import ToyEnv
  path, ref = _golden("qwen2")
  cfg, params = hf.load(path, dtype="bfloat16")
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  g, st = nnx.split(hf.to_model(cfg, params))
  ids = jnp.asarray(ref["input_ids"], jnp.int32)
  mask = np.asarray(ref["attention_mask"], bool)
  pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  out = _forward(g, st, ids, pos, None, jnp.asarray(mask))
  assert out.logits.dtype == jnp.float32 and out.value.dtype == jnp.float32
  assert out.keys.dtype == jnp.bfloat16
  got, want = np.asarray(out.logits)[mask], ref["logits"][mask]
  assert np.abs(got - want).mean() < 0.05 * want.std()
  assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
  search = tsearch.lm_search(
      g, st, ToyEnv(vocab_size=16, max_len=6), ids[:2, :8],
      jnp.asarray([8, 8]), jax.random.key(0),
      config=tsearch.LMSearchConfig(num_simulations=4, num_children=2))
  assert search.search_tree.embeddings["kv"]["keys"].dtype == jnp.bfloat16
  assert search.prompt_cache.keys.dtype == jnp.bfloat16
  assert search.search_tree.node_values.dtype == jnp.float32


def test_load_puts_each_tensor_straight_onto_its_sharding():
  from models import sharding
  path, ref = _golden("qwen2")
  cfg = hf.model_config(hf.read_config(path))
  mesh = sharding.make_mesh(data=4, model=2)
  specs = sharding.param_specs(hf.abstract_params(cfg), mesh=mesh)
  _, params = hf.load(path, shardings=sharding.named_shardings(mesh, specs))
  _, plain = hf.load(path)
  q = params["layers"][0]["self_attn"]["q_proj"]["kernel"]  # [D, H*Dh]
  assert q.sharding.spec == jax.sharding.PartitionSpec("data", "model")
  assert q.addressable_shards[0].data.shape == (64 // 4, 64 // 2)
  emb = params["embed_tokens"]["embedding"]  # [768, 64]
  assert emb.addressable_shards[0].data.shape == (768 // 2, 64 // 4)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  model = hf.to_model(cfg, params)
  ids = jnp.asarray(ref["input_ids"], jnp.int32)
  mask = np.asarray(ref["attention_mask"], bool)
  pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  with jax.set_mesh(mesh):
    got = np.asarray(model(ids, pos, token_mask=jnp.asarray(mask)).logits)
  np.testing.assert_allclose(got[mask], ref["logits"][mask], atol=1e-4)
