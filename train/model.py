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


def flat_shapes(tree: PyTree) -> dict[str, tuple[int, ...]]:
  """``{'path/to/leaf': shape}`` for every array leaf of ``tree``."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(
        p, "name", p)))) for p in path)
    out[key] = tuple(jnp.shape(leaf))
  return out


def model_config(config: ml_collections.ConfigDict,
                 vocab_size: int) -> models.ModelConfig:
  """``models.ModelConfig`` from the ``model`` section of a run config.

  ``model.vocab_size == 0`` takes the task tokenizer's ``vocab_size``.
  """
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
      dtype=m.dtype)


def create_model(cfg: models.ModelConfig, seed: int) -> tuple[ModelFns, PyTree]:
  """Builds the transformer; returns its functions and initial parameters."""
  model = models.Transformer(cfg, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          state)
  return ModelFns(cfg, graphdef, abstract), nnx.to_pure_dict(state)
