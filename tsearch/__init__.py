"""tsearch: jit-compiled, batched tree search over language models in JAX.

The public API is the names in ``__all__``; the implementation lives in the
private ``tsearch._src`` package (as in mctx). Public submodules:
``tsearch.tasks`` (environments with exact verifiers), ``tsearch.kv_arena``
(the tree as a KV cache: arena sizes, path contexts), ``tsearch.visualize``
(draw a tree) and ``tsearch.data`` (TFDS builders, ``python -m tsearch.data``).
"""
from tsearch._src.algorithms import ALGORITHMS, SearchOutput, get_algorithm
from tsearch._src.base import ExpandOutput, PolicyOutput, RootOutput
from tsearch._src.lm_search import (LMSearchConfig, LMSearchOutput, lm_reroot, lm_search,
                                    make_lm_expand_fn, make_lm_root)
from tsearch._src.mctx_compat import from_mctx_recurrent_fn, root_from_mctx
from tsearch._src.reroot import reroot
from tsearch._src.rollout import RolloutOutput, rollout
from tsearch._src.search import gumbel_search, puct_search
from tsearch._src.tree import Tree, empty_tree, solved_root_slot
from tsearch import kv_arena, tasks, visualize
from tsearch.tasks import TASK_NAMES, Task, get_task

__version__ = "0.1.0"

__all__ = (
    # Search over any jnp environment (mctx-style contracts).
    "RootOutput",
    "ExpandOutput",
    "PolicyOutput",
    "Tree",
    "empty_tree",
    "puct_search",
    "gumbel_search",
    "reroot",
    "solved_root_slot",
    "root_from_mctx",
    "from_mctx_recurrent_fn",
    # Search over a language model, the tree as its KV cache.
    "LMSearchConfig",
    "LMSearchOutput",
    "lm_search",
    "lm_reroot",
    "make_lm_root",
    "make_lm_expand_fn",
    # Play an answer move by move: search, commit, keep the subtree.
    "rollout",
    "RolloutOutput",
    # The test-time search family (greedy, best-of-N, beam, particles, MCTS).
    "SearchOutput",
    "ALGORITHMS",
    "get_algorithm",
    # Tasks.
    "Task",
    "TASK_NAMES",
    "get_task",
)
