"""The Colab notebooks: committed without outputs, and executed top to bottom offline in tiny mode.

Each notebook runs in a fresh Jupyter kernel of this Python (a kernelspec written for the test, so a
`python3` kernelspec elsewhere on the machine cannot substitute another interpreter), with
`VPT_JAX_NOTEBOOK_TINY=1`: stand-in backbone, a few tiny runs. Any cell error fails the test
(nbclient raises `CellExecutionError` with the cell's traceback). The notebooks share one XLA disk cache,
so runs they have in common compile once; their temporary files go under pytest's tmp directory.

Deselect with `-m "not notebooks"`.
"""

from __future__ import annotations

import os
import pathlib
import re
import sys

import ipykernel.kernelspec
import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
NAMES = ("quickstart", "when_to_prompt", "attribution")
# Each notebook's "Open in Colab" badge; `owner` is the GitHub account Colab installs vpt_jax from.
COLAB_URL = r"https://colab\.research\.google\.com/github/(?P<owner>[\w.-]+)/vpt_jax/blob/main/notebooks/{}\.ipynb"


def read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
    """This Python as the `python3` kernel, and the tiny, offline, CPU-only environment."""
    root = tmp_path_factory.mktemp("notebooks")
    ipykernel.kernelspec.install(kernel_name="python3", prefix=str(root / "jupyter"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(root / "jupyter" / "share" / "jupyter"))
        patch.setenv("VPT_JAX_NOTEBOOK_TINY", "1")
        patch.setenv("JAX_PLATFORMS", "cpu")
        patch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
        patch.setenv("VPT_JAX_COMPILATION_CACHE", str(root / "xla"))
        patch.setenv("TMPDIR", str(root))  # the notebooks' tempfile work directories
        yield root


def execute(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    )
    return client.execute()


def outputs(nb: nbformat.NotebookNode) -> list:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


def test_every_notebook_is_executed_here():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_is_clean_and_colab_ready(name):
    nb = read(name)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code), (
        f"{name}.ipynb has outputs: clear all outputs before committing"
    )
    badge = re.search(COLAB_URL.format(name), nb.cells[0].source)
    assert badge, f"{name}.ipynb does not start with its own Open-in-Colab badge"
    setup = code[0].source
    installs_from = f'REPO_URL = "https://github.com/{badge["owner"]}/vpt_jax"'
    assert installs_from in setup, "the Colab install and the badge name different repositories"
    assert '"google.colab" in sys.modules' in setup and "pip" in setup and "jax.devices()" in setup
    assert 'os.environ.get("VPT_JAX_NOTEBOOK_TINY") == "1"' in setup


def test_the_kernel_is_this_python(kernel_env):
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")]
    )
    printed = execute(nb).cells[0].outputs[0].text.strip()
    assert os.path.realpath(printed) == os.path.realpath(sys.executable)


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_offline_in_tiny_mode(name, kernel_env):
    nb = execute(read(name))
    errors = [o for o in outputs(nb) if o.output_type == "error"]
    assert not errors
    printed = "".join(o.get("text", "") for o in outputs(nb) if o.output_type == "stream")
    assert "(tiny mode)" in printed  # the switch reached the kernel
    figures = [o for o in outputs(nb) if "image/png" in o.get("data", {})]
    assert figures, f"{name} showed no figure"
