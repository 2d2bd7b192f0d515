"""One jitted, data-parallel training step over a ``data`` mesh axis.

Parameters and optimizer state are replicated; the batch is split over the
``data`` axis with ``jax.shard_map``. Each device computes its share of the
loss and gradients, gradients are averaged with ``lax.pmean`` and every device
applies the same optax update, so the replicas never drift apart.

Losses are :class:`train.losses.LossTerm` sums: each is divided by its count
summed over all devices (times the number of devices, undone by ``pmean``),
so the step is exactly the step of the global batch on one device.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from models import sharding
from train import losses as losses_lib

Array = chex.Array
PyTree = Any
DATA = "data"

# loss_fn(params, batch, key) -> {name: LossTerm}; runs on one device's shard.
LossFn = Callable[[PyTree, Mapping[str, Array], Array],
                  Mapping[str, losses_lib.LossTerm]]


@chex.dataclass(frozen=True)
class TrainState:
  """Everything a step updates (and a checkpoint stores)."""
  step: Array  # [] int32, optimizer steps taken
  params: PyTree  # pure dict of arrays, replicated
  opt_state: PyTree  # optax state, replicated
  rng: Array  # [2] uint32, raw key data of the run's random stream


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh ``('data',)`` over the first ``num_devices`` devices (all)."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise ValueError(f"Asked for {n} devices but only {len(devices)} exist.")
  return jax.make_mesh((n,), (DATA,), devices=devices[:n])


def make_optimizer(optim: ml_collections.ConfigDict, total_steps: int, *,
                   warm_steps: int = 0, search_learning_rate: float = 0.0
                   ) -> optax.GradientTransformation:
  """AdamW with linear warmup, cosine decay and global-norm clipping
  (schedule: :func:`learning_rate_schedule`)."""
  schedule = learning_rate_schedule(optim, total_steps, warm_steps=warm_steps,
                                    search_learning_rate=search_learning_rate)
  parts = []
  if optim.grad_clip:
    parts.append(optax.clip_by_global_norm(optim.grad_clip))
  parts.append(optax.adamw(schedule, b1=optim.b1, b2=optim.b2,
                           weight_decay=optim.weight_decay))
  return optax.chain(*parts)


def learning_rate_schedule(optim, total_steps: int, *, warm_steps: int = 0,
                           search_learning_rate: float = 0.0):
  """Learning rate per optimizer update.

  With ``search_learning_rate == 0``: one warmup + cosine decay over all
  ``total_steps``. Otherwise the warmup + cosine decay spans the
  ``warm_steps`` warm-start updates only and the search-and-learn updates
  after them run at the constant ``search_learning_rate``; so the warm start
  does not depend on how many search steps follow (a warm-start checkpoint
  can be continued into any number of search steps).
  """
  if search_learning_rate and warm_steps:
    return optax.join_schedules(
        [learning_rate_schedule(optim, warm_steps),
         optax.constant_schedule(float(search_learning_rate))], [warm_steps])
  if search_learning_rate:
    return optax.constant_schedule(float(search_learning_rate))
  warmup = max(0, min(int(optim.warmup_steps), total_steps - 1))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0 if warmup else optim.learning_rate,
      peak_value=optim.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=0.1 * optim.learning_rate)


def init_state(params: PyTree, optimizer: optax.GradientTransformation,
               seed: int) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params),
                    rng=jax.random.key_data(jax.random.key(seed)))


def _grads_fn(loss_fn: LossFn, loss_weights, num_devices,
              side_loss_fn: LossFn | None = None):
  """``grads(params, batch, key, side) -> (loss, means, grads)`` of this
  device's batch (inside ``shard_map``), before averaging over devices."""

  def grads(params, batch, key, side=None):
    def total_loss(params):
      terms = loss_fn(params, batch, key)
      if side_loss_fn is not None:
        terms = {**terms, **side_loss_fn(params, side, key)}
      means = {}
      for name, term in terms.items():
        count = lax.psum(lax.stop_gradient(term.count), DATA)
        # pmean over devices of (n * local_sum / global_count) is the mean.
        means[name] = num_devices * term.total / jnp.maximum(count, 1.0)
      loss = sum(loss_weights.get(name, 0.0) * m for name, m in means.items())
      return loss, means

    # check_vma=False (see _shard_and_jit): each device's gradient is its
    # own, with no implicit psum in the transpose; the caller averages them.
    (loss, means), g = jax.value_and_grad(total_loss, has_aux=True)(params)
    return loss, means, g

  return grads


