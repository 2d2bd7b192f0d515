"""Config handling for ``python -m train``: defaults, checks, flag parsing.

A run's config is a Python file under ``configs/`` whose ``get_config()``
returns an ``ml_collections.ConfigDict``; ``--config.a.b=v`` overrides a value.
:func:`default_config` holds every key the trainer reads, so a config file only
states what it changes (``base = default_config(); base.model.d_model = ...``).
Switches that one experiment needed are the opt-in ``experimental`` group
(:mod:`train.experimental`).
"""
from __future__ import annotations

import math
import os
import re
import sys
import uuid
from typing import Sequence

import ml_collections

from train import experimental

ConfigDict = ml_collections.ConfigDict


def default_config() -> ConfigDict:
  """Every key the trainer reads, with its default value."""
  c = ConfigDict()
  c.seed = 0
  # Task and data.
  # ``tsearch.get_task(name, **options)``; the options are the task's own
  # (e.g. Countdown's strict=True, notation="left", retract=2).
  c.task = ConfigDict(dict(name="arithmetic", options=ConfigDict()))
  c.data = ConfigDict(dict(
      source="generated",  # "tfds" (built by tsearch.data) or "generated"
                           # (the task's seeded sampler, no files).
      data_dir="",  # "" means <workdir>/data.
      auto_build=True,  # build the TFDS data into data_dir if missing.
      max_len=0,  # padded trace length; 0 means the task's prompt + answer.
  ))
  # Model (models.ModelConfig); vocab_size 0 means "the task's tokenizer".
  # dtype: computation ("float32" or "bfloat16"); param_dtype: parameters
  # ("": float32 for the native model, dtype for a loaded checkpoint).
  # checkpoint: a Hugging Face checkpoint directory (Llama 3, Qwen2/2.5,
  # Qwen3, Gemma 3; models.hf) to search and train instead of the native
  # model: its config.json gives the architecture (the shape keys vocab_size
  # ... mlp_dim are then ignored), its weights the parameters and its
  # tokenizer the task's tokens (tsearch.tasks.text.over_tokenizer: prompts
  # are prompt_prefix + problem + prompt_suffix, inside the chat template
  # with system_prompt as the system message when chat_template is True).
  # max_seq_len is the context the run allocates (at most the checkpoint's
  # max_position_embeddings).
  c.model = ConfigDict(dict(
      vocab_size=0, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2,
      head_dim=16, mlp_dim=128, max_seq_len=128, dtype="float32",
      param_dtype="", checkpoint="", chat_template=False, system_prompt="",
      prompt_prefix="", prompt_suffix=""))
  c.optim = ConfigDict(dict(
      learning_rate=3e-3, warmup_steps=10, weight_decay=0.0, b1=0.9, b2=0.98,
      grad_clip=1.0))
  c.batch_size = 32  # global, over all devices and hosts.
  # Parameter sharding (models.sharding): model > 1 is tensor parallelism
  # over a 'model' mesh axis of that size (it must divide the devices, the
  # heads and the KV heads); fsdp shards the parameters' other large dim over
  # the 'data' axis (the remaining devices). Off (1, False): replicated.
  c.parallel = ConfigDict(dict(model=1, fsdp=False))
  # Supervised warm start on reference traces (policy) and outcomes (value).
  c.warm_start = ConfigDict(dict(
      steps=100,
      policy_weight=1.0,
      value_weight=0.5,
      corrupt_fraction=0.0,  # share of the batch made of corrupted traces
                             # (value target 0, no policy loss).
      data="reference",  # "reference": the task's reference solutions;
                         # "solver": the task's exact solver
                         # (task.solver_traces: answers and dead ends).
      negative_fraction=0.5,  # "solver": share of random derivations.
  ))
  # Search-and-learn iterations after the warm start.
  c.search = ConfigDict(dict(
      steps=0,
      method="mcts",  # "mcts": rollouts searched move by move (PUCT or
                      # Gumbel); "sample": num_samples whole answers per
                      # prompt, SFT on the verified ones and the value on
                      # all (train.sample_learn).
      num_samples=8,  # "sample": answers per prompt.
      sample_labels="verifier",  # "sample": targets from the verifier, or
                                 # "majority": self-consistency, no answer
                                 # key (train.sample_learn.majority_labels).
      majority_min_share=0.5,  # "majority": least share of the samples
                               # that must agree for a prompt to be labelled.
      algorithm="puct",  # "puct" or "gumbel".
      level="token",  # "token" or "step".
      num_simulations=16,
      num_children=4,
      capacity=64,  # nodes per tree, kept across moves via tsearch.reroot.
      temperature=1.0,  # PUCT acting temperature on visit counts.
      policy_weight=1.0,
      value_weight=0.5,
      sft_weight=0.0,  # extra LM loss on solved trajectories.
      value_target="outcome",  # "outcome", "q" or "mix" (AlphaMath-style).
      value_mix=0.5,  # weight of the outcome in "mix".
      replay_size=0,  # 0 disables the replay buffer.
      updates_per_search=1,  # updates per search (with a replay buffer).
      step_length=16,  # "step": most tokens per step (S).
      step_temperature=1.0,  # "step": sampling temperature of steps
                             # (of whole answers with method="sample").
      dedupe_steps=True,  # "step": a node's K slots hold distinct steps.
      terminal_lookahead=False,  # node value >= its best terminal child's
                                 # verifier reward (LMSearchConfig).
      prune_terminal_slots=False,  # puzzles: no simulation on a slot whose
                                   # reward lookahead already knows.
      max_moves=0,  # moves per rollout; 0: see search_config.num_moves.
      max_depth=0,  # tree depth bound; 0: see search_config.lm_search_config.
      dirichlet_fraction=0.25,  # PUCT root noise while training.
      pb_c_init=1.25,  # PUCT exploration constant (training and evaluation).
      curiosity_weight=0.0,  # PUCT surprisal bonus w*min(-log P, 10)/(1+n)
                             # (COS(M+O)S-style; LMSearchConfig); 0: off.
      act_on_solved=False,  # puzzles: follow a verified terminal found in
                            # the tree (tsearch.solved_root_slot).
      verifier_in_search=True,  # False: no answer key inside the search;
                                # finished answers earn the value head's
                                # estimate, which also judges for the
                                # lookahead, pruning and act_on_solved
                                # (LMSearchConfig).
      policy_on_solved=False,  # policy loss on solved trajectories only
                               # (their moves' search weights); value on all.
      leaves_per_step=1,  # leaves per tree per model call (virtual loss;
                          # LMSearchConfig.leaves_per_step).
      page_size=0,  # > 0: the tree's KV arena in pages of this many tokens
                    # (LMSearchConfig.page_size; 0: one slab per node).
      num_pages=0,  # pages per tree (0: enough for every node's step).
  ))
  # warm_start_every_steps: how often the warm start saves (0: every_steps);
  # its last step is always saved.
  c.checkpoint = ConfigDict(dict(every_steps=50, keep=3,
                                 warm_start_every_steps=0))
  c.log_every_steps = 10
  c.progress_bar = True
  # Sleep after each step: only for tests that kill a run mid-way.
  c.debug = ConfigDict(dict(
      step_delay_s=0.0,
      stop_after_steps=0,  # > 0: save and stop there, as on SIGTERM.
  ))
  # Evaluation (train.evaluate; problems from task.eval_problems). summary:
  # python -m train ends with greedy and MCTS (the first mcts_budgets
  # simulations per move) solve rates at the warm start and the last step
  # (train.summary); False turns it off.
  c.eval = ConfigDict(dict(
      summary=True, split="test", num_examples=64, batch_size=32,
      best_of_n=(4,), mcts_budgets=(8,), temperature=1.0,
      mcts_num_children=0))  # K of evaluation MCTS; 0: search.num_children.
  return c


