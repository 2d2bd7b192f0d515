"""The README's ```python blocks run as written, in order, in one namespace."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
  return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_readme_has_an_api_tour():
  text = README.read_text()
  assert "## API tour" in text
  # The tour covers the main entry points.
  code = "\n".join(python_blocks())
  for name in ("tsearch.get_task", "tsearch.puct_search", "tsearch.reroot",
               "tsearch.lm_search", "tsearch.tree_to_html",
               "tsearch.get_algorithm"):
    assert name in code, name


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
