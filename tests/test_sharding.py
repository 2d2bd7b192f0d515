"""Sharded parameters (FSDP 8; FSDP 4 x TP 2) give the unsharded results.

On the 8 virtual CPU devices: the specs really shard the big parameters;
``tsearch.lm_search`` (token and step mode), greedy decoding and one training
step (with a search inside, as in search-and-learn) equal the unsharded ones
within 1e-5; the KV arena is batch (and KV-head) sharded; bad sizes are clear
errors.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import models
import tsearch
from models import sharding
from tests.lm_toy_env import ToyEnv
from train import config as config_lib
from train import model as model_lib
from train import step as step_lib

# One layer: every layer is sharded by the same rules (a second one would
# only lengthen each compile).
CFG = models.ModelConfig(vocab_size=64, num_layers=1, d_model=32, num_heads=4,
                         num_kv_heads=2, head_dim=8, mlp_dim=64, max_seq_len=48)
ENV = ToyEnv(vocab_size=16, max_len=8)
TASK = tsearch.get_task("arithmetic", max_digits=2)
MESHES = [(8, 1), (4, 2)]  # (data, model): FSDP 8; FSDP 4 x TP 2
OPTIM = ml_collections.ConfigDict(dict(
    learning_rate=1e-2, warmup_steps=0, weight_decay=0.0, b1=0.9, b2=0.98,
    grad_clip=1.0))
TOL = 1e-5


def _model():
  fns, params = model_lib.create_model(CFG, seed=0)
  return fns, jax.device_get(params)  # host copies: donation cannot eat them


def _sharded(params, data, model):
  mesh = sharding.make_mesh(data=data, model=model)
  specs = sharding.param_specs(params, mesh=mesh)
  return mesh, specs, sharding.shard_params(params, mesh, specs)


def _prompts(b=8, p=5):
  toks = np.asarray(jax.random.randint(jax.random.key(1), (b, p), 3, 16),
                    np.int32)
  return toks, np.array([5, 4, 3, 5, 2, 5, 4, 1][:b], np.int32)


def _on_data(mesh, *xs):
  return [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in xs]


def _close(a, b, what):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x, np.float64), np.asarray(y, np.float64), atol=TOL,
      rtol=TOL, err_msg=what), a, b)


# ----------------------------------------------------------------- specs


@pytest.mark.parametrize("data,model", MESHES)
def test_big_params_are_really_sharded(data, model):
  _, params = _model()
  _, specs, sp = _sharded(params, data, model)
  layer = sp["layers"][0]
  attn, mlp = layer["self_attn"], layer["mlp"]
  if model == 1:  # FSDP only: the model-width dim over 'data'
    assert attn["q_proj"]["kernel"].sharding.spec == P("data", None)
    assert attn["o_proj"]["kernel"].sharding.spec == P(None, "data")
    assert sp["embed_tokens"]["embedding"].sharding.spec == P(None, "data")
  else:  # Megatron: heads / MLP features / vocabulary over 'model'
    assert attn["q_proj"]["kernel"].sharding.spec == P("data", "model")
    assert attn["k_proj"]["kernel"].sharding.spec == P("data", "model")
    assert mlp["up_proj"]["kernel"].sharding.spec == P("data", "model")
    assert attn["o_proj"]["kernel"].sharding.spec == P("model", "data")
    assert mlp["down_proj"]["kernel"].sharding.spec == P("model", "data")
    assert sp["embed_tokens"]["embedding"].sharding.spec == P("model", "data")
    assert sp["lm_head"]["kernel"].sharding.spec == P("data", "model")
  for x in (attn["q_proj"]["kernel"], mlp["gate_proj"]["kernel"],
            sp["embed_tokens"]["embedding"], sp["lm_head"]["kernel"]):
    shard = x.addressable_shards[0].data
    assert shard.size * data * model == x.size, (x.shape, shard.shape)
    assert sharding.is_sharded(x)
  # What no rule names is replicated.
  for x in (layer["input_layernorm"]["scale"], sp["norm"]["scale"],
            sp["value_head"]["kernel"], sp["value_head"]["bias"]):
    assert not sharding.is_sharded(x)
  text = sharding.describe(sp)
  assert "layers/0/self_attn/q_proj/kernel" in text and "(32, 32)" in text
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(sp), params)


def test_rules_fall_back_to_replicating_what_does_not_divide():
  mesh = sharding.make_mesh(data=4, model=2)
  params = {
      "embed_tokens": {"embedding": jax.ShapeDtypeStruct((63, 32),
                                                         jnp.float32)},
      "layers": {0: {"self_attn": {
          "q_proj": {"kernel": jax.ShapeDtypeStruct((30, 32), jnp.float32),
                     "bias": jax.ShapeDtypeStruct((32,), jnp.float32)},
          "q_norm": {"scale": jax.ShapeDtypeStruct((8,), jnp.float32)},
          "o_proj": {"bias": jax.ShapeDtypeStruct((32,), jnp.float32)}},
                     "pre_feedforward_layernorm": {
                         "scale": jax.ShapeDtypeStruct((32,), jnp.float32)}}},
      "something_new": {"kernel": jax.ShapeDtypeStruct((64, 64),
                                                       jnp.float32)}}
  specs = sharding.param_specs(params, mesh=mesh)
  assert specs["embed_tokens"]["embedding"] == P(None, "data")  # V=63
  attn = specs["layers"][0]["self_attn"]
  assert attn["q_proj"]["kernel"] == P(None, "model")  # D=30 over data=4
  assert attn["q_proj"]["bias"] == P("model")
  assert attn["q_norm"]["scale"] == P(None)
  assert attn["o_proj"]["bias"] == P(None)
  assert specs["layers"][0]["pre_feedforward_layernorm"]["scale"] == P(None)
  assert specs["something_new"]["kernel"] == P(None, None)
  no_tp = sharding.param_specs(params, mesh=mesh, tensor_parallel=False)
  assert no_tp["layers"][0]["self_attn"]["q_proj"]["bias"] == P(None)
  no_fsdp = sharding.param_specs(params, mesh=mesh, fsdp=False)
  assert no_fsdp["embed_tokens"]["embedding"] == P(None, None)


# ---------------------------------------------------------------- search


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["token", "step"])
def test_lm_search_with_sharded_params_equals_unsharded(mode):
  fns, params = _model()
  config = tsearch.LMSearchConfig(
      mode=mode, num_simulations=5, num_children=3,
      step_length=1 if mode == "token" else 3, max_depth=4, keep_logits=True)
  toks, lens = _prompts()
  ref = tsearch.lm_search(fns.graphdef, fns.state(params), ENV, toks, lens,
                          jax.random.key(0), config=config)
  for data, model in MESHES:
    mesh, _, sp = _sharded(params, data, model)
    out = tsearch.lm_search(fns.graphdef, fns.state(sp), ENV,
                            *_on_data(mesh, toks, lens), jax.random.key(0),
                            config=config)
    what = f"{mode} data={data} model={model}"
    np.testing.assert_array_equal(out.search_tree.children_actions,
                                  ref.search_tree.children_actions, what)
    _close(out.action_weights, ref.action_weights, what)
    _close(out.search_tree.node_values, ref.search_tree.node_values, what)
    _close(out.search_tree.embeddings["logits"],
           ref.search_tree.embeddings["logits"], what)
    # The arena [B, N, L, S, Hkv, Dh] and the prompt cache [L, B, C, Hkv, Dh]
    # are batch sharded, and on KV heads under tensor parallelism.
    heads = "model" if model > 1 else None
    arena = out.search_tree.embeddings["kv"]["keys"].sharding.spec
    assert tuple(arena) + (None,) * (6 - len(arena)) == (
        "data", None, None, None, heads, None), arena
    cache = out.prompt_cache.keys.sharding.spec
    assert tuple(cache) + (None,) * (5 - len(cache)) == (
        None, "data", None, heads, None), cache


def test_greedy_generation_with_sharded_params_is_identical():
  fns, params = _model()
  greedy = tsearch.get_algorithm("greedy")
  toks, lens = TASK.encode_prompts(TASK.sample_problems(seed=5, num=8))
  ref = greedy(fns.graphdef, fns.state(params), TASK, toks, lens,
               jax.random.key(0))
  for data, model in MESHES:
    mesh, _, sp = _sharded(params, data, model)
    out = greedy(fns.graphdef, fns.state(sp), TASK,
                 *_on_data(mesh, toks, lens), jax.random.key(0))
    np.testing.assert_array_equal(out.answers, ref.answers)
    np.testing.assert_array_equal(out.answer_lengths, ref.answer_lengths)
    _close(out.answer_scores, ref.answer_scores, f"{data}x{model}")


# ----------------------------------------------------------- train step


def _search_prepare(fns):
  """A prepare_fn that searches (as search-and-learn does): the root's
  search weights and value become the batch's value target."""
  config = tsearch.LMSearchConfig(num_simulations=3, num_children=2,
                                  max_depth=3)

  def prepare(params, batch, key):
    b = batch["tokens"].shape[0]
    out = tsearch.lm_search(
        fns.graphdef, fns.state(params), ENV, batch["tokens"][:, :5],
        jnp.full((b,), 5, jnp.int32), key, config=config)
    target = jnp.tanh(out.search_tree.node_values[:, 0]
                      + out.action_weights[:, 0])
    return ({**batch, "value_target": target},
            {"search/weight": jnp.mean(out.action_weights[:, 0])})
  return prepare