def _apply(optimizer, state: TrainState, grads, loss, means):
  """The optax update of ``state`` by averaged ``grads``, and its metrics."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
             "param_norm": optax.tree.norm(params)}
  metrics.update({f"loss/{k}": v for k, v in means.items()})
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), metrics


def _update_fn(loss_fn: LossFn, optimizer, loss_weights, num_devices,
               side_loss_fn: LossFn | None = None):
  """One optimizer update on this device's batch (inside ``shard_map``);
  with ``side_loss_fn``, ``update(state, batch, key, side)`` also adds its
  terms on ``side``."""
  grads_fn = _grads_fn(loss_fn, loss_weights, num_devices, side_loss_fn)

  def update(state: TrainState, batch, key, side=None):
    loss, means, grads = grads_fn(state.params, batch, key, side)
    grads = lax.pmean(grads, DATA)
    loss = lax.pmean(loss, DATA)
    means = lax.pmean(means, DATA)
    return _apply(optimizer, state, grads, loss, means)

  return update


def _shard_and_jit(per_device, mesh, in_specs, out_specs, donate):
  # Searches and task code inside are written without varying-axis
  # annotations: check_vma=False.
  sharded = jax.shard_map(per_device, mesh=mesh, in_specs=in_specs,
                          out_specs=out_specs, check_vma=False)
  return jax.jit(sharded, donate_argnums=donate)


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, *,
                    loss_weights: Mapping[str, float],
                    prepare_fn: Callable | None = None,
                    side_loss_fn: LossFn | None = None,
                    param_specs: PyTree | None = None,
                    reference: bool = False):
  """Builds ``train_step(state, batch, key) -> (state, metrics)``, jitted.

  Args:
    loss_fn: ``loss_fn(params, batch, key) -> {name: LossTerm}`` on one
      device's shard of the batch; ``key`` is already distinct per device.
    optimizer: optax transformation.
    mesh: mesh with a ``data`` axis; every batch leaf's leading dimension
      must be divisible by its size.
    loss_weights: weight of each named term in the total loss; a term
      without a weight is logged but not trained on.
    prepare_fn: optional ``prepare_fn(params, batch, key) -> (batch, stats)``
      run on each device's shard before the loss and outside the gradient
      (e.g. the search that makes the targets); ``stats`` is a dict of
      scalars, averaged over devices into the metrics.
    side_loss_fn: optional loss over a second batch: the step is then
      ``train_step(state, batch, key, side)`` and the total also weighs
      ``side_loss_fn(params, side, key)``'s terms (their names must differ
      from ``loss_fn``'s). ``side`` (split over the ``data`` axis like
      ``batch``) reaches it as it is, without ``prepare_fn``.
    param_specs: ``PartitionSpec`` per parameter
      (:func:`models.sharding.param_specs`) for parameters sharded over the
      mesh (FSDP over ``data``, tensor parallelism over ``model``; see
      :func:`make_sharded_train_step`); None: replicated parameters.
    reference: the step takes a last argument, a frozen parameter tree
      (replicated; e.g. the reference policy of a preference loss) that
      ``prepare_fn`` gets as ``prepare_fn(params, batch, key, reference)``.

  Returns:
    The jitted step. ``metrics`` holds ``loss``, each term's global mean
    (``loss/<name>``), ``grad_norm`` and ``param_norm``, replicated scalars.
  """
  if param_specs is not None:
    if reference:
      raise ValueError("A frozen reference policy is not supported with "
                       "sharded parameters yet.")
    return make_sharded_train_step(
        loss_fn, optimizer, mesh, loss_weights=loss_weights,
        prepare_fn=prepare_fn, side_loss_fn=side_loss_fn,
        param_specs=param_specs)
  _check_reference(reference, prepare_fn)
  update = _update_fn(loss_fn, optimizer, loss_weights, mesh.shape[DATA],
                      side_loss_fn)

  def per_device(state: TrainState, batch, key, *extra):
    side, frozen = _extra_args(extra, side_loss_fn, reference)
    key = jax.random.fold_in(key, lax.axis_index(DATA))
    stats = {}
    if prepare_fn is not None:
      prepare_key, key = jax.random.split(key)
      batch, stats = prepare_fn(state.params, batch, prepare_key, *frozen)
      batch = lax.stop_gradient(batch)
    new_state, metrics = update(state, batch, key, side)
    metrics.update(lax.pmean(stats, DATA))
    return new_state, metrics

  specs = (P(), P(DATA), P()) + _extra_specs(side_loss_fn, reference)
  return _shard_and_jit(per_device, mesh, specs, (P(), P()), (0,))


def _check_reference(reference: bool, prepare_fn) -> None:
  if reference and prepare_fn is None:
    raise ValueError("A reference parameter tree is read by prepare_fn; "
                     "pass one.")


def _extra_args(extra, side_loss_fn, reference):
  """``(side, (reference,) or ())`` from a step's trailing arguments."""
  extra = list(extra)
  side = extra.pop(0) if side_loss_fn is not None else None
  return side, tuple(extra[:1]) if reference else ()


