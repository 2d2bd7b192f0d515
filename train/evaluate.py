"""Solve rates of a run's checkpoints: one command, one results schema.

  python -m train.evaluate --config configs/<name>.py --workdir <dir>

  python -m train.evaluate --config configs/countdown.py --workdir <dir> \\
      --stages warm_start:300,search_and_learn:345 \\
      --methods greedy:1,best_of_n:8,mcts:16,mcts:64 --out results/x.json

  python -m train.evaluate --config ... --workdir ... \\
      --algos greedy,best_of_n,beam,mcts --budgets 4,16,64

Checkpoints: ``--stages label:step,...`` (``latest`` allowed), or
``--steps step,...`` labelled ``warm_start`` / ``search_and_learn`` by the
config's ``warm_start.steps``; default the latest. All checkpoints share one
compile per method. Problems: ``task.eval_problems(num_problems,
split=split)`` (a fixed-list task's split, else problems sampled with a seed
no training step uses); defaults ``eval.num_examples`` and ``eval.split``.

Methods (``--methods algo:N``, default greedy, best-of-N for each N in
``eval.best_of_n`` and MCTS for each budget in ``eval.mcts_budgets``), all
under the task's legal mask:

* ``greedy``, ``sampling`` (at ``eval.temperature``), ``best_of_n``,
  ``beam``, ``dvts``, ``particle_filter``, ``best_first``: the search family
  (``tsearch.get_algorithm``) with budget N; ``--options`` sets their
  hyperparameters (``best_of_n.terminal_score=verifier`` picks the answer
  with the verifier, i.e. pass@N);
* ``mcts``: the trainer's rollout (:func:`tsearch.rollout` with the run's
  ``search`` options, :func:`train.search_config.eval_search_config`): PUCT
  without root noise, N simulations per move, acting on the most visited
  child, the kept subtree reused after each move.

Rows (one per checkpoint and method) have :data:`ROW_FIELDS`:
``solve_rate`` (share the exact verifier accepts), ``model_calls`` (mean
sequential forward calls per problem) and ``tokens_forwarded`` (mean token
positions computed per problem), ``seconds`` (wall time, compile included),
``verifier_in_search`` (the search itself consults the exact verifier:
terminal rewards inside the tree, lookahead on sampled final steps, acting on
a verified slot, or a verifier-picked answer; see :func:`verifier_in_search`),
``attempts_mean`` (1 + the take-backs per answer, ``task.attempts``),
``options`` (the family method's ``--options``, e.g. ``aggregate=majority``;
``""`` for its defaults), ``overrides`` (the evaluation's own
``--config.key=value`` flags, e.g. ``task.options.retract=0``; ``""`` for
none: :func:`config_overrides`).
They are merged into ``--out`` (default ``<workdir>/eval.json``), replacing
rows with the same :data:`ROW_KEY`; the file's other keys are kept.

Without ``--workdir``, over a loaded model (``model.checkpoint``, a Hugging
Face directory) it evaluates the checkpoint's own weights, no training
(rows labelled ``stage=pretrained``, ``step=0``), e.g.::

  python -m train.evaluate --config configs/hf_tiny.py \\
      --config.model.checkpoint=/path/to/hf_dir \\
      --methods greedy:1,mcts:8 --num_problems 8 --out results/base.json

The rows are written to ``--out`` when given (there is no default file).

With ``--algos`` it compares the search family at equal compute
(:mod:`tsearch._src.evaluation`) at each budget instead, writes
``<workdir>/compare_step<step>.json|png`` and merges the rows (same schema,
``family: true``) into ``--out``.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Sequence

import jax
import numpy as np
from absl import app, flags, logging
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import config_flags

import tsearch
from train import config as config_lib
from train import loop
from train.results import method_name
from train import search_config
from train import step as step_lib

ROW_FIELDS = ("stage", "step", "algo", "simulations", "budget", "solve_rate",
              "model_calls", "tokens_forwarded", "seconds",
              "verifier_in_search", "attempts_mean", "split", "seed",
              "num_problems", "options", "overrides")
# Rows of a results file with the same key are replaced by a new evaluation.
ROW_KEY = ("stage", "algo", "simulations", "budget", "split", "seed",
           "family", "options", "overrides", "verifier_in_search")

# Family algorithms --methods takes (``mcts`` is the trainer's rollout).
FAMILY_METHODS = ("greedy", "sampling", "best_of_n", "beam", "dvts",
                  "particle_filter", "best_first")
METHODS = FAMILY_METHODS + ("mcts",)
# Algorithms whose answer search always consults the verifier: every
# lm_search tree gives its terminal nodes the task's reward.
_TREE_SEARCHES = ("mcts", "gumbel")


def parse_methods(items: Sequence[str]) -> list[tuple[str, int]]:
  """``["greedy:1", "mcts:16"]`` (or one comma-separated string) ->
  ``[("greedy", 1), ("mcts", 16)]``."""
  if isinstance(items, str):
    items = [x for x in items.split(",") if x.strip()]
  out = []
  for item in items:
    algo, _, n = item.strip().partition(":")
    if algo not in METHODS:
      raise ValueError(f"Unknown method {algo!r} in --methods; use "
                       f"{', '.join(METHODS)} as algo:N.")
    try:
      out.append((algo, int(n or 1)))
    except ValueError:
      raise ValueError(f"Bad method {item!r}: write algo:N with an integer "
                       "N (samples, budget or simulations per move).") from None
    if out[-1][1] < 1:
      raise ValueError(f"Bad method {item!r}: N must be >= 1.")
  return out


def default_methods(config) -> list[tuple[str, int]]:
  """Greedy, best-of-N for each ``eval.best_of_n`` and MCTS for each
  ``eval.mcts_budgets``."""
  e = config.eval
  return ([("greedy", 1)] + [("best_of_n", int(n)) for n in e.best_of_n]
          + [("mcts", int(n)) for n in e.mcts_budgets])


def verifier_in_search(algo: str, options: dict | None = None, *,
                       tree_verifier: bool = True) -> bool:
  """Whether ``algo`` (with its ``options``) consults the exact verifier
  while choosing its answer.

  Tree searches over the model (the trainer's MCTS rollout, the family's
  ``mcts`` / ``gumbel``) do: terminal nodes inside the tree earn the task's
  reward (and, where configured, sampled final steps are scored by lookahead
  and a verified slot is acted on). The other family algorithms do only
  with ``terminal_score="verifier"`` (finished candidates ranked by the
  verifier); greedy decoding and sampling never.
  """
  if algo in _TREE_SEARCHES:
    # The trainer's MCTS rollout runs without the answer key under
    # search.verifier_in_search=False (tree_verifier); the family's tree
    # searches with options verifier_in_search=False.
    return bool(tree_verifier if algo == "mcts" and not options
                else (options or {}).get("verifier_in_search", True))
  return (options or {}).get("terminal_score", "value") == "verifier"


def method_options(text: str, methods) -> dict[str, dict]:
  """``--options`` for ``--methods``: hyperparameters of the family methods
  (``algo.key=value``, ``*.key=value``). The ``mcts`` method is the
  trainer's rollout: its options are the config's ``search`` section."""
  from tsearch._src import evaluation  # pylint: disable=import-outside-toplevel
  family = [a for a, _ in methods if a in FAMILY_METHODS]
  if (text or "").strip().startswith("mcts.") or ",mcts." in (text or ""):
    raise ValueError(
        "--options mcts.*: the mcts method is the trainer's rollout; set its "
        "options with --config.search.<key>=v (and "
        "--config.eval.mcts_num_children=K), or compare the family's mcts "
        "with --algos.")
  return evaluation.parse_options(text, family) if text else {}


def stage_of(config, step: int) -> str:
  """``warm_start`` for a step within the warm start, else
  ``search_and_learn``."""
  return "warm_start" if step <= config.warm_start.steps else \
      "search_and_learn"


_JITTED = {}


def _method_fn(config, task, fns, algo: str, n: int, options: dict,
               mesh=None):
  """Jitted ``(model_state, prompts, lengths, key) -> (reward, attempts,
  calls, tokens)``, built once per method (checkpoints share the compile).

  With a ``mesh`` whose ``data`` axis has ``D > 1`` devices, the problems
  are split over it (``jax.shard_map``; device ``i`` draws from
  ``fold_in(key, i)``), on one process or several."""
  cache_key = (algo, n, task, fns.graphdef, config.search.to_json_best_effort(),
               search_config.eval_num_children(config),
               json.dumps(options, sort_keys=True, default=str), mesh)
  if cache_key in _JITTED:
    return _JITTED[cache_key]
  if algo in FAMILY_METHODS:
    fn = tsearch.get_algorithm(algo)
    kw = dict(options)
    if algo == "sampling":
      kw.setdefault("temperature", float(config.eval.temperature))

    def run(s, p, l, k):
      out = fn(fns.graphdef, s, task, p, l, k, budget=n, **kw)
      final = task.run(p, out.answers)
      return (task.reward(final), task.attempts(final), out.model_calls,
              out.tokens_forwarded)
  elif algo == "mcts":
    cfg = search_config.eval_search_config(config, task, n)
    moves = search_config.num_moves(config.search, task)
    act_on_solved = bool(config.search.get("act_on_solved", False))

    def run(s, p, l, k):
      r = tsearch.rollout(fns.graphdef, s, task, p, l, k, config=cfg,
                          num_moves=moves, act_on_solved=act_on_solved)
      return r.outcome, r.attempts, r.model_calls, r.tokens_forwarded
  else:
    raise ValueError(f"Unknown method {algo!r}; use {', '.join(METHODS)}.")
  if mesh is None or mesh.shape[_DATA] == 1:
    _JITTED[cache_key] = jax.jit(run)
  else:
    def per_device(s, p, l, k):
      return run(s, p, l, jax.random.fold_in(k, jax.lax.axis_index(_DATA)))
    _JITTED[cache_key] = jax.jit(jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P(_DATA), P(_DATA), P()),
        out_specs=P(_DATA), check_vma=False))
  return _JITTED[cache_key]


_DATA = "data"


def data_mesh(config):
  """The mesh evaluation splits problems over: the run's ``('data',)``
  mesh; None for a run with sharded parameters (``parallel``), whose
  methods run under the compiler's partitioning instead."""
  return None if loop.is_sharded_run(config) else loop.parallel_mesh(config)


