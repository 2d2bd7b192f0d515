"""Parameter and KV-cache sharding: FSDP over ``data``, tensor parallelism
over ``model``.

A mesh has two axes, ``('data', 'model')`` (:func:`make_mesh`). Parameters
are placed by name (the Llama-style names of :mod:`models.transformer`):

* Tensor parallelism (Megatron layout) over ``model``: the output features
  of ``q/k/v/gate/up_proj.kernel`` ``[D, out]`` (and of ``q/k/v_proj.bias``),
  the input features of ``o/down_proj.kernel`` ``[in, D]``, and the
  vocabulary of ``embed_tokens.embedding`` ``[V, D]`` and ``lm_head.kernel``
  ``[D, V]``.
* FSDP over ``data``: the other (model-width ``D``) dimension of the same
  matrices. Inside a data-parallel step each device all-gathers them before
  use and reduce-scatters their gradients (``train.step``).
* Everything no rule names (norm scales, ``q_norm``/``k_norm``, the value
  head, biases of ``o_proj``/``down_proj``, parameters of families added
  later) is replicated: a safe default, never a wrong layout.

A dimension that the axis size does not divide is replicated instead (e.g. a
vocabulary of 50257 over ``model=2``): rules never fail on a shape.

The search's KV memory follows the batch: the tree's KV arena
``[B, N, L, S, Hkv, Dh]``, the prompt cache and a decoder's row caches
``[L, B, C, Hkv, Dh]`` are constrained to batch over ``data`` and KV heads
over ``model`` (:func:`constrain_kv`) when the code runs under a mesh
(``jax.set_mesh``; :func:`mesh_context` sets it from sharded parameters).

Example::

  mesh = sharding.make_mesh(data=4, model=2)
  specs = sharding.param_specs(params, mesh=mesh)  # FSDP 4 x TP 2
  params = sharding.shard_params(params, mesh, specs)
  print(sharding.describe(params))
  out = tsearch.lm_search(graphdef, fns.state(params), task, prompts, ...)
"""
from __future__ import annotations

import contextlib
import functools
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

PyTree = Any
DATA = "data"
MODEL = "model"

# (path pattern, which dim goes over 'model', which over 'data'); dims are
# negative indices so that stacked (scanned) layers would keep the rule.
# None: that axis does not shard this parameter.
_RULES = (
    (r"(^|/)(q|k|v|gate|up)_proj/kernel$", -1, -2),
    (r"(^|/)(o|down)_proj/kernel$", -2, -1),
    (r"(^|/)embed_tokens/embedding$", -2, -1),
    (r"(^|/)lm_head/kernel$", -1, -2),
    (r"(^|/)(q|k|v)_proj/bias$", -1, None),
)


def make_mesh(*, data: int, model: int = 1, devices=None
              ) -> jax.sharding.Mesh:
  """A ``('data', 'model')`` mesh of ``data * model`` devices (Auto axes).

  Args:
    data: size of the ``data`` axis (batch, and FSDP of the parameters).
    model: size of the ``model`` axis (tensor parallelism); 1: none.
    devices: the devices to use (default: the first ``data * model`` of
      ``jax.devices()``).

  Raises:
    ValueError: a size below 1, or more devices asked for than exist.
  """
  for name, n in (("data", data), ("model", model)):
    if not isinstance(n, (int, np.integer)) or n < 1:
      raise ValueError(f"Mesh axis {name!r} must have a positive int size, "
                       f"got {n!r}.")
  devices = list(jax.devices() if devices is None else devices)
  if data * model > len(devices):
    raise ValueError(
        f"A mesh of data={data} x model={model} needs {data * model} "
        f"devices but only {len(devices)} exist; lower parallel.model (or the "
        "data size) so that data * model divides the devices.")
  return jax.make_mesh((data, model), (DATA, MODEL),
                       axis_types=(AxisType.Auto, AxisType.Auto),
                       devices=devices[:data * model])


def path_name(path) -> str:
  """``'layers/0/self_attn/q_proj/kernel'`` from a ``jax.tree_util`` path."""
  parts = []
  for p in path:
    for attr in ("key", "idx", "name"):
      if hasattr(p, attr):
        parts.append(str(getattr(p, attr)))
        break
    else:
      parts.append(str(p))
  return "/".join(parts)


def _axis_size(mesh, name) -> int:
  return int(dict(mesh.shape).get(name, 1))


def leaf_spec(name: str, shape, *, mesh, fsdp: bool = True,
              tensor_parallel: bool = True) -> P:
  """The :class:`PartitionSpec` of one parameter (see the module docstring)."""
  spec = [None] * len(shape)
  for pattern, model_dim, data_dim in _RULES:
    if not re.search(pattern, name):
      continue
    for on, axis, dim in ((tensor_parallel, MODEL, model_dim),
                          (fsdp, DATA, data_dim)):
      n = _axis_size(mesh, axis)
      if (on and dim is not None and len(shape) >= -dim and n > 1
          and shape[dim] % n == 0):
        spec[dim] = axis
    break
  return P(*spec)