def validate_config(config: ConfigDict) -> None:
  """Raises ValueError naming the bad key and the fix."""
  def need(cond, key, msg):
    if not cond:
      raise ValueError(f"Bad config value {key}={_get(config, key)!r}: {msg}")
  need(config.batch_size > 0, "batch_size", "must be positive.")
  need(config.warm_start.steps >= 0, "warm_start.steps", "must be >= 0.")
  need(config.search.steps >= 0, "search.steps", "must be >= 0.")
  need(config.checkpoint.every_steps > 0, "checkpoint.every_steps",
       "must be positive.")
  need(config.checkpoint.warm_start_every_steps >= 0,
       "checkpoint.warm_start_every_steps", "must be >= 0 (0: every_steps).")
  need(config.checkpoint.keep > 0, "checkpoint.keep", "must be positive.")
  need(config.log_every_steps > 0, "log_every_steps", "must be positive.")
  need(config.data.source in ("tfds", "generated"), "data.source",
       "use 'tfds' or 'generated'.")
  need(config.search.get("method", "mcts") in ("mcts", "sample"),
       "search.method", "use 'mcts' or 'sample'.")
  need(config.search.get("sample_labels", "verifier") == "verifier"
       or config.search.get("method", "mcts") == "sample",
       "search.sample_labels", "applies to --config.search.method=sample "
       "only; the MCTS rollouts' targets come from the verifier.")
  if config.search.get("method", "mcts") == "sample":
    _validate_sample_keys(config, need)
  need(config.search.algorithm in ("puct", "gumbel"), "search.algorithm",
       "use 'puct' or 'gumbel'.")
  need(config.search.level in ("token", "step"), "search.level",
       "use 'token' or 'step'.")
  need(config.search.value_target in ("outcome", "q", "mix"),
       "search.value_target", "use 'outcome', 'q' or 'mix'.")
  need(not config.search.prune_terminal_slots
       or config.search.terminal_lookahead, "search.prune_terminal_slots",
       "needs --config.search.terminal_lookahead=True (a pruned step's "
       "reward must reach its node's value).")
  need(config.eval.mcts_num_children >= 0, "eval.mcts_num_children",
       "must be >= 0 (0: search.num_children).")
  need(config.warm_start.data in ("reference", "solver"), "warm_start.data",
       "use 'reference' or 'solver'.")
  need(config.search.replay_size >= 0, "search.replay_size", "must be >= 0.")
  need(config.search.updates_per_search >= 1, "search.updates_per_search",
       "must be >= 1.")
  need(not config.search.replay_size or config.search.replay_size
       >= config.batch_size, "search.replay_size",
       f"must be 0 (off) or >= batch_size={config.batch_size}.")
  need(config.search.step_length >= 1, "search.step_length", "must be >= 1.")
  need(config.search.pb_c_init > 0, "search.pb_c_init", "must be positive.")
  need(math.isfinite(config.search.get("curiosity_weight", 0.0))
       and config.search.get("curiosity_weight", 0.0) >= 0,
       "search.curiosity_weight", "must be a finite number >= 0 (0: off).")
  need(config.search.get("curiosity_weight", 0.0) == 0
       or config.search.algorithm == "puct", "search.curiosity_weight",
       "applies to PUCT only; set it to 0.0 or "
       "--config.search.algorithm=puct.")
  need(0.0 <= config.warm_start.corrupt_fraction < 1.0,
       "warm_start.corrupt_fraction", "must be in [0, 1).")
  need(config.data.max_len <= config.model.max_seq_len, "data.max_len",
       f"must be <= model.max_seq_len={config.model.max_seq_len}.")
  need(config.warm_start.steps + config.search.steps > 0, "warm_start.steps",
       "warm_start.steps + search.steps must be positive.")
  _validate_model_keys(config, need)
  if "parallel" in config:
    _validate_parallel_keys(config, need)
  experimental.validate(config)


