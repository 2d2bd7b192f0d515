"""Drawing search trees: Graphviz DOT text and self-contained HTML.

Neither function needs a system binary. :func:`tree_to_dot` returns DOT source
(render it with the ``graphviz`` Python package where the ``dot`` program is
installed, or paste it into any Graphviz viewer); :func:`tree_to_html` returns
an HTML fragment with collapsible nodes that displays in Jupyter and Colab as
it is. :func:`display_tree` picks SVG when Graphviz can render and falls back
to HTML otherwise.

Example::

  policy_output = tsearch.puct_search(params, key, root, expand_fn,
                                      num_simulations=32)
  html = tsearch.visualize.tree_to_html(policy_output.search_tree, batch_index=0,
                              action_label=lambda ids: task.decode(ids))
"""
from __future__ import annotations

import html as html_lib
import shutil
from typing import Callable, Sequence

import numpy as np

from tsearch._src.tree import NO_PARENT, Tree, UNVISITED

ActionLabel = Callable[[Sequence[int]], str]


def _default_label(ids: Sequence[int]) -> str:
  return " ".join(str(int(i)) for i in ids)


def _host_tree(tree: Tree, batch_index: int) -> dict[str, np.ndarray]:
  if not 0 <= batch_index < tree.batch_size:
    raise ValueError(
        f"batch_index={batch_index} is outside the batch of {tree.batch_size} "
        "trees.")
  fields = ("node_visits", "node_values", "raw_values", "node_terminal",
            "children_index", "children_prior_logits", "children_visits",
            "children_mask", "children_actions", "children_rewards")
  out = {f: np.asarray(getattr(tree, f)[batch_index]) for f in fields}
  out["num_nodes"] = int(np.asarray(tree.num_nodes[batch_index]))
  return out


def _edges(t: dict[str, np.ndarray], min_visits: int):
  """Yields (parent, slot, child) for expanded children with enough visits."""
  for parent in range(t["num_nodes"]):
    for slot in range(t["children_index"].shape[1]):
      child = int(t["children_index"][parent, slot])
      if child == UNVISITED or child == NO_PARENT:
        continue
      if t["children_visits"][parent, slot] < min_visits:
        continue
      yield parent, slot, child


def _softmax_masked(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
  z = np.where(mask, logits, -np.inf)
  if not mask.any():
    return np.zeros_like(logits)
  z = np.exp(z - z[mask].max())
  return z / z.sum()


def tree_to_dot(tree: Tree, *, batch_index: int = 0,
                action_label: ActionLabel = _default_label,
                min_visits: int = 1, strip_padding: int | None = 0) -> str:
  """Graphviz DOT source for one tree of the batch.

  Args:
    tree: a search tree.
    batch_index: which of the ``B`` trees to draw.
    action_label: maps an action payload (``S`` token ids) to text, e.g. a
      task's ``decode``.
    min_visits: edges with fewer visits are left out (keeps big trees
      readable).
    strip_padding: token id removed from payloads before labelling (``None``
      keeps every token).

  Returns:
    DOT source: nodes show visits N, value V and terminal status; edges show
    the action, its prior P and visits.
  """
  t = _host_tree(tree, batch_index)
  lines = ["digraph tsearch_tree {", '  node [shape=box, fontname="monospace"];']
  shown = {0}
  edge_lines = []
  for parent, slot, child in _edges(t, min_visits):
    if parent not in shown:
      continue
    shown.add(child)
    prior = _softmax_masked(t["children_prior_logits"][parent],
                            t["children_mask"][parent])[slot]
    ids = [int(i) for i in t["children_actions"][parent, slot]
           if strip_padding is None or int(i) != strip_padding]
    label = action_label(ids).replace('"', r"\"")
    edge_lines.append(
        f'  n{parent} -> n{child} [label="{label}\\nP={prior:.2f} '
        f'N={int(t["children_visits"][parent, slot])}"];')
  for node in sorted(shown):
    term = "\\nterminal" if t["node_terminal"][node] else ""
    style = ", style=filled, fillcolor=lightgrey" if t["node_terminal"][node] else ""
    lines.append(
        f'  n{node} [label="#{node} N={int(t["node_visits"][node])}\\n'
        f'V={float(t["node_values"][node]):+.3f}{term}"{style}];')
  lines.extend(edge_lines)
  lines.append("}")
  return "\n".join(lines)


def tree_to_html(tree: Tree, *, batch_index: int = 0,
                 action_label: ActionLabel = _default_label,
                 min_visits: int = 1, strip_padding: int | None = 0,
                 open_depth: int = 2) -> str:
  """A self-contained HTML fragment drawing one tree as collapsible lists.

  Children are ordered by visits (most visited first). Needs no system
  binary; displays with ``IPython.display.HTML``.

  Args:
    tree, batch_index, action_label, min_visits, strip_padding: as in
      :func:`tree_to_dot`.
    open_depth: nodes shallower than this start expanded.
  """
  t = _host_tree(tree, batch_index)
  children: dict[int, list[tuple[int, int]]] = {}
  for parent, slot, child in _edges(t, min_visits):
    children.setdefault(parent, []).append((slot, child))

  def node_text(node: int) -> str:
    term = " <b>terminal</b>" if t["node_terminal"][node] else ""
    return (f"N={int(t['node_visits'][node])} "
            f"V={float(t['node_values'][node]):+.3f}{term}")

  def render(node: int, depth: int) -> str:
    kids = sorted(children.get(node, []),
                  key=lambda sc: -int(t["children_visits"][node, sc[0]]))
    priors = _softmax_masked(t["children_prior_logits"][node],
                             t["children_mask"][node])
    items = []
    for slot, child in kids:
      ids = [int(i) for i in t["children_actions"][node, slot]
             if strip_padding is None or int(i) != strip_padding]
      head = (f"<code>{html_lib.escape(action_label(ids))}</code> "
              f"P={priors[slot]:.2f} {node_text(child)}")
      if children.get(child):
        opened = " open" if depth + 1 < open_depth else ""
        items.append(f"<li><details{opened}><summary>{head}</summary>"
                     f"{render(child, depth + 1)}</details></li>")
      else:
        items.append(f"<li>{head}</li>")
    return "<ul style='list-style:none;padding-left:1.2em'>" + "".join(items) + "</ul>"

  return (f"<div class='tsearch-tree' style='font-family:monospace'>"
          f"<div>root {node_text(0)} ({t['num_nodes']} nodes)</div>"
          f"{render(0, 0)}</div>")


def display_tree(tree: Tree, **kwargs):
  """Returns an object that Jupyter/Colab displays: SVG if Graphviz's ``dot``
  program and the ``graphviz`` package are available, HTML otherwise."""
  from IPython.display import HTML, SVG  # pylint: disable=g-import-not-at-top
  if shutil.which("dot"):
    try:
      import graphviz  # pylint: disable=g-import-not-at-top
      html_only = {"open_depth"}
      dot_kwargs = {k: v for k, v in kwargs.items() if k not in html_only}
      return SVG(graphviz.Source(tree_to_dot(tree, **dot_kwargs)).pipe(format="svg"))
    except ImportError:
      pass
  return HTML(tree_to_html(tree, **kwargs))
