"""The paged tree KV arena on a trained model's own steps (issue 33).

  PYTHONPATH=. python experiments/scale/arena_text.py \\
      --config configs/word_problems_answers.py --workdir /tmp/wpL5000 \\
      --step 1560 --config.task.options.num_train=5000

``bench/lm_scale.py`` measures the arena on a random model whose steps run
to ``S`` tokens (it rarely samples the delimiter), so pages hold what the
slab held. Here the steps are a trained model's: a step-level search run
(the run's evaluation MCTS: PUCT, no root noise, K of the run's search,
``S = search.step_length``, no answer key inside the search) from
``--num_problems`` prompts of ``--split``, one search call each at
``--sims`` simulations (the first move: the largest tree of a rollout),
three times:

* the slab layout (each node reserves ``S`` key/value slots);
* the paged layout with the default pool (the slab's slots, in pages of
  ``--page_size`` tokens): its trees must equal the slab's;
* the paged layout with a pool of ``--pool_fraction`` of the slab's slots.

Prints, per simulation count, the tokens the nodes hold over the slab's
slots (``capacity x S`` per tree; ``capacity`` is ``max(search.capacity,
sims + 1)``), the same per node made (the share of ``S`` a step fills), the
pages in use over the slab's pages (the memory the paged arena needs, as a
share of what the slab reserves: issue 33's ``u``), the largest tree's pages
over the slab's (the smallest pool no row overflows), whether the paged
trees equal the slab's, and the rows that overflowed the smaller pool.
The last line is

  arena_text sims=<n> tokens_over_slab=<t> pages_over_slab=<u> overflowed_rows=<r>/<b>

for the largest ``--sims``.
"""
import dataclasses

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

import tsearch
from train import evaluate as ev
from train import search_config

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/word_problems_answers.py", "Run config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default latest).")
_SPLIT = flags.DEFINE_string("split", "validation", "Problem split.")
_NUM = flags.DEFINE_integer("num_problems", 16, "Prompts (trees) B.")
_SIMS = flags.DEFINE_list("sims", ["16", "64"], "Simulations per search.")
_PAGE = flags.DEFINE_integer("page_size", 4, "Tokens per page (divides S).")
_POOL = flags.DEFINE_float("pool_fraction", 0.5,
                           "The smaller pool, as a share of the slab's slots.")
_SEED = flags.DEFINE_integer("seed", 0, "Search key.")
flags.mark_flags_as_required(["workdir"])


def same_tree(a, b) -> bool:
  """Equal nodes, edges, visits and values (the arena aside)."""
  names = ("num_nodes", "children_index", "children_actions",
           "children_visits", "node_values", "children_prior_logits")
  return all(np.array_equal(np.asarray(getattr(a, n)),
                            np.asarray(getattr(b, n))) for n in names)


def main(argv):
  del argv
  config = _CONFIG.value
  task, fns, [(step, params)] = ev.restore(config, _WORKDIR.value,
                                           [_STEP.value])
  problems = task.eval_problems(_NUM.value, split=_SPLIT.value)
  prompts, plen = task.encode_prompts(problems)
  state = fns.state(params)
  b = len(problems)
  print(f"checkpoint {step}, {b} {_SPLIT.value} prompts; pages of "
        f"{_PAGE.value} tokens")
  print(f"{'sims':>5} {'S':>3} {'K':>3} {'nodes':>6} {'tokens/slab':>12} "
        f"{'pages/slab':>11} {'max tree':>9} {'tokens/node/S':>14} "
        f"{'paged = slab':>13} "
        f"{'pool':>6} {'overflowed':>11}")
  for sims in (int(s) for s in _SIMS.value):
    slab = dataclasses.replace(
        search_config.eval_search_config(config, task, sims),
        verifier_in_search=False)
    search = jax.jit(lambda c, key: tsearch.lm_search(
        fns.graphdef, state, task, prompts, plen, key, config=c),
        static_argnums=0)
    key = jax.random.key(_SEED.value)
    base = search(slab, key).search_tree
    paged_cfg = dataclasses.replace(slab, page_size=_PAGE.value)
    paged = search(paged_cfg, key).search_tree
    assert not np.asarray(paged.overflowed).any()
    pool = max(int(paged_cfg.pages_per_tree * _POOL.value),
               slab.step_length // _PAGE.value)
    small = search(dataclasses.replace(paged_cfg, num_pages=pool),
                   key).search_tree
    over = int(np.asarray(small.overflowed).sum())
    slots = b * slab.capacity * slab.step_length
    held = int(np.sum(tsearch.kv_arena.tokens_held(base)))
    tokens = held / slots
    made = float(np.sum(np.asarray(base.num_nodes) - 1))  # nodes but roots
    fill = held / (made * slab.step_length)
    in_use = np.asarray(tsearch.kv_arena.pages_in_use(paged))
    pages = float(in_use.sum()) / (b * paged_cfg.pages_per_tree)
    most = float(in_use.max()) / paged_cfg.pages_per_tree
    print(f"{sims:>5} {slab.step_length:>3} {slab.num_children:>3} "
          f"{float(np.mean(np.asarray(base.num_nodes))):>6.1f} "
          f"{tokens:>12.3f} {pages:>11.3f} {most:>9.3f} {fill:>14.3f} "
          f"{str(same_tree(base, paged)):>13} "
          f"{pool / paged_cfg.pages_per_tree:>6.2f} {over:>6}/{b}",
          flush=True)
  print(f"arena_text sims={sims} tokens_over_slab={tokens:.3f} "
        f"pages_over_slab={pages:.3f} overflowed_rows={over}/{b}")


if __name__ == "__main__":
  app.run(main)