def _extra_specs(side_loss_fn, reference):
  return (((P(DATA),) if side_loss_fn else ())
          + ((P(),) if reference else ()))


# ---------------------------------------------------------------------------
# Sharded parameters (FSDP over 'data', tensor parallelism over 'model').


def _is_spec(x) -> bool:
  return isinstance(x, P)


def state_specs(state: TrainState, optimizer: optax.GradientTransformation,
                param_specs: PyTree) -> TrainState:
  """``PartitionSpec`` of every leaf of ``state``: parameters and the
  optimizer's per-parameter statistics as ``param_specs``, the rest
  (step, counts, random state) replicated."""
  opt = optax.tree_map_params(
      optimizer, lambda _, spec: spec, state.opt_state, param_specs,
      transform_non_params=lambda _: P(), is_leaf=_is_spec)
  return TrainState(step=P(), params=param_specs, opt_state=opt, rng=P())


def shard_state(state: TrainState, mesh: jax.sharding.Mesh,
                optimizer: optax.GradientTransformation,
                param_specs: PyTree) -> TrainState:
  """Places ``state`` on ``mesh`` as :func:`state_specs` says."""
  specs = state_specs(state, optimizer, param_specs)
  return jax.tree.map(
      lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec)), state,
      specs, is_leaf=_is_spec)


def _gather_params(params, param_specs):
  """Each device's FSDP shards all-gathered over 'data' (inside a
  ``shard_map`` manual over 'data'); 'model' shards stay with GSPMD."""
  def gather(x, spec):
    dim = sharding.data_dim(spec)
    return x if dim is None else lax.all_gather(x, DATA, axis=dim, tiled=True)
  return jax.tree.map(gather, params, param_specs, is_leaf=_is_spec)


def _reduce_grads(grads, param_specs):
  """The mean over devices of full-size gradients, each device keeping its
  own FSDP shard (a reduce-scatter); replicated leaves are all-reduced."""
  n = lax.psum(1, DATA)

  def reduce(g, spec):
    dim = sharding.data_dim(spec)
    if dim is None:
      return lax.pmean(g, DATA)
    return lax.psum_scatter(g, DATA, scatter_dimension=dim, tiled=True) / n
  return jax.tree.map(reduce, grads, param_specs, is_leaf=_is_spec)


def make_sharded_train_step(loss_fn: LossFn,
                            optimizer: optax.GradientTransformation,
                            mesh: jax.sharding.Mesh, *,
                            loss_weights: Mapping[str, float],
                            param_specs: PyTree,
                            prepare_fn: Callable | None = None,
                            side_loss_fn: LossFn | None = None):
  """:func:`make_train_step` for parameters sharded by ``param_specs``.

  The state must be placed by :func:`shard_state`. The per-device part (the
  search of ``prepare_fn``, the loss and its gradients) is a ``shard_map``
  manual over ``data`` only: each device all-gathers the FSDP shards of the
  parameters, runs exactly the per-device code of the replicated step (same
  keys, same loss normalisation) and reduce-scatters the gradients back to
  its shards; the ``model`` axis is left to GSPMD (tensor parallelism). The
  optax update then runs on the sharded parameters and optimizer state
  under ``jit`` (GSPMD; global-norm clipping sees the whole gradient), and
  the new state keeps its shardings. So the step equals the replicated step
  on a ``data`` mesh of the same size, up to float reassociation.
  """
  n = mesh.shape[DATA]
  grads_fn = _grads_fn(loss_fn, loss_weights, n, side_loss_fn)
  manual = jax.tree.map(sharding.data_only, param_specs, is_leaf=_is_spec)

  def per_device(params, batch, key, side=None):
    full = _gather_params(params, param_specs)
    key = jax.random.fold_in(key, lax.axis_index(DATA))
    stats = {}
    if prepare_fn is not None:
      prepare_key, key = jax.random.split(key)
      batch, stats = prepare_fn(full, batch, prepare_key)
      batch = lax.stop_gradient(batch)
    loss, means, grads = grads_fn(full, batch, key, side)
    return (_reduce_grads(grads, param_specs), lax.pmean(loss, DATA),
            lax.pmean(means, DATA), lax.pmean(stats, DATA))

  extra = (P(DATA),) if side_loss_fn else ()
  grads_of = jax.shard_map(
      per_device, mesh=mesh, in_specs=(manual, P(DATA), P()) + extra,
      out_specs=(manual, P(), P(), P()), axis_names={DATA}, check_vma=False)

  def train_step(state: TrainState, batch, key, *side):
    grads, loss, means, stats = grads_of(state.params, batch, key, *side)
    new_state, metrics = _apply(optimizer, state, grads, loss, means)
    specs = state_specs(new_state, optimizer, param_specs)
    new_state = jax.tree.map(
        lambda x, spec: lax.with_sharding_constraint(
            x, NamedSharding(mesh, spec)), new_state, specs, is_leaf=_is_spec)
    metrics.update(stats)
    return new_state, metrics

  return jax.jit(train_step, donate_argnums=(0,))


