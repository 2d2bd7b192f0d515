"""The model as the trainer sees it: a pure dict of parameters plus functions.

Parameters are kept as a plain nested dict of arrays (``nnx.to_pure_dict``):
optax, orbax and ``shard_map`` all handle it without knowing about NNX, and a
checkpoint is readable without the model code. :class:`ModelFns` turns the
dict back into an ``nnx.State`` for ``models.forward`` and the searches.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

import models

PyTree = Any


@dataclasses.dataclass(frozen=True)
class ModelFns:
  """A split model: static structure and pure functions of the parameters."""
  config: models.ModelConfig
  graphdef: nnx.GraphDef
  abstract_state: nnx.State  # ShapeDtypeStruct leaves

  def state(self, params: PyTree) -> nnx.State:
    """The ``nnx.State`` for ``models.forward`` from a pure parameter dict."""
    state = jax.tree.map(lambda x: x, self.abstract_state)
    nnx.replace_by_pure_dict(state, params)
    return state

  def apply(self, params: PyTree, tokens, positions, token_mask=None,
            attention_mask=None) -> models.ModelOutput:
    """``models.forward`` on pure parameters; tokens/positions ``[B, T]``,
    optional ``attention_mask [B, T, T]`` (default causal)."""
    return models.forward(self.graphdef, self.state(params), tokens,
                          positions, token_mask=token_mask,
                          attention_mask=attention_mask)

  def param_shapes(self) -> dict[str, tuple[int, ...]]:
    """Flat ``{'a/b/c': shape}`` of every parameter."""
    pure = nnx.to_pure_dict(self.abstract_state)
    return flat_shapes(pure)


def abstract_params(fns: ModelFns) -> PyTree:
  """The pure parameter dict of ``fns``'s model as ``ShapeDtypeStruct``s."""
  return nnx.to_pure_dict(fns.abstract_state)


def flat_shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
  """``{'path/to/leaf': shape}`` for every array leaf of ``tree``."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(
        p, "name", p)))) for p in path)
    out[key] = tuple(jnp.shape(leaf))
  return out


def param_dtype(config: ml_collections.ConfigDict) -> str:
  """``model.param_dtype``; ``""``: float32 for the native model, the
  computation dtype (``model.dtype``) for a loaded checkpoint."""
  m = config.model
  if m.get("param_dtype", ""):
    return m.param_dtype
  return m.dtype if m.get("checkpoint", "") else "float32"


def model_config(config: ml_collections.ConfigDict,
                 vocab_size: int) -> models.ModelConfig:
  """``models.ModelConfig`` from the ``model`` section of a run config.

  ``model.vocab_size == 0`` takes the task tokenizer's ``vocab_size``. With
  ``model.checkpoint`` set, the checkpoint's (:func:`pretrained_config`).
  """
  if config.model.get("checkpoint", ""):
    return pretrained_config(config)
  m = config.model
  if m.vocab_size and m.vocab_size < vocab_size:
    raise ValueError(
        f"model.vocab_size={m.vocab_size} is smaller than the task's "
        f"vocabulary ({vocab_size}); set --config.model.vocab_size=0 to use "
        "the task's.")
  return models.ModelConfig(
      vocab_size=int(m.vocab_size or vocab_size), num_layers=m.num_layers,
      d_model=m.d_model, num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
      head_dim=m.head_dim, mlp_dim=m.mlp_dim, max_seq_len=m.max_seq_len,
      dtype=m.dtype, param_dtype=param_dtype(config))


def pretrained_config(config: ml_collections.ConfigDict
                      ) -> models.ModelConfig:
  """The ``models.ModelConfig`` of ``model.checkpoint`` (its
  ``config.json``) with the run's dtypes and ``model.max_seq_len`` context.

  Raises:
    models.hf.CheckpointError: no checkpoint there, an unsupported
      architecture, or a context beyond the checkpoint's.
  """
  from models import hf  # pylint: disable=import-outside-toplevel
  m = config.model
  raw = hf.read_config(m.checkpoint)
  limit = raw.get("max_position_embeddings")
  if limit and m.max_seq_len > int(limit):
    raise hf.CheckpointError(
        f"model.max_seq_len={m.max_seq_len} is longer than the context "
        f"{m.checkpoint} was trained for (max_position_embeddings={limit}); "
        f"set --config.model.max_seq_len to at most {limit}.")
  return hf.model_config(raw, dtype=m.dtype, param_dtype=param_dtype(config),
                         max_seq_len=m.max_seq_len)


def load_model(cfg: models.ModelConfig, path: str, *, shardings=None,
               abstract: bool = False) -> tuple[ModelFns, PyTree]:
  """The model of ``cfg`` with the weights of Hugging Face checkpoint
  ``path`` (:func:`models.hf.load_params`).

  Args:
    cfg: :func:`pretrained_config` of the run.
    path: the checkpoint directory.
    shardings: where each parameter goes (a pytree of ``Sharding`` shaped
      like the parameters); None: the default device.
    abstract: return ``jax.ShapeDtypeStruct`` parameters and read nothing
      (a run that restores its own trained parameters).
  """
  from models import hf  # pylint: disable=import-outside-toplevel
  model = nnx.eval_shape(lambda: models.Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  abstract_state = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  fns = ModelFns(cfg, graphdef, abstract_state)
  if abstract:
    return fns, nnx.to_pure_dict(abstract_state)
  return fns, hf.load_params(path, cfg, shardings=shardings)


def create_model(cfg: models.ModelConfig, seed: int) -> tuple[ModelFns, PyTree]:
  """Builds the transformer; returns its functions and initial parameters."""
  model = models.Transformer(cfg, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          state)
  return ModelFns(cfg, graphdef, abstract), nnx.to_pure_dict(state)