def param_specs(params: PyTree, *, mesh, fsdp: bool = True,
                tensor_parallel: bool = True) -> PyTree:
  """A pytree of :class:`PartitionSpec`, one per parameter of ``params``.

  Args:
    params: a pure parameter dict (``nnx.to_pure_dict``); leaves may be
      arrays or ``jax.ShapeDtypeStruct``.
    mesh: a mesh (or abstract mesh) with ``data`` and/or ``model`` axes; an
      axis it lacks, or of size 1, shards nothing.
    fsdp: shard the model-width dimension of the large matrices over
      ``data``.
    tensor_parallel: shard heads / MLP features / vocabulary over ``model``.

  Returns:
    Specs with the structure of ``params``. Unnamed parameters and any
    dimension the axis size does not divide are replicated.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, x: leaf_spec(path_name(path), np.shape(x), mesh=mesh,
                                fsdp=fsdp, tensor_parallel=tensor_parallel),
      params)


def named_shardings(mesh, specs: PyTree) -> PyTree:
  """``NamedSharding(mesh, spec)`` for every spec of ``specs``."""
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda s: isinstance(s, P))


def shard_params(params: PyTree, mesh, specs: PyTree) -> PyTree:
  """Places ``params`` on ``mesh`` as ``specs`` say (``jax.device_put``).

  Each leaf is transferred on its own from wherever it lies (host numpy or
  device arrays), so no second copy of the whole model is made here.
  """
  return jax.tree.map(lambda x, s: jax.device_put(x, s), params,
                      named_shardings(mesh, specs))


def is_sharded(x) -> bool:
  """A ``jax.Array`` whose shards are smaller than the whole array."""
  sharding = getattr(x, "sharding", None)
  if sharding is None or isinstance(x, jax.core.Tracer):
    return False
  return tuple(sharding.shard_shape(x.shape)) != tuple(x.shape)


def describe(params: PyTree) -> str:
  """A text table of each parameter's shape, spec and per-device shard."""
  rows = [("parameter", "shape", "spec", "shard")]
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    sharding = getattr(x, "sharding", None)
    spec = getattr(sharding, "spec", None)
    shard = (sharding.shard_shape(x.shape) if sharding is not None
             and not isinstance(x, jax.core.Tracer) else np.shape(x))
    rows.append((path_name(path), str(tuple(np.shape(x))),
                 "-" if spec is None else str(tuple(spec)), str(tuple(shard))))
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                   for r in rows)


def data_only(spec: P) -> P:
  """``spec`` with every axis but ``data`` dropped (a ``shard_map`` that is
  manual over ``data`` only names that axis)."""
  return P(*[DATA if (e == DATA or (isinstance(e, tuple) and DATA in e))
             else None for e in spec])


def data_dim(spec: P) -> int | None:
  """The dimension ``spec`` shards over ``data`` (FSDP), or None."""
  for i, e in enumerate(spec):
    if e == DATA or (isinstance(e, tuple) and DATA in e):
      return i
  return None


# ---------------------------------------------------------------------------
# Where the KV memory goes.


def _free_axes(mesh) -> set[str]:
  """Mesh axes a sharding constraint may name here (not manual)."""
  types = dict(zip(mesh.axis_names, mesh.axis_types))
  return {n for n, t in types.items() if t != AxisType.Manual}


def kv_spec(shape, *, batch_dim: int, heads_dim: int, mesh) -> P:
  """Batch over ``data``, KV heads over ``model`` (each only where the axis
  exists, is not manual in the current ``shard_map`` and divides the
  dimension; else that dimension is replicated)."""
  spec = [None] * len(shape)
  free = _free_axes(mesh)
  for axis, dim in ((DATA, batch_dim), (MODEL, heads_dim)):
    n = _axis_size(mesh, axis)
    if axis in free and n > 1 and shape[dim] % n == 0:
      spec[dim] = axis
  return P(*spec)


def constrain_kv(x, *, batch_dim: int, heads_dim: int):
  """``with_sharding_constraint`` of a KV cache to :func:`kv_spec` under the
  current mesh (``jax.set_mesh`` or a ``shard_map``); without one, ``x``."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = kv_spec(x.shape, batch_dim=batch_dim, heads_dim=heads_dim, mesh=mesh)
  if all(e is None for e in spec) and not _free_axes(mesh):
    return x  # fully manual: nothing left to say
  return jax.lax.with_sharding_constraint(x, spec)


def mesh_of(tree: PyTree):
  """The mesh of the first leaf that is really sharded over a
  ``NamedSharding`` (see :func:`is_sharded`), or None."""
  for x in jax.tree.leaves(tree):
    sharding = getattr(x, "sharding", None)
    if isinstance(sharding, NamedSharding) and is_sharded(x):
      return sharding.mesh
  return None


def mesh_context(tree: PyTree):
  """``jax.set_mesh`` of ``tree``'s mesh when its parameters are sharded and
  no mesh is set yet (so :func:`constrain_kv` shards the KV caches of a
  search over them); otherwise a context that does nothing."""
  if not jax.sharding.get_abstract_mesh().empty:
    return contextlib.nullcontext()
  mesh = mesh_of(tree)
  return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def on_params_mesh(fn):
  """Decorates ``fn(graphdef, state, ...)`` (e.g. a jitted search) to run
  under :func:`mesh_context` of ``state``."""
  @functools.wraps(fn)
  def wrapped(graphdef, state, *args, **kwargs):
    with mesh_context(state):
      return fn(graphdef, state, *args, **kwargs)
  return wrapped
