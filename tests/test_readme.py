"""The README's ```python blocks run as written, in order, in one namespace.

They are also the public API's showcase, so they may use only public names:
``tsearch.<name>`` with ``name`` in ``tsearch.__all__`` or a public submodule
(``tasks``, ``kv_arena``, ``visualize``), and ``models``.
"""
import pathlib
import re

import tsearch

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PUBLIC_SUBMODULES = ("tasks", "kv_arena", "visualize")


def python_blocks():
  return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_readme_is_a_short_user_guide():
  text = README.read_text()
  assert len(text.encode()) <= 12_000, "README.md is over 12,000 bytes"
  for heading in ("## Install", "## Two commands", "## Quickstart",
                  "## Contracts"):
    assert heading in text, heading
  # The tour covers the main entry points.
  code = "\n".join(python_blocks())
  for name in ("tsearch.get_task", "tsearch.Task", "tsearch.RootOutput",
               "tsearch.ExpandOutput", "tsearch.Tree", "tsearch.puct_search",
               "tsearch.gumbel_search", "tsearch.reroot", "tsearch.lm_search",
               "tsearch.LMSearchConfig", "tsearch.visualize.tree_to_html",
               "tsearch.get_algorithm", "tsearch.SearchOutput"):
    assert name in code, name


def test_readme_test_command_is_what_ci_runs():
  ci = (ROOT / ".ci" / "run").read_text()
  pytest_lines = [l for l in ci.splitlines() if l.startswith("python -m pytest")]
  assert len(pytest_lines) == 1, pytest_lines
  text = README.read_text()
  assert ("pip install -e '.[dev]' && " + pytest_lines[0]) in text


def test_readme_code_uses_only_public_names():
  code = "\n".join(python_blocks())
  for line in code.splitlines():
    m = re.match(r"\s*(?:from|import)\s+(tsearch\S*)", line)
    if m:
      module = m.group(1)
      assert module == "tsearch" or module.split(".")[1] in PUBLIC_SUBMODULES, (
          f"README imports a private module: {line.strip()}")
  used = set(re.findall(r"\btsearch\.([A-Za-z_]\w*)", code))
  private = sorted(n for n in used
                   if n not in tsearch.__all__ and n not in PUBLIC_SUBMODULES)
  assert not private, f"README code uses non-public names: {private}"


def test_readme_python_blocks_run():
  blocks = python_blocks()
  assert len(blocks) >= 5
  namespace = {"__name__": "readme"}
  for i, block in enumerate(blocks):
    try:
      exec(compile(block, f"README.md python block {i}", "exec"), namespace)  # pylint: disable=exec-used
    except Exception as e:
      raise AssertionError(
          f"README.md python block {i} failed: {type(e).__name__}: {e}\n"
          f"{block}") from e