def _batch(b=8, t=10):
  rng = np.random.default_rng(0)
  lengths = rng.integers(6, t + 1, size=b)
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  return dict(tokens=rng.integers(3, 16, (b, t)).astype(np.int32),
              token_mask=mask, loss_mask=mask * (np.arange(t)[None] >= 2),
              value_mask=mask, value_target=np.zeros((b,), np.float32),
              policy_weight=np.ones((b,), np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("data,model", MESHES)
def test_train_step_with_sharded_params_equals_replicated(data, model):
  fns, params = _model()
  opt = step_lib.make_optimizer(OPTIM, total_steps=10)
  kw = dict(loss_weights={"policy": 1.0, "value": 0.5},
            prepare_fn=_search_prepare(fns))
  loss_fn = step_lib.supervised_loss_fn(fns.apply)
  # The reference: replicated parameters on a 'data' mesh of the same size
  # (same per-device batches and keys).
  ref_mesh = step_lib.make_mesh(data)
  ref_step = step_lib.make_train_step(loss_fn, opt, ref_mesh, **kw)
  ref_state = step_lib.replicate(step_lib.init_state(params, opt, 0), ref_mesh)
  ref_state, ref_metrics = ref_step(
      ref_state, step_lib.shard_batch(_batch(), ref_mesh), jax.random.key(3))

  mesh = sharding.make_mesh(data=data, model=model)
  specs = sharding.param_specs(params, mesh=mesh)
  state = step_lib.shard_state(step_lib.init_state(params, opt, 0), mesh, opt,
                               specs)
  train_step = step_lib.make_train_step(loss_fn, opt, mesh, param_specs=specs,
                                        **kw)
  state, metrics = train_step(state, step_lib.shard_batch(_batch(), mesh),
                              jax.random.key(3))
  ref_metrics, metrics = jax.device_get((ref_metrics, metrics))
  assert set(metrics) == set(ref_metrics)
  for k in metrics:
    np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=TOL,
                               atol=TOL, err_msg=k)
  _close(jax.device_get(state.params), jax.device_get(ref_state.params),
         "params")
  # The updated parameters and Adam moments keep their shardings.
  want = step_lib.state_specs(state, opt, specs)
  jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(
      NamedSharding(mesh, s), x.ndim) or pytest.fail(f"{x.sharding} != {s}"),
      state, want, is_leaf=lambda s: isinstance(s, P))
  assert sharding.is_sharded(state.params["layers"][0]["mlp"]["up_proj"][
      "kernel"])