def _validate_sample_keys(config: ConfigDict, need) -> None:
  """``search.method='sample'``: its keys, and the MCTS-only options that
  it would silently ignore."""
  s = config.search
  need(s.num_samples >= 1, "search.num_samples", "must be >= 1.")
  need(s.step_temperature > 0, "search.step_temperature", "must be > 0.")
  need(s.get("sample_labels", "verifier") in ("verifier", "majority"),
       "search.sample_labels", "use 'verifier' or 'majority'.")
  need(0 < s.get("majority_min_share", 0.5) <= 1, "search.majority_min_share",
       "must be in (0, 1].")
  need(s.replay_size == 0, "search.replay_size",
       "method='sample' trains on each step's samples once; set it to 0.")
  x = experimental.values(config)
  for key in ("retract_weight", "step_dpo_weight", "pav_value_weight",
              "pav_policy_weight"):
    need(x[key] == 0, f"experimental.{key}", "reads a searched tree, which "
         "method='sample' does not build; set it to 0 or use "
         "--config.search.method=mcts.")


_DTYPES = ("float32", "bfloat16", "float16")


def _validate_model_keys(config, need):
  m = config.model
  need(m.dtype in _DTYPES, "model.dtype", f"use one of {_DTYPES}.")
  need(m.get("param_dtype", "") in ("",) + _DTYPES, "model.param_dtype",
       f"use '' (see the key's comment) or one of {_DTYPES}.")
  if not m.get("checkpoint", ""):
    for key in ("chat_template", "system_prompt", "prompt_prefix",
                "prompt_suffix"):
      need(not m.get(key), f"model.{key}", "applies to a loaded model's "
           "tokenizer only; set --config.model.checkpoint=/path/to/hf_dir "
           "or leave it unset.")
    return
  need(not m.system_prompt or m.chat_template, "model.system_prompt",
       "is the chat template's system message; set "
       "--config.model.chat_template=True, or put the text in "
       "model.prompt_prefix.")
  need(config.data.source == "generated", "data.source",
       "a loaded model reads the task through its own tokenizer, which the "
       "built TFDS data do not use; set --config.data.source=generated.")


