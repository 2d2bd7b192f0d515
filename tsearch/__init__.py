"""tsearch: jit-compiled, batched tree search over language models in JAX."""
from tsearch.base import ExpandOutput, PolicyOutput, RootOutput
from tsearch.tree import (NO_PARENT, ROOT_INDEX, UNVISITED, Tree, empty_tree, path_to_root,
                          solved_root_slot)
from tsearch._mctx_compat import from_mctx_recurrent_fn, root_from_mctx
from tsearch._reroot import reroot
from tsearch.search import gumbel_search, puct_search
from tsearch import tasks
from tsearch.tasks import get_task

__version__ = "0.1.0"
from tsearch.visualize import display_tree, tree_to_dot, tree_to_html
from tsearch.kv_arena import PromptCache, arena_bytes, commit_root_tokens, path_context
from tsearch.lm_search import (LMSearchConfig, LMSearchOutput, lm_reroot, lm_search,
                               make_lm_expand_fn, make_lm_root)
from tsearch import algorithms
from tsearch.algorithms import ALGORITHMS, SearchOutput, get_algorithm