def _on_mesh(x: np.ndarray, mesh) -> jax.Array:
  """A global array split over the ``data`` axis from the same host array
  on every process (each places its own devices' rows)."""
  sharding = NamedSharding(mesh, P(_DATA))
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _gather(x) -> np.ndarray:
  """A (possibly multi-process) array as one host array on every process."""
  if jax.process_count() > 1 and not x.is_fully_addressable:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def evaluate(config, task, fns, params, problems, *, methods, seed: int = 0,
             options: dict | None = None, progress: bool = True,
             on_row=None) -> list[dict]:
  """One row per method on ``problems`` (one batch): ``algo, simulations,
  budget, solve_rate, model_calls, tokens_forwarded, seconds,
  verifier_in_search, attempts_mean, seed, num_problems``.

  Args:
    config: the run's config (``search`` for MCTS, ``eval.temperature``).
    task, fns, params: the run's task and model (:func:`train.loop.build`).
    problems: the task's problems.
    methods: ``[(algo, N)]`` (:func:`parse_methods`).
    seed: the key of every method's random draws.
    options: ``{algo: {key: value}}`` for the family methods.
    progress: print a line per method.
  """
  options = options or {}
  progress = progress and jax.process_index() == 0  # one table per job
  prompts, plen = task.encode_prompts(problems)
  state = fns.state(params)
  mesh = data_mesh(config)
  num = len(problems)
  if mesh is not None and mesh.shape[_DATA] > 1:
    # Padded with copies of the last problem to a multiple of the devices;
    # the copies' results are dropped.
    pad = -num % mesh.shape[_DATA]
    prompts, plen = (_on_mesh(np.concatenate([x, np.repeat(x[-1:], pad, 0)]),
                              mesh) for x in (prompts, plen))
  rows = []
  for algo, n in methods:
    opts = dict(options.get(algo, {}))
    t0 = time.time()
    reward, attempts, calls, tokens = (_gather(x)[:num] for x in _method_fn(
        config, task, fns, algo, n, opts, mesh)(
            state, prompts, plen, jax.random.key(seed)))
    rows.append(dict(
        algo=algo, simulations=n if algo == "mcts" else None,
        budget=None if algo in ("greedy", "sampling", "mcts") else n,
        solve_rate=float(np.mean(np.asarray(reward) > 0.5)),
        model_calls=float(np.mean(calls)),
        tokens_forwarded=float(np.mean(tokens)),
        seconds=round(time.time() - t0, 1),
        verifier_in_search=verifier_in_search(
            algo, opts, tree_verifier=bool(
                config.search.get("verifier_in_search", True))),
        attempts_mean=float(np.mean(attempts)),
        seed=int(seed), num_problems=len(problems),
        options=format_options(opts)))
    if progress:
      print(format_rows(rows[-1:], header=False), flush=True)
    if on_row is not None:
      on_row(rows[-1])
  return rows


