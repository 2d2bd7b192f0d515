"""The test-time search family, one registry: ``get_algorithm(name)``."""
from tsearch._src.algorithms.family import (AGGREGATES, SearchOutput, beam,
                                       best_of_n, check_budget, choose, dvts,
                                       greedy, particle_filter, sampling,
                                       systematic_resample)
from tsearch._src.algorithms import mcts as mcts_lib
from tsearch._src.algorithms import best_first as best_first_lib
from tsearch._src.algorithms.best_first import best_first
from tsearch._src.algorithms.mcts import gumbel, mcts

ALGORITHMS = {
    "greedy": greedy,
    "sampling": sampling,
    "best_of_n": best_of_n,
    "beam": beam,
    "dvts": dvts,
    "particle_filter": particle_filter,
    "best_first": best_first,
    "mcts": mcts,
    "gumbel": gumbel,
}


def get_algorithm(name: str):
  """The search function called ``name`` (see :data:`ALGORITHMS`).

  Raises:
    ValueError: for an unknown name; the message lists the known ones.
  """
  if name not in ALGORITHMS:
    raise ValueError(f"Unknown algorithm {name!r}; known algorithms: "
                     f"{', '.join(ALGORITHMS)}.")
  return ALGORITHMS[name]