# ---------------------------------------------------------------- errors


def test_bad_mesh_sizes_are_clear_errors():
  with pytest.raises(ValueError, match="needs 16 devices but only 8"):
    sharding.make_mesh(data=8, model=2)
  with pytest.raises(ValueError, match="positive int"):
    sharding.make_mesh(data=0)
  config = config_lib.default_config()
  config.parallel.model = 3
  with pytest.raises(ValueError, match="parallel.model=3.*num_heads"):
    config_lib.validate_config(config)
  config.model.num_heads, config.model.num_kv_heads = 6, 3
  config_lib.validate_config(config)  # divides the heads ...
  with pytest.raises(ValueError, match="parallel.model=3.*divide the 8"):
    config_lib.validate_parallel(config, 8)  # ... but not the devices
  config.parallel.model = 2
  config.model.num_heads, config.model.num_kv_heads = 4, 2
  config.batch_size = 6
  with pytest.raises(ValueError, match="batch_size=6.*4 devices"):
    config_lib.validate_parallel(config, 8)
  config.batch_size, config.search.replay_size = 8, 16
  with pytest.raises(ValueError, match="replay"):
    config_lib.validate_parallel(config, 8)
  # ConfigDict itself refuses a value of the wrong type, naming the key.
  with pytest.raises(TypeError, match="fsdp"):
    config.parallel.fsdp = "yes"