def restore(config, workdir: str, steps: Sequence[int | None]):
  """``(task, fns, [(step, params)])``: the run's task and model, built once,
  and the parameters of each checkpoint (None: the latest)."""
  task, fns, state, _, mesh, _ = loop.build(config, workdir, restoring=True)
  if not any(isinstance(x, jax.ShapeDtypeStruct)
             for x in jax.tree.leaves(state)):
    # Read straight onto every device of the mesh (on several processes,
    # an array read onto one process's device cannot be moved to another's).
    state = step_lib.replicate(state, mesh)
  ckpt = loop.checkpointer(config, workdir)
  try:
    out = []
    for step in steps:
      step, tree = loop.read_params(ckpt, workdir, step,
                                    loop.state_to_tree(state))
      out.append((int(step), tree["params"]))
  finally:
    ckpt.close()
  return task, fns, out


PRETRAINED = "pretrained"  # the stage of a loaded model's own weights


def restore_pretrained(config):
  """``(task, fns, [(0, params)])``: the run's task and ``model.checkpoint``'s
  own weights (no workdir)."""
  if not config.model.get("checkpoint", ""):
    raise ValueError(
        "--workdir is required: pass the run's directory, or set "
        "--config.model.checkpoint=/path/to/hf_dir to evaluate a pretrained "
        "model's own weights.")
  task, fns, params = loop.pretrained(config)
  return task, fns, [(0, params)]


