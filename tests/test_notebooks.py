"""The notebooks as a product: parameters, completeness against the paper, and run_all.sh."""

import json
import os
import re
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import nbformat
import pytest

from atop_core.jupyter import image_count, output_problems
from atop_core.tables import load_reference
from tests.conftest import write_tree

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _parameters(path: Path) -> str:
    book = nbformat.read(path, as_version=4)
    tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged `parameters`"
    return tagged[0].source


def test_every_paper_table_and_figure_maps_to_a_notebook_ci_executes():
    reference = load_reference()
    run_tests = (ROOT / "run_tests.sh").read_text()
    assert "--nbval-lax notebooks" in run_tests  # CI (.ci/run -> run_tests.sh) executes them all
    entries = {**reference["tables"], **reference["figures"]}
    assert entries
    for entry_id, entry in entries.items():
        assert (ROOT / entry["notebook"]).is_file(), f"{entry_id}: {entry['notebook']} is missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_parameters_are_scalars_defaulting_to_smoke(path):
    namespace: dict = {}
    exec(_parameters(path), namespace)  # noqa: S102 - our own notebooks' parameter cells
    values = {k: v for k, v in namespace.items() if not k.startswith("__")}
    assert values["profile"] == "smoke" and values["dataset"] == "cifar10"
    assert all(isinstance(v, int | float | str | bool) for v in values.values())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_cell_after_the_parameters_checks_them(path):
    book = nbformat.read(path, as_version=4)
    code = [c for c in book.cells if c.cell_type == "code"]
    tags = [c.metadata.get("tags", []) for c in code]
    assert "install" in tags[0] and "parameters" in tags[1]
    assert "ex.setup(profile, dataset" in code[2].source


# --- what a reader meets: committed outputs, Colab badges and the install cell -----------------

COMMITTED = NOTEBOOKS + sorted((ROOT / "outputs" / "quick").glob("*/*.ipynb"))
REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
BADGE = re.compile(r"\[!\[Open in Colab\]\((\S+)\)\]\((\S+)\)")


def _shows_a_figure(source: str) -> bool:
    """A cell whose value is a figure: ends in `fig`, a plots call, or the explorer's snapshot."""
    last = source.strip().splitlines()[-1]
    return last == "fig" or last.startswith(("plots.", "display_report(", "view.snapshot()"))


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.relative_to(ROOT)))
def test_committed_notebooks_show_their_figures_and_nothing_a_reader_should_not_see(path):
    book = nbformat.read(path, as_version=4)
    assert output_problems(book) == []
    for cell in book.cells:
        if cell.cell_type == "code" and _shows_a_figure(cell.source):
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source


def test_the_quick_runs_executed_notebooks_are_committed_with_their_figures():
    executed = sorted((ROOT / "outputs" / "quick").glob("*/*.ipynb"))
    assert len(executed) >= 8
    assert sum(image_count(nbformat.read(p, as_version=4)) for p in executed) >= 10


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_opens_in_colab_from_its_own_badge(path):
    book = nbformat.read(path, as_version=4)
    image, link = BADGE.search(book.cells[0].source).groups()
    assert image == "https://colab.research.google.com/assets/colab-badge.svg"
    slug = REPOSITORY.removeprefix("https://github.com/")
    assert (
        link == f"https://colab.research.google.com/github/{slug}/blob/main/notebooks/{path.name}"
    )
    assert f'"git+{REPOSITORY}"' in book.cells[1].source


def test_every_notebook_has_the_same_install_cell():
    sources = {nbformat.read(p, as_version=4).cells[1].source for p in NOTEBOOKS}
    assert len(sources) == 1


@pytest.mark.slow
def test_the_install_cell_leaves_a_working_atop_core_in_a_fresh_environment(tmp_path):
    """A fresh virtual environment that sees this one's packages (torch and the rest: nothing to
    download) but not its atop_core; the cell installs the checkout into it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    cell = nbformat.read(NOTEBOOKS[0], as_version=4).cells[1].source
    env = {**os.environ, "ATOP_SOURCE": str(ROOT), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    check = "import atop_core, atop_core.attacks; print(atop_core.__file__)"
    before = subprocess.run([python, "-c", check], cwd=tmp_path, env=env, capture_output=True)
    assert before.returncode != 0  # the fresh environment lacks the project
    subprocess.run([python, "-c", cell], cwd=tmp_path, env=env, check=True, timeout=600)
    after = subprocess.run(
        [python, "-c", check], cwd=tmp_path, env=env, check=True, capture_output=True, text=True
    )
    assert after.stdout.startswith(site)


def _notebook(path: Path, source: str) -> None:
    book = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\ndataset = "cifar10"\ndevice = "cpu"')
    params.metadata["tags"] = ["parameters"]
    book.cells = [params, nbformat.v4.new_code_cell(source)]
    book.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(book, path)


@pytest.mark.slow
def test_a_failing_notebook_stops_run_all_naming_it(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _notebook(folder / "10_fine.ipynb", "print('fine')")
    _notebook(folder / "20_broken.ipynb", "raise ValueError('deliberately broken')")
    write_tree(tmp_path / "data", "cifar10", per_class=1)  # a tiny local copy, fast to decode
    env = {
        **os.environ,
        "ATOP_HOME": str(tmp_path / "home"),
        "ATOP_DATA_DIR": str(tmp_path / "data"),
    }
    args = ["bash", "run_all.sh", "--profile", "smoke", "--datasets", "cifar10", "--from"]
    args += ["notebooks", "--notebooks", str(folder), "--device", "cpu"]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "FAILED: notebook" in done.stderr and "20_broken.ipynb" in done.stderr
    assert "deliberately broken" in done.stderr
    log = tmp_path / "home" / "outputs" / "smoke" / "cifar10" / "20_broken.log"
    assert str(log) in done.stderr and log.exists()
    executed = tmp_path / "home" / "outputs" / "smoke" / "cifar10" / "10_fine.ipynb"
    cells = json.loads(executed.read_text())["cells"]
    printed = [c["outputs"][0]["text"] for c in cells if "print" in "".join(c["source"])]
    assert printed == [["fine\n"]]
