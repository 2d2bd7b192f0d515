"""Tree drawing: DOT and HTML show the nodes, edges and statistics of a tree."""
import jax.numpy as jnp
import numpy as np
import pytest

from tsearch._src.tree import empty_tree
from tsearch.visualize import tree_to_dot, tree_to_html


def _hand_tree():
  # Root 0 with children at slots 0 (node 1, 3 visits) and 2 (node 2, 1 visit);
  # node 1 has child node 3 at slot 1 (terminal).
  t = empty_tree(batch_size=2, capacity=6, num_children=3, action_length=2,
                 embedding_example=jnp.zeros((2,)))
  ci = np.full((2, 6, 3), -1, np.int32)
  ci[0, 0, 0], ci[0, 0, 2], ci[0, 1, 1] = 1, 2, 3
  cv = np.zeros((2, 6, 3), np.int32)
  cv[0, 0, 0], cv[0, 0, 2], cv[0, 1, 1] = 3, 1, 2
  nv = np.zeros((2, 6), np.int32)
  nv[0, :4] = [5, 3, 1, 2]
  vals = np.zeros((2, 6), np.float32)
  vals[0, :4] = [0.5, 0.25, -1.0, 1.0]
  acts = np.zeros((2, 6, 3, 2), np.int32)
  acts[0, 0, :, 0] = [7, 8, 9]
  acts[0, 1, 1] = [11, 12]
  term = np.zeros((2, 6), bool)
  term[0, 3] = True
  return t.replace(
      children_index=jnp.asarray(ci), children_visits=jnp.asarray(cv),
      node_visits=jnp.asarray(nv), node_values=jnp.asarray(vals),
      children_actions=jnp.asarray(acts), node_terminal=jnp.asarray(term),
      children_mask=jnp.ones((2, 6, 3), bool),
      num_nodes=jnp.asarray([4, 0], jnp.int32))


def test_dot_has_every_edge_and_stat():
  dot = tree_to_dot(_hand_tree(), action_label=lambda ids: "-".join(map(str, ids)))
  assert "n0 -> n1" in dot and "n0 -> n2" in dot and "n1 -> n3" in dot
  assert 'label="7\\nP=0.33 N=3"' in dot  # padding 0 stripped from [7, 0]
  assert 'label="11-12\\nP=0.33 N=2"' in dot
  assert "#0 N=5" in dot and "V=+0.500" in dot
  assert "terminal" in dot and dot.count("terminal") == 1
  assert dot.count("->") == 3


def test_min_visits_prunes_subtrees():
  dot = tree_to_dot(_hand_tree(), min_visits=2)
  assert "n0 -> n1" in dot and "n1 -> n3" in dot
  assert "n0 -> n2" not in dot


def test_html_orders_children_by_visits_and_escapes():
  html = tree_to_html(_hand_tree(), action_label=lambda ids: "<%s>" % ids[0])
  assert html.index("&lt;7&gt;") < html.index("&lt;9&gt;")
  assert "<7>" not in html
  assert "(4 nodes)" in html


def test_bad_batch_index():
  with pytest.raises(ValueError, match="batch_index"):
    tree_to_dot(_hand_tree(), batch_index=2)