def parse_stages(stages: Sequence[str], steps: Sequence[str]
                 ) -> list[tuple[str | None, int | None]]:
  """``--stages label:step`` or ``--steps step`` -> ``[(label or None,
  step or None)]`` (None step: the latest; None label: from the step)."""
  def step_of(text):
    text = text.strip()
    if text == "latest":
      return None
    try:
      return int(text)
    except ValueError:
      raise ValueError(f"Bad checkpoint step {text!r}: use an integer or "
                       "'latest'.") from None
  if stages:
    out = []
    for item in stages:
      label, sep, step = item.partition(":")
      if not sep or not label:
        raise ValueError(f"Bad --stages item {item!r}: write label:step, "
                         "e.g. warm_start:300 or search_and_learn:latest.")
      out.append((label, step_of(step)))
    return out
  return [(None, step_of(s)) for s in (steps or ["latest"])]


def evaluate_checkpoints(config, workdir: str, stages, *, methods,
                         split: str | None = None,
                         num_problems: int | None = None, seed: int = 0,
                         options: dict | None = None, progress: bool = True,
                         out: str | None = None,
                         overrides: str = "") -> list[dict]:
  """Rows (:data:`ROW_FIELDS`) of every method at every checkpoint.

  Args:
    config, workdir: the run; workdir None: the weights of
      ``model.checkpoint`` (stage ``pretrained``, step 0; ``stages`` unused).
    stages: ``[(label or None, step or None)]`` (:func:`parse_stages`).
    methods: ``[(algo, N)]``.
    split: the task's split (default ``eval.split``).
    num_problems: problems (default ``eval.num_examples``; a fixed-list
      task's split may have fewer).
    seed, options, progress: as :func:`evaluate`.
    out: a results file each row is merged into as soon as its method
      finishes (process 0), so an interrupted evaluation keeps the rows it
      made.
    overrides: the rows' ``overrides`` (:func:`config_overrides`).
  """
  split = split or config.eval.split
  num = int(num_problems or config.eval.num_examples)
  progress = progress and jax.process_index() == 0  # one table per job
  if workdir:
    task, fns, checkpoints = restore(config, workdir, [s for _, s in stages])
  else:
    task, fns, checkpoints = restore_pretrained(config)
    stages = [(PRETRAINED, 0)]
  problems = task.eval_problems(num, split=split)
  rows = []
  for (label, _), (step, params) in zip(stages, checkpoints):
    stage = label or stage_of(config, step)
    if progress:
      print(f"{stage} (checkpoint {step}), {len(problems)} {split} problems:",
            flush=True)
    def keep(r, stage=stage, step=step):
      rows.append({k: dict(stage=stage, step=step, **r, split=split,
                           overrides=overrides).get(k) for k in ROW_FIELDS})
      if out and jax.process_index() == 0:
        merge_rows(out, rows[-1:])
    evaluate(config, task, fns, params, problems, methods=methods, seed=seed,
             options=options, progress=progress, on_row=keep)
  return rows


