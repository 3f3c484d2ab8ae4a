"""notebooks/quickstart.ipynb: committed without outputs, and it executes end to end at the smoke size (slow)."""

import ast
import json
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _stdout(cell) -> str:
    # stderr carries progress bars and library warnings; the results are printed to stdout.
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def test_notebook_is_valid_and_stripped():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in _code_cells(nb):
        ast.parse(cell.source)  # plain Python: no shell escapes or magics, so it also runs outside IPython
        assert cell.outputs == [] and cell.execution_count is None  # outputs stripped before committing
    install = _code_cells(nb)[0].source
    assert '"google.colab" in sys.modules' in install and "PLACEHOLDER" in install


@pytest.mark.slow
def test_notebook_runs_the_smoke_preset(tmp_path, monkeypatch):
    # A kernelspec for this interpreter, found first on JUPYTER_PATH: an installed "python3" spec runs whichever
    # `python` is on PATH, which need not be the one with ilql_jax installed.
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "cwd"
    work.mkdir()

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute()

    install, setup, train, plot, reuse = _code_cells(nb)
    assert install.outputs == []  # not on Colab: nothing installed
    rows = json.loads((work / "runs" / "quickstart" / "results.json").read_text())["aggregate"]
    assert [r["beta"] for r in rows] == [0.0, 1.0, 4.0, 16.0]
    assert rows[-1]["kl"] > rows[0]["kl"]  # steering moves the policy away from π_β
    printed = _stdout(train)
    for r in rows:
        assert f"β={r['beta']:g}: reward {r['mean_reward']:.3f}" in printed
    kinds = [key for o in plot.outputs if o.output_type == "display_data" for key in o.data]
    assert "image/png" in kinds and "text/markdown" in kinds
    replies = _stdout(reuse).splitlines()
    assert [line.split(":")[0] for line in replies] == ["β=0", "β=16"]
