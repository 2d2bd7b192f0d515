"""The training loop: warm start, then search-and-learn; checkpoints, resume,
metrics. ``python -m train`` calls :func:`train`.

Every step's data and random key are functions of (seed, step), and the
checkpoint holds parameters, optimizer state, random state, replay buffer and
data position, so a run killed at any point and resumed from its last
checkpoint ends with the same parameters and metrics as one never stopped.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from train import checkpoint as ckpt_lib
from train import config as config_lib
from train import data as data_lib
from train import experimental
from train import metrics as metrics_lib
from train import model as model_lib
from train import step as step_lib

PyTree = Any


def maybe_initialize_distributed(num_processes: int | None = None,
                                 coordinator_address: str | None = None,
                                 process_id: int | None = None) -> None:
  """Calls ``jax.distributed.initialize()`` for multi-process launches.

  A launch is multi-process when ``num_processes > 1`` or when the usual
  cluster variables say so (``JAX_COORDINATOR_ADDRESS``, SLURM, TPU pods:
  ``jax.distributed.initialize`` auto-detects those). Values given here
  (the ``--num_processes``, ``--coordinator_address`` and ``--process_id``
  flags) override the detected ones. On CPU, processes talk over gloo.
  """
  env_multi = any(v in os.environ for v in (
      "JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "MEGASCALE_COORDINATOR_ADDRESS"))
  if (num_processes or 1) > 1 or env_multi:
    if process_id is not None and not 0 <= process_id < (num_processes or 1):
      raise ValueError(f"--process_id={process_id} must be in [0, "
                       f"{num_processes or 1}).")
    kwargs = {k: v for k, v in dict(
        coordinator_address=coordinator_address,
        num_processes=num_processes if (num_processes or 1) > 1 else None,
        process_id=process_id).items() if v is not None}
    jax.distributed.initialize(**kwargs)
    logging.info("Process %d of %d.", jax.process_index(), jax.process_count())


def setup_task(config: ml_collections.ConfigDict):
  """The run's task (``tsearch.get_task(task.name, **task.options)``),
  checked against the config."""
  # pylint: disable=import-outside-toplevel
  from tsearch.tasks import TEXT_TASK_NAMES, get_task
  options = config.task.options.to_dict()
  checkpoint = config.model.get("checkpoint", "")
  if config.task.name in TEXT_TASK_NAMES:
    if checkpoint:  # written in words over the checkpoint's own tokenizer
      options.setdefault("tokenizer_dir", checkpoint)
      options.setdefault("vocab_size",
                         model_lib.pretrained_config(config).vocab_size)
    return _checked(config, get_task(config.task.name, **options))
  task = get_task(config.task.name, **options)
  if checkpoint:
    task = over_checkpoint_tokenizer(config, task)
  return _checked(config, task)


def _checked(config, task):
  config_lib.validate_task(config, task)
  return task


def over_checkpoint_tokenizer(config: ml_collections.ConfigDict, task):
  """``task`` read and written with ``model.checkpoint``'s tokenizer
  (:func:`tsearch.tasks.text.over_tokenizer`), prompts as the model section
  says (``chat_template``, ``system_prompt``, ``prompt_prefix/suffix``)."""
  # pylint: disable=import-outside-toplevel
  import models
  from models import hf
  from tsearch.tasks import text
  m = config.model
  cfg = model_lib.pretrained_config(config)
  tokenizer = models.Tokenizer.from_dir(m.checkpoint)
  hf.check_vocab(cfg, tokenizer.vocab_size)
  try:
    return text.over_tokenizer(
        task, tokenizer, prefix=m.prompt_prefix, suffix=m.prompt_suffix,
        chat_template=bool(m.chat_template), system=m.system_prompt or None,
        max_context=int(m.max_seq_len))
  except ValueError as e:
    raise ValueError(
        f"{e} (task {task.name} over the tokenizer of {m.checkpoint}; the "
        f"model's context is --config.model.max_seq_len={m.max_seq_len}, the "
        "prompt's text model.chat_template, model.system_prompt, "
        "model.prompt_prefix and model.prompt_suffix)") from e


def build(config: ml_collections.ConfigDict, workdir: str, *,
          restoring: bool = False):
  """Task, model functions, initial state, optimizer and mesh of a run.

  ``restoring``: the state is about to be replaced by a checkpoint of the
  run, so a loaded model's weights are not read (its state is abstract:
  ``jax.ShapeDtypeStruct`` leaves placed as the run places them).
  """
  task = setup_task(config)
  max_len = config.data.max_len or data_lib.max_trace_length(task)
  if max_len > config.model.max_seq_len:
    raise ValueError(
        f"Traces of {task.name} need {max_len} positions but "
        f"model.max_seq_len={config.model.max_seq_len}; raise "
        f"--config.model.max_seq_len to at least {max_len}.")
  optimizer = step_lib.make_optimizer(config.optim, optimizer_steps(config),
                                      **_schedule_kw(config))
  mesh = parallel_mesh(config)
  if config.batch_size % mesh.shape[step_lib.DATA]:
    raise ValueError(
        f"batch_size={config.batch_size} is not divisible by the "
        f"{mesh.shape[step_lib.DATA]} devices; set --config.batch_size to a "
        f"multiple of {mesh.shape[step_lib.DATA]}.")
  if not config.model.get("checkpoint", ""):
    fns, params = model_lib.create_model(
        model_lib.model_config(config, task.vocab.size), seed=config.seed)
    return (task, fns, step_lib.init_state(params, optimizer, config.seed),
            optimizer, mesh, max_len)
  fns, params, shardings = load_pretrained(config, mesh, abstract=restoring)
  if not restoring:
    return (task, fns, step_lib.init_state(params, optimizer, config.seed),
            optimizer, mesh, max_len)
  state = jax.eval_shape(
      lambda p: step_lib.init_state(p, optimizer, config.seed), params)
  specs = step_lib.state_specs(state, optimizer, jax.tree.map(
      lambda s: s.spec, shardings))
  state = jax.tree.map(
      lambda x, spec: jax.ShapeDtypeStruct(
          x.shape, x.dtype, sharding=jax.sharding.NamedSharding(mesh, spec)),
      state, specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  return task, fns, state, optimizer, mesh, max_len


def load_pretrained(config: ml_collections.ConfigDict, mesh, *,
                    abstract: bool = False):
  """``(fns, params, shardings)`` of ``model.checkpoint``: each parameter
  read straight onto the devices that hold it in this run (replicated over
  ``mesh``, or as ``parallel`` shards it)."""
  cfg = model_lib.pretrained_config(config)
  fns, _ = model_lib.load_model(cfg, config.model.checkpoint, abstract=True)
  shapes = model_lib.abstract_params(fns)
  specs = parallel_specs(config, mesh, shapes)
  if specs is None:
    specs = jax.tree.map(lambda _: jax.sharding.PartitionSpec(), shapes)
  from models import sharding  # pylint: disable=import-outside-toplevel
  shardings = sharding.named_shardings(mesh, specs)
  if abstract:
    params = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        shapes, shardings)
    return fns, params, shardings
  _, params = model_lib.load_model(cfg, config.model.checkpoint,
                                   shardings=shardings)
  return fns, params, shardings


def describe_pretrained(config: ml_collections.ConfigDict, cfg) -> str:
  """One line on the loaded model (the model section's shape keys are not
  used with ``model.checkpoint``)."""
  return (f"model: {config.model.checkpoint} ({cfg.num_layers} layers, "
          f"d_model {cfg.d_model}, {cfg.num_heads}/{cfg.num_kv_heads} heads, "
          f"vocabulary {cfg.vocab_size}, context {cfg.max_seq_len}, compute "
          f"{cfg.dtype}, parameters {cfg.param_dtype}); the model section's "
          "shape keys are not used.")


def pretrained(config: ml_collections.ConfigDict):
  """``(task, fns, params)``: the run's task and ``model.checkpoint``'s own
  weights, no training state (evaluation without a workdir)."""
  task = setup_task(config)
  fns, params, _ = load_pretrained(config, parallel_mesh(config))
  return task, fns, params


def parallel_mesh(config: ml_collections.ConfigDict):
  """The run's mesh: ``('data',)`` over every device, or with sharded
  parameters (``parallel.model > 1`` or ``parallel.fsdp``) a ``('data',
  'model')`` mesh of ``devices / parallel.model`` x ``parallel.model``."""
  if not is_sharded_run(config):
    return step_lib.make_mesh()
  from models import sharding  # pylint: disable=import-outside-toplevel
  n = jax.device_count()
  config_lib.validate_parallel(config, n)
  return sharding.make_mesh(data=n // config.parallel.model,
                            model=config.parallel.model)


def is_sharded_run(config) -> bool:
  """Parameters are sharded (``parallel.model > 1`` or ``parallel.fsdp``)."""
  p = config.get("parallel")
  return p is not None and (p.model > 1 or bool(p.fsdp))


def parallel_specs(config, mesh, params):
  """``PartitionSpec`` per parameter of a sharded run
  (:func:`models.sharding.param_specs`); None when parameters are
  replicated."""
  if not is_sharded_run(config):
    return None
  from models import sharding  # pylint: disable=import-outside-toplevel
  return sharding.param_specs(params, mesh=mesh, fsdp=config.parallel.fsdp,
                              tensor_parallel=config.parallel.model > 1)


def _schedule_kw(config):
  return dict(warm_steps=int(config.warm_start.steps),
              search_learning_rate=float(experimental.values(config)[
                  "search_learning_rate"]))


def optimizer_steps(config: ml_collections.ConfigDict, loop_steps=None
                    ) -> int:
  """Optimizer updates after ``loop_steps`` loop steps (default: all):
  one per warm-start step, ``search.updates_per_search`` per search step
  when a replay buffer is used."""
  if loop_steps is None:
    loop_steps = config.warm_start.steps + config.search.steps
  warm = min(loop_steps, config.warm_start.steps)
  per = config.search.updates_per_search if config.search.replay_size else 1
  return warm + (loop_steps - warm) * per


def state_to_tree(state: step_lib.TrainState, replay=None,
                  reference=None) -> dict:
  """A checkpoint's tree: the state, and the search steps' replay buffer and
  frozen reference policy (``experimental.step_dpo_weight``) if any."""
  tree = dict(step=state.step, params=state.params, opt_state=state.opt_state,
              rng=state.rng)
  if replay is not None:
    tree["replay"] = replay
  if reference is not None:
    tree["reference"] = reference
  return tree


def tree_to_state(tree: dict) -> step_lib.TrainState:
  return step_lib.TrainState(step=tree["step"], params=tree["params"],
                             opt_state=tree["opt_state"], rng=tree["rng"])


def checkpointer(config, workdir) -> ckpt_lib.Checkpointer:
  return ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                               keep=config.checkpoint.keep,
                               every_steps=config.checkpoint.every_steps,
                               warm_start_steps=config.warm_start.steps,
                               warm_start_every_steps=(
                                   config.checkpoint.warm_start_every_steps))


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the run described by ``config`` in ``workdir``.

  Returns:
    The last logged metrics.
  """
  config_lib.validate_config(config)
  switches = experimental.values(config)  # read once, not every step
  workdir = config_lib.prepare_workdir(workdir)
  primary = jax.process_index() == 0
  ckpt = checkpointer(config, workdir)
  try:
    task, fns, state, optimizer, mesh, max_len = build(
        config, workdir, restoring=ckpt.latest_step() is not None)
  except BaseException:
    ckpt.close()
    raise
  if primary and config.model.get("checkpoint", ""):
    print(describe_pretrained(config, fns.config), flush=True)
  specs = parallel_specs(config, mesh, state.params)
  data_dir = config.data.data_dir or os.path.join(workdir, "data")
  blocks, num_blocks = data_lib.local_blocks(mesh)
  stream = data_lib.ExampleStream(
      task, config.batch_size, source=config.data.source, seed=config.seed,
      split="train", data_dir=data_dir, auto_build=config.data.auto_build,
      blocks=blocks, num_blocks=num_blocks)
  warm, total = config.warm_start.steps, (config.warm_start.steps
                                          + config.search.steps)

  search_learn = None
  if config.search.steps:
    if config.search.get("method", "mcts") == "sample":
      from train import sample_learn as sl  # pylint: disable=import-outside-toplevel
      make = sl.SampleLearn
    else:
      from train import search_learn as sl  # pylint: disable=import-outside-toplevel
      make = sl.SearchLearn
    search_learn = make(config, task, fns, optimizer, mesh, max_len=max_len,
                        param_specs=specs)
  replay = search_learn.replay if search_learn is not None else None

  def fresh_replay(step):
    # Up to the end of the warm start the replay buffer is empty by
    # construction, so a run resumed there starts a fresh one, whatever
    # the checkpoint holds: none (written by a run with search.steps=0),
    # or one with other fields (written by a run whose search options add
    # none, e.g. without step-DPO's reference log-probabilities). A saved
    # buffer is then read and dropped.
    return replay is not None and step <= warm

  def place(state):
    """The state on the mesh (replicated, or sharded by ``specs``)."""
    if specs is None:
      return step_lib.replicate(state, mesh)
    return step_lib.shard_state(state, mesh, optimizer, specs)

  if not any(isinstance(x, jax.ShapeDtypeStruct)
             for x in jax.tree.leaves(state)):
    # Placed before restoring, so that the checkpoint is read straight into
    # the run's placement (on several processes, a restored array that sits
    # on one process's device cannot be moved to the others').
    state = place(state)
  # The newest readable checkpoint: damaged newer ones are named in a
  # warning and moved aside.
  restored = ckpt.restore_latest(lambda step: state_to_tree(
      state, None if fresh_replay(step) else replay,
      state.params if ckpt.has_item(step, "reference") else None))
  start = None
  if restored is not None:
    start, tree, meta = restored
    state = tree_to_state(tree)
    if "replay" in tree and replay is not None:
      search_learn.replay = tree["replay"]
    if "reference" in tree and search_learn is not None:
      search_learn.reference = tree["reference"]
    stream.restore(meta["data_position"])
    if int(state.step) != optimizer_steps(config, start):
      raise ValueError(f"Checkpoint {start} holds optimizer step "
                       f"{int(state.step)}, expected "
                       f"{optimizer_steps(config, start)}; the checkpoint is "
                       "inconsistent with this config.")
    if primary:
      print(f"Resumed from step {start} (data position "
            f"{meta.get('data_position')}).", flush=True)
  if primary:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  state = place(state)
  if (search_learn is not None and search_learn.needs_reference
      and search_learn.reference is None and (start or 0) > warm):
    search_learn.reference = _warm_start_reference(ckpt, workdir, warm, start,
                                                   state, mesh)
  if specs is not None and primary:
    from models import sharding  # pylint: disable=import-outside-toplevel
    logging.info("Parameter sharding:\n%s", sharding.describe(state.params))

  def current_tree(state):
    if search_learn is None:
      return state_to_tree(state)
    return state_to_tree(state, search_learn.replay, search_learn.reference)

  writer = metrics_lib.MetricWriter(workdir, enabled=primary,
                                    resume_step=start)
  progress = metrics_lib.Progress(total, start or 0,
                                  enabled=primary and config.progress_bar)
  supervised_step = step_lib.make_train_step(
      step_lib.supervised_loss_fn(fns.apply), optimizer, mesh,
      loss_weights={"policy": config.warm_start.policy_weight,
                    "value": config.warm_start.value_weight},
      param_specs=specs)
  schedule = step_lib.learning_rate_schedule(
      config.optim, optimizer_steps(config), **_schedule_kw(config))
  verify = jax.jit(task.verify)
  base_key = jax.random.wrap_key_data(jax.device_get(state.rng))

  def meta(step):
    return {"data_position": stream.state(), "step": step, "model": {
        "config": {k: getattr(fns.config, k) for k in (
            "vocab_size", "num_layers", "d_model", "num_heads",
            "num_kv_heads", "head_dim", "mlp_dim", "max_seq_len")},
        "checkpoint": config.model.get("checkpoint", "")},
            "task": task.name}

  def warm_batch(step, examples):
    """This process's warm-start batch of ``step`` (also the search steps'
    anchor, ``experimental.anchor_weight``): one block per data position,
    each from its own seed."""
    def block(b, rows):
      seed = data_lib.step_seed(config.seed, step, b)
      if config.warm_start.data == "solver":
        return task.solver_traces(
            seed, rows["prompt"].shape[0], max_len=max_len,
            negative_fraction=config.warm_start.negative_fraction,
            split=switches["warm_start_problem_split"])
      return data_lib.supervised_batch(
          task, rows, max_len=max_len,
          corrupt_fraction=config.warm_start.corrupt_fraction, seed=seed,
          verify_fn=verify)
    return data_lib.by_block(examples, stream.blocks, block)

  anchor_on_search_problems = (
      config.warm_start.data == "solver"
      or switches["search_problem_split"] == "train")
  last = {}
  t0, steps_timed = time.time(), 0
  in_flight = None  # the previous step's metrics, not yet waited for
  with ckpt_lib.StopRequest() as stop:
    for step in range(start or 0, total):
      key = jax.random.fold_in(base_key, step)
      examples = stream.next(
          None if step < warm
          else switches["search_problem_split"])
      if step < warm:
        state, metrics = supervised_step(
            state, step_lib.shard_batch(warm_batch(step, examples), mesh),
            key)
      else:
        if search_learn.needs_reference and search_learn.reference is None:
          # The frozen reference policy: the parameters the search steps
          # start from (a copy: the step donates the state's buffers).
          search_learn.reference = jax.tree.map(jnp.copy, state.params)
        anchor = None
        if switches["anchor_weight"]:
          # The anchor trains on reference solutions of the search's own
          # problems; where those are not for training (a split other than
          # train, without the solver), on a batch of the train split.
          anchor = warm_batch(step, examples if anchor_on_search_problems
                              else stream.next())
        state, metrics = search_learn.step(state, examples, key,
                                           anchor=anchor)
      done = step + 1
      steps_timed += 1
      # At most two steps in flight: the host prepares the next batch while
      # this step runs, but never dispatches further ahead, so a SIGTERM is
      # acted on (checkpoint saved) within about two steps, not after every
      # step queued since the last logged one.
      if in_flight is not None:
        jax.block_until_ready(in_flight)
      in_flight = metrics
      if done % config.log_every_steps == 0 or done == total:
        values = dict(jax.device_get(metrics))
        values["learning_rate"] = float(schedule(optimizer_steps(config,
                                                                 step)))
        values["steps_per_second"] = steps_timed / max(time.time() - t0, 1e-9)
        last = writer.write(done, values)
        t0, steps_timed = time.time(), 0
      progress.update(1, **({"loss": last["loss"]} if "loss" in last else {}))
      halt = stop.requested or done == config.debug.stop_after_steps
      if ckpt.should_save(done) or done == total or halt:
        ckpt.save(done, current_tree(state), meta(done))
      if halt:
        logging.warning("Signal %s: saved step %d, stopping.", stop.signal,
                        done)
        break
      if config.debug.step_delay_s:
        time.sleep(config.debug.step_delay_s)
  progress.close()
  writer.close()
  ckpt.close()
  return last