def compare(config, workdir: str | None, algos: str, budgets: str, *,
            seed: int = 0, step: int | None = None, options: str = "",
            split: str | None = None, num_problems: int | None = None,
            out_dir: str | None = None, overrides: str = "") -> list[dict]:
  """``--algos/--budgets``: the search family, compute-matched
  (:mod:`tsearch._src.evaluation`); writes ``compare_step<step>.json|png``
  to the workdir (``compare_pretrained.json|png`` in ``out_dir`` without
  one) and returns the rows in this module's schema."""
  from tsearch._src import evaluation  # pylint: disable=import-outside-toplevel
  algo_list = evaluation.parse_list(algos)
  budget_list = evaluation.parse_list(budgets or "1", int)
  opts = evaluation.parse_options(options, algo_list)
  split = split or config.eval.split
  if workdir:
    task, fns, [(step, params)] = restore(config, workdir, [step])
    stage, name, out_dir = stage_of(config, step), f"compare_step{step}", \
        workdir
  else:
    task, fns, [(step, params)] = restore_pretrained(config)
    stage, name = PRETRAINED, f"compare_{PRETRAINED}"
  problems = task.eval_problems(int(num_problems or config.eval.num_examples),
                                split=split)
  prompts, plen = task.encode_prompts(problems)
  family = evaluation.run_algorithms(
      fns.graphdef, fns.state(params), task, prompts, plen,
      jax.random.key(seed), algos=algo_list, budgets=budget_list,
      batch_size=config.eval.batch_size, options=opts, progress=True)
  print(evaluation.format_table(family))
  if jax.process_index() == 0 and out_dir:
    paths = evaluation.write_comparison(
        family, out_dir, name,
        meta=dict(task=task.name, split=split, step=int(step), seed=seed,
                  options=opts),
        title=f"{task.name} ({split} split, {stage} step {step})")
    print("wrote", *paths)
  # The family's rows give no answers to count take-backs in: 1 where the
  # task has no take-back token, else unknown.
  attempts = 1.0 if getattr(task, "retract_token", None) is None else None
  rows = []
  for r in family:
    tree = r["algorithm"] in _TREE_SEARCHES
    fixed = r["algorithm"] in ("greedy", "sampling")
    rows.append(dict(
        stage=stage, step=int(step), algo=r["algorithm"],
        simulations=r["budget"] if tree else None,
        budget=None if tree or fixed else r["budget"],
        solve_rate=r["solve_rate"], model_calls=r["model_calls"],
        tokens_forwarded=r["tokens_forwarded"],
        seconds=round(r["wall_s"] + r["compile_s"], 1),
        verifier_in_search=verifier_in_search(
            r["algorithm"], opts.get(r["algorithm"])),
        attempts_mean=attempts, split=split, seed=int(seed),
        num_problems=r["num_problems"], family=True,
        options=format_options(opts.get(r["algorithm"], {})),
        overrides=overrides))
  return rows


def config_overrides(argv: Sequence[str]) -> str:
  """The ``--config.key=value`` flags of ``argv`` as the rows write them
  (``"experimental.retract_weight=0,task.options.retract=0"``, sorted;
  ``""`` for none): two evaluations of one checkpoint under different
  overrides are two configurations, not one replacing the other."""
  found = {}
  args = list(argv)
  for i, a in enumerate(args):
    if not a.startswith("--config."):
      continue
    name, eq, value = a[len("--config."):].partition("=")
    if not eq:  # "--config.key value"
      value = args[i + 1] if i + 1 < len(args) else ""
    found[name] = value
  return ",".join(f"{k}={found[k]}" for k in sorted(found))