def heads_of(config) -> tuple[int, int]:
  """``(num_heads, num_kv_heads)`` of the run's model: the model section's,
  or a loaded checkpoint's ``config.json``'s."""
  path = config.model.get("checkpoint", "")
  if not path:
    return config.model.num_heads, config.model.num_kv_heads
  from models import hf  # pylint: disable=import-outside-toplevel
  hf_config = hf.read_config(path)
  heads = int(hf_config["num_attention_heads"])
  return heads, int(hf_config.get("num_key_value_heads") or heads)


def _validate_parallel_keys(config, need):
  need(isinstance(config.parallel.model, int) and config.parallel.model >= 1,
       "parallel.model", "must be an int >= 1 (1: no tensor parallelism).")
  need(isinstance(config.parallel.fsdp, bool), "parallel.fsdp",
       "must be True or False.")
  if config.parallel.model == 1:
    return
  heads, kv_heads = heads_of(config)
  where = ("the checkpoint's config.json" if config.model.get("checkpoint")
           else "model.num_heads / model.num_kv_heads")
  need(heads % config.parallel.model == 0
       and kv_heads % config.parallel.model == 0,
       "parallel.model", f"must divide the {heads} heads and {kv_heads} KV "
       f"heads ({where}): tensor parallelism splits whole heads.")


def validate_parallel(config: ConfigDict, num_devices: int) -> None:
  """The ``parallel`` checks that depend on the devices: raises ValueError
  naming the bad key and the fix."""
  model = config.parallel.model
  if num_devices % model:
    raise ValueError(
        f"Bad config value parallel.model={model}: it must divide the "
        f"{num_devices} devices (the 'data' axis gets the rest).")
  data = num_devices // model
  if config.batch_size % data:
    raise ValueError(
        f"Bad config value batch_size={config.batch_size}: it must be a "
        f"multiple of the {data} devices of the 'data' axis ({num_devices} "
        f"devices / parallel.model={model}).")
  if config.search.replay_size and (model > 1 or config.parallel.fsdp):
    raise ValueError(
        "Bad config value search.replay_size="
        f"{config.search.replay_size}: the replay buffer is not supported "
        "with sharded parameters yet; set --config.search.replay_size=0 or "
        "--config.parallel.model=1 --config.parallel.fsdp=False.")


