"""Notebooks are stored clean: no outputs, an Open-in-Colab badge, a SMOKE cell,
the python3 kernel, and the Colab-only install guard."""
import pathlib

import nbformat
import pytest

COLAB = pathlib.Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))
EXPECTED = {"quickstart", "train", "custom_task"}


def test_expected_notebooks_exist():
  assert EXPECTED <= {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  assert nb.metadata.kernelspec.name == "python3"
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], f"{path.name} cell {i} has stored outputs"
      assert cell.execution_count is None, f"{path.name} cell {i} has a count"

  first = nb.cells[0]
  url = ("https://colab.research.google.com/github/tsearch-dev/tsearch/blob/"
         f"main/colab/{path.name}")
  assert first.cell_type == "markdown" and url in first.source
  assert "colab-badge.svg" in first.source

  code = [c for c in nb.cells if c.cell_type == "code"]
  params = code[0]
  assert params.source.startswith("SMOKE = True")
  assert "parameters" in params.metadata.get("tags", [])
  assert any("SMOKE" in c.source for c in code[1:]), "SMOKE is never used"

  installs = [c for c in code if "%pip install" in c.source]
  assert len(installs) == 1
  assert "if 'google.colab' in sys.modules:" in installs[0].source