def format_options(options: dict) -> str:
  """A family method's ``--options`` as the rows write them
  (``"aggregate=majority,temperature=0.7"``; ``""`` for the defaults)."""
  return ",".join(f"{k}={options[k]}" for k in sorted(options))


def read_results(path: str) -> dict:
  """The results file at ``path`` (``{}`` if there is none). Raises
  ValueError for a file that is not one (``{"rows": [...], ...}``)."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(f"{path} is not a results file (not JSON: {err}); "
                     "pass another --out or move that file away.") from None
  if not isinstance(data, dict) or not isinstance(data.get("rows", []), list):
    raise ValueError(f"{path} is not a results file ({{\"rows\": [...], "
                     "...}): pass another --out or move that file away.")
  return data


def merge_rows(path: str, new: list[dict]) -> dict:
  """Merges ``new`` into ``path``'s ``"rows"``, replacing rows with the same
  :data:`ROW_KEY`; the file's other keys (``command``, ``machine``,
  ``diagnostics``) are kept. Raises ValueError for a file that is not a
  results file."""
  def key(r):
    # Rows written before the options and overrides fields have the
    # defaults; older family rows hold their options as a dict.
    opts = r.get("options") or ""
    opts = format_options(opts) if isinstance(opts, dict) else opts
    fixed = {"options": opts, "overrides": r.get("overrides") or ""}
    return tuple(fixed.get(k, r.get(k)) for k in ROW_KEY)
  data = read_results(path)
  keys = {key(r) for r in new}
  data["rows"] = [r for r in data.get("rows", []) if key(r) not in keys] + new
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:  # a kill while writing leaves the old file
    json.dump(data, f, indent=1)
  os.replace(tmp, path)
  return data


def format_rows(rows: Sequence[dict], header: bool = True) -> str:
  """A fixed-width table of rows (:data:`ROW_FIELDS`)."""
  lines = []
  if header:
    lines.append(f"{'method':<24}{'solve rate':>11}{'model calls':>13}"
                 f"{'tokens fwd':>12}{'verifier':>10}{'attempts':>10}"
                 f"{'seconds':>9}")
  for r in rows:
    attempts = ("?" if r.get("attempts_mean") is None
                else f"{r['attempts_mean']:.2f}")
    lines.append(f"{method_name(r):<24}{r['solve_rate']:>11.3f}"
                 f"{r['model_calls']:>13.1f}{r['tokens_forwarded']:>12.1f}"
                 f"{'yes' if r['verifier_in_search'] else 'no':>10}"
                 f"{attempts:>10}{r['seconds']:>9.1f}")
  return "\n".join(lines)


def define_flags() -> dict:
  """The command's flags (defined only when it runs, so that importing this
  module, e.g. from ``python -m train``, defines none)."""
  f = dict(
      config=config_flags.DEFINE_config_file("config", None, "Run config."),
      workdir=flags.DEFINE_string(
          "workdir", None, "Run directory; unset: evaluate the weights of "
          "model.checkpoint (a Hugging Face directory) themselves."),
      stages=flags.DEFINE_list(
          "stages", [], "label:step list (step 'latest' allowed), e.g. "
          "warm_start:300,search_and_learn:latest."),
      steps=flags.DEFINE_list(
          "steps", [], "Checkpoint steps ('latest' allowed), labelled "
          "warm_start / search_and_learn by the config; default: the "
          "latest."),
      step=flags.DEFINE_integer("step", None, "One checkpoint step (as "
                                "--steps=<step>)."),
      methods=flags.DEFINE_list(
          "methods", [], f"algo:N list, algo in {', '.join(METHODS)} (N: "
          "budget or MCTS simulations per move); default from the config's "
          "eval section."),
      split=flags.DEFINE_string("split", None, "The task's split (default "
                                "eval.split)."),
      num_problems=flags.DEFINE_integer(
          "num_problems", None, "Problems (default eval.num_examples; a "
          "fixed list may have fewer)."),
      seed=flags.DEFINE_integer("seed", 0, "Key of the methods' random "
                                "draws."),
      out=flags.DEFINE_string("out", None, "JSON results file the rows are "
                              "merged into (default <workdir>/eval.json; "
                              "without --workdir: none)."),
      algos=flags.DEFINE_string(
          "algos", None, "Comma-separated tsearch.ALGORITHMS to compare at "
          "equal compute (e.g. greedy,best_of_n,beam,mcts) instead of "
          "--methods."),
      budgets=flags.DEFINE_string("budgets", "4,16,64",
                                  "Comma-separated budgets for --algos."),
      options=flags.DEFINE_string(
          "options", "", "Comma-separated algo.key=value hyperparameters of "
          "the family algorithms, e.g. mcts.num_children=8,"
          "*.terminal_score=verifier ('*': every algorithm that takes the "
          "key)."),
      num_processes=flags.DEFINE_integer(
          "num_processes", None, "Processes of a multi-host run (as for "
          "python -m train); unset: one, or from the cluster env."),
      coordinator_address=flags.DEFINE_string(
          "coordinator_address", None, "host:port of process 0."),
      process_id=flags.DEFINE_integer("process_id", None,
                                      "This process's index."),
  )
  flags.mark_flags_as_required(["config"])
  return f


def _fatal(err: Exception) -> None:
  print(f"FATAL: {type(err).__name__}: {err}", file=sys.stderr)
  sys.exit(1)


def main(argv, f: dict):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax is chatty at INFO
  v = {k: flag.value for k, flag in f.items()}
  try:
    loop.maybe_initialize_distributed(v["num_processes"],
                                      v["coordinator_address"],
                                      v["process_id"])
  except ValueError as err:
    _fatal(err)
  config, workdir = v["config"], v["workdir"]
  overrides = config_overrides(sys.argv[1:])
  out = v["out"] or (os.path.join(workdir, "eval.json") if workdir else None)
  try:
    if out:
      read_results(out)  # a bad --out fails before any evaluation
    if not workdir:
      check_no_workdir_flags(v)
    if v["algos"]:
      if jax.process_count() > 1:
        raise ValueError("--algos runs on one process; launch it without "
                         "--num_processes (use --methods on several).")
      rows = compare(config, workdir, v["algos"], v["budgets"],
                     seed=v["seed"], step=v["step"], options=v["options"],
                     split=v["split"], num_problems=v["num_problems"],
                     overrides=overrides,
                     out_dir=workdir or (os.path.dirname(os.path.abspath(out))
                                         if out else None))
    else:
      methods = (parse_methods(v["methods"]) if v["methods"]
                 else default_methods(config))
      steps = v["steps"] or ([str(v["step"])] if v["step"] else [])
      rows = evaluate_checkpoints(
          config, workdir, parse_stages(v["stages"], steps),
          methods=methods, split=v["split"], num_problems=v["num_problems"],
          seed=v["seed"], options=method_options(v["options"], methods),
          out=out, overrides=overrides)
  except (ValueError, FileNotFoundError) as err:
    _fatal(err)
  if jax.process_index() == 0 and out:
    try:
      merge_rows(out, rows)
    except ValueError as err:
      _fatal(err)
    print(f"wrote {out}")
  elif jax.process_index() == 0:
    print("rows not written: pass --out FILE to keep them.")


def check_no_workdir_flags(v: dict) -> None:
  """Without ``--workdir`` there are no checkpoints to pick: a clear error
  for ``--stages/--steps/--step`` and for a native model."""
  picked = [f"--{k}" for k in ("stages", "steps", "step") if v[k]]
  if picked:
    raise ValueError(
        f"{', '.join(picked)} pick checkpoints of a run; pass its --workdir, "
        "or drop them to evaluate the weights of model.checkpoint.")
  if not v["config"].model.get("checkpoint", ""):
    raise ValueError(
        "--workdir is required: pass the run's directory, or set "
        "--config.model.checkpoint=/path/to/hf_dir to evaluate a pretrained "
        "model's own weights.")


if __name__ == "__main__":
  _FLAGS = define_flags()
  app.run(lambda argv: main(argv, _FLAGS),
          flags_parser=config_lib.parse_flags)