def validate_task(config: ConfigDict, task) -> None:
  """The checks that depend on the task (``tsearch.get_task``'s answer):
  raises ValueError naming the bad key and the fix."""
  def need(cond, key, msg):
    if not cond:
      raise ValueError(f"Bad config value {key}={_get(config, key)!r}: {msg}")
  need(not (config.warm_start.steps and not task.has_solutions),
       "warm_start.steps", f"{task.name} has no reference solutions to warm "
       "start on; set --config.warm_start.steps=0 (self-play only).")
  need(not (task.num_players > 1 and config.search.act_on_solved),
       "search.act_on_solved", "is for single-player puzzles; a won terminal "
       "in a two-player tree is not a forced win. Set it to False.")
  experimental.validate_task(config, task)


def _get(config, dotted):
  for part in dotted.split("."):
    config = config[part]
  return config


def unknown_override_message(config: ConfigDict, argv: Sequence[str],
                             flag_name: str = "config") -> str | None:
  """Explains the first ``--config.x.y=v`` whose key the config lacks."""
  prefix = f"--{flag_name}."
  for arg in argv:
    if not arg.startswith(prefix):
      continue
    dotted = arg[len(prefix):].split("=", 1)[0]
    node, seen = config, []
    for part in dotted.split("."):
      if not isinstance(node, (ConfigDict, dict)) or part not in node:
        where = ".".join(seen) or "<top level>"
        known = sorted(node.keys()) if isinstance(node, (ConfigDict, dict)) \
            else []
        return (
            f"Unknown config key '{dotted}' in {arg!r}: '{part}' is not a key "
            f"under {where} (known keys there: {', '.join(known) or 'none'}). "
            "Fix the spelling, or add the key to the config file's "
            "get_config() before overriding it.")
      node = node[part]
      seen.append(part)
  return None


def parse_flags(argv: Sequence[str]) -> list[str]:
  """An absl ``flags_parser`` that turns a bad config override into a clear error.

  ml_collections raises a bare ``AttributeError: 'key'`` for an unknown key;
  this reports the whole key, the keys that do exist there, and the fix.
  """
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    msg = None
    config_file = _flag_value(argv, "config")
    if config_file:
      try:
        msg = unknown_override_message(load_config_file(config_file), argv)
      except Exception:  # pylint: disable=broad-except
        msg = None
    print(f"FATAL: {msg or f'bad config override ({e})'}", file=sys.stderr)
    sys.exit(2)


def load_config_file(path: str) -> ConfigDict:
  """Runs ``get_config()`` of a config file (``path[:arg]`` as absl does)."""
  import importlib.util
  path, _, arg = path.partition(":")
  if not os.path.exists(path):
    raise ValueError(f"Config file {path!r} does not exist; pass e.g. "
                     "--config configs/tiny.py.")
  spec = importlib.util.spec_from_file_location("_tsearch_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _flag_value(argv, name):
  for i, arg in enumerate(argv):
    m = re.fullmatch(rf"--{name}=(.*)", arg)
    if m:
      return m.group(1)
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def prepare_workdir(workdir: str) -> str:
  """Creates ``workdir`` and checks it is writable; returns its absolute path."""
  if not workdir:
    raise ValueError("--workdir is required: pass a directory for "
                     "checkpoints, metrics and data, e.g. --workdir /tmp/run1.")
  path = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test_{uuid.uuid4().hex}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(
        f"Cannot write to workdir {path!r} ({e.strerror or e}). Pass a "
        "writable --workdir, or fix its permissions.") from e
  return path