def _warm_start_reference(ckpt, workdir, warm, start, state, mesh):
  """The reference policy of a run resumed after its search steps began
  from a checkpoint without one (written before step-DPO was turned on):
  the parameters of the warm start's last checkpoint (step ``warm``)."""
  if warm not in ckpt.all_steps():
    raise ValueError(
        f"experimental.step_dpo_weight > 0 compares the policy with the one "
        f"the search steps started from, but checkpoint {start} in {workdir} "
        f"was written without it and the warm start's last checkpoint (step "
        f"{warm}) is gone. Start the search steps again from a copy of the "
        f"workdir at step {warm}, or set step_dpo_weight=0.")
  print(f"Step-DPO reference policy: the parameters of checkpoint {warm} "
        "(the last warm-start step).", flush=True)
  _, tree = read_params(ckpt, workdir, warm, state_to_tree(state))
  return step_lib.replicate(tree["params"], mesh)


def latest_params(config: ml_collections.ConfigDict, workdir: str,
                  step: int | None = None):
  """``(task, model functions, params, step)`` of checkpoint ``step`` (default:
  the latest)."""
  task, fns, state, _, _, _ = build(config, workdir, restoring=True)
  ckpt = checkpointer(config, workdir)
  try:
    step, tree = read_params(ckpt, workdir, step, state_to_tree(state))
  finally:
    ckpt.close()
  return task, fns, tree["params"], step


def read_params(ckpt: ckpt_lib.Checkpointer, workdir: str, step: int | None,
                target) -> tuple[int, Any]:
  """``(step, tree)`` of checkpoint ``step`` restored without its replay
  buffer. None: the newest readable one (damaged newer ones are named in a
  warning). A damaged ``step`` is an error that lists the readable steps."""
  if step is None:
    restored = ckpt.restore_latest(lambda _: target, params_only=True)
    if restored is None:
      raise FileNotFoundError(
          f"No checkpoint in {os.path.join(workdir, 'checkpoints')}; train "
          f"first with python -m train --config ... --workdir {workdir}.")
    return restored[0], restored[1]
  if step not in ckpt.all_steps():
    raise FileNotFoundError(f"No checkpoint {step} in {workdir}; have "
                            f"{ckpt.all_steps()}.")
  try:
    return step, ckpt.restore_params(step, target)[0]
  except ckpt_lib.CorruptCheckpointError as e:
    good, _ = ckpt.readable_steps()
    raise ckpt_lib.CorruptCheckpointError(
        e.step, e.path, e.reason,
        hint=f"Readable checkpoints in {workdir}: {good}.") from e