# ---------------------------------------------------------------------------
# Replay buffer.


def _replay_specs():
  return {"data": P(DATA), "size": P(), "next": P()}


def init_replay(prepare_fn: Callable, params: PyTree,
                example_batch: Mapping[str, np.ndarray],
                mesh: jax.sharding.Mesh, *, size: int) -> dict:
  """An empty on-device replay buffer for the rows ``prepare_fn`` makes.

  The buffer is ``{'data': rows [size, ...] split over the 'data' axis,
  'size': rows filled per device, 'next': next slot per device}``; each
  device fills and samples its own ``size / num_devices`` rows (a circular
  buffer: the oldest rows are overwritten first). It is an ordinary pytree
  of arrays, saved in checkpoints with the train state.

  Args:
    prepare_fn: ``prepare_fn(params, batch, key) -> (rows, stats)`` on one
      device's shard.
    params: parameters (arrays or ``ShapeDtypeStruct``) for shapes only.
    example_batch: this process's batch (numpy, for shapes only).
    mesh: mesh with a ``data`` axis.
    size: global rows; a multiple of the number of devices and at least the
      global batch size.
  """
  n = mesh.shape[DATA]
  global_rows = next(iter(example_batch.values())).shape[0] * \
      jax.process_count()
  if size % n or size < global_rows:
    raise ValueError(
        f"search.replay_size={size} must be a multiple of the {n} devices "
        f"and at least the batch size {global_rows}.")
  local = {k: jax.ShapeDtypeStruct((v.shape[0] * jax.process_count() // n,)
                                   + v.shape[1:], v.dtype)
           for k, v in example_batch.items()}
  rows, _ = jax.eval_shape(prepare_fn, params, local,
                           jax.random.key(0))
  sharding = NamedSharding(mesh, P(DATA))

  def zeros(x):
    shape = (size,) + x.shape[1:]
    return jax.jit(lambda: jnp.zeros(shape, x.dtype),
                   out_shardings=sharding)()
  data = jax.tree.map(zeros, rows)
  return {"data": data,
          "size": replicate(jnp.zeros((), jnp.int32), mesh),
          "next": replicate(jnp.zeros((), jnp.int32), mesh)}


def make_replay_train_step(loss_fn: LossFn,
                           optimizer: optax.GradientTransformation,
                           mesh: jax.sharding.Mesh, *,
                           loss_weights: Mapping[str, float],
                           prepare_fn: Callable, updates: int,
                           side_loss_fn: LossFn | None = None,
                           reference: bool = False):
  """``step(state, replay, batch, key) -> (state, replay, metrics)``, jitted.

  ``prepare_fn`` (the search) turns each device's share of ``batch`` into
  rows that are written into its part of the replay buffer (see
  :func:`init_replay`); then ``updates`` optimizer updates each train on as
  many rows as the device's share of the batch, drawn uniformly with
  replacement from the filled part of its buffer. With ``side_loss_fn``
  (as in :func:`make_train_step`) the step is ``step(state, replay, batch,
  key, side)``: ``side`` is not stored, every update's loss gets it as it
  is. Metrics are the mean over the updates (plus ``prepare_fn``'s stats
  and ``replay/size``). ``reference``: as in :func:`make_train_step` (the
  last argument; what ``prepare_fn`` makes from it is stored with the
  rows).
  """
  if updates < 1:
    raise ValueError(f"search.updates_per_search={updates} must be >= 1.")
  update = _update_fn(loss_fn, optimizer, loss_weights, mesh.shape[DATA],
                      side_loss_fn)

  _check_reference(reference, prepare_fn)

  def per_device(state: TrainState, replay, batch, key, *extra):
    side, frozen = _extra_args(extra, side_loss_fn, reference)
    key = jax.random.fold_in(key, lax.axis_index(DATA))
    prepare_key, key = jax.random.split(key)
    rows, stats = prepare_fn(state.params, batch, prepare_key, *frozen)
    rows = lax.stop_gradient(rows)
    n_new = next(iter(jax.tree.leaves(rows))).shape[0]
    cap = next(iter(jax.tree.leaves(replay["data"]))).shape[0]
    slots = (replay["next"] + jnp.arange(n_new)) % cap
    data = jax.tree.map(lambda buf, x: buf.at[slots].set(x), replay["data"],
                        rows)
    filled = jnp.minimum(replay["size"] + n_new, cap)
    replay = {"data": data, "size": filled,
              "next": (replay["next"] + n_new) % cap}

    def one(state, key):
      sample_key, loss_key = jax.random.split(key)
      idx = jax.random.randint(sample_key, (n_new,), 0, filled)
      return update(state, jax.tree.map(lambda x: x[idx], data), loss_key,
                    side)

    state, metrics = lax.scan(one, state, jax.random.split(key, updates))
    metrics = jax.tree.map(lambda m: jnp.mean(m, 0), metrics)
    metrics.update(lax.pmean(stats, DATA))
    metrics["replay/size"] = lax.psum(filled, DATA).astype(jnp.float32)
    return state, replay, metrics

  specs = (P(), _replay_specs(), P(DATA), P()) + _extra_specs(side_loss_fn,
                                                              reference)
  return _shard_and_jit(per_device, mesh, specs,
                        (P(), _replay_specs(), P()), (0, 1))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh
                ) -> dict[str, jax.Array]:
  """Places this process's rows of the global batch on the ``data`` axis.

  With one process, ``batch`` is the global batch; with several, each process
  passes its own rows and the global array is assembled across hosts.
  """
  sharding = NamedSharding(mesh, P(DATA))
  n = mesh.shape[DATA]
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    global_rows = v.shape[0] * jax.process_count()
    if global_rows % n:
      raise ValueError(
          f"Global batch size {global_rows} (batch leaf {k!r}) is not "
          f"divisible by the {n} devices of the 'data' axis; set "
          f"--config.batch_size to a multiple of {n}.")
    if jax.process_count() == 1:
      out[k] = jax.device_put(v, sharding)
    else:
      out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out


def replicate(tree: PyTree, mesh: jax.sharding.Mesh) -> PyTree:
  """Puts every leaf on all devices of ``mesh`` (replicated)."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def supervised_loss_fn(apply_fn) -> LossFn:
  """LM loss on answer tokens plus value regression, for the warm start.

  ``apply_fn(params, tokens, positions, token_mask) -> ModelOutput``. The batch
  holds ``tokens [B, T]`` int32, ``token_mask [B, T]`` (1 on real tokens),
  ``loss_mask [B, T]`` (1 on answer tokens to predict), ``value_mask [B, T]``
  (positions whose value is regressed), ``value_target [B]`` (or per
  token, ``[B, T]``) and
  ``policy_weight [B]`` (0 for corrupted traces that only teach the value).
  """
  def loss_fn(params, batch, key):
    del key  # deterministic
    tokens = batch["tokens"]
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    out = apply_fn(params, tokens, positions, batch["token_mask"] > 0)
    lm_mask = batch["loss_mask"][:, 1:] * batch["policy_weight"][:, None]
    policy = losses_lib.lm_loss(out.logits[:, :-1], tokens[:, 1:], lm_mask)
    target = batch["value_target"]
    if target.ndim == 1:  # one target per trace
      target = jnp.broadcast_to(target[:, None], (b, t))
    value = losses_lib.value_loss(out.value, target, batch["value_mask"])
    return {"policy": policy, "value": value}
  return loss_fn
