"""The notebooks as their readers meet them: JupyterLab 4 in Chromium (tests/browser.py),
JupyterLab started from its own environment (scripts/lab_env.sh) with this one as the kernel.

Skipped, saying how to install what is missing, where there is no Chromium, no Playwright or no
JupyterLab environment; failed instead where ATOP_BROWSER_TEST=required (CI: .ci/run).
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from tests.browser import (
    INSTALL_HINT,
    copy_notebooks,
    error_outputs,
    explorer_picture,
    find_chromium,
    image_sizes,
    is_dirty,
    jupyter_lab,
    lab_env_problem,
    open_notebook,
    run_all_cells,
    set_slider,
    wait_for_images,
    wait_for_new_picture,
)
from tests.conftest import write_tree

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab over a copy of the notebooks, with the smoke chain trained in its own home."""
    missing = pytest.fail if os.environ.get("ATOP_BROWSER_TEST") == "required" else pytest.skip
    chromium = find_chromium()
    if chromium is None:
        missing(f"no Chromium: {INSTALL_HINT}")
    if importlib.util.find_spec("playwright") is None:
        missing(f"no Playwright: {INSTALL_HINT}")
    problem = lab_env_problem()
    if problem:
        missing(problem)
    work = tmp_path_factory.mktemp("browser")
    data = write_tree(work / "data", "cifar10", per_class=2).parent  # what is drawn is not tested
    env = {**os.environ, "ATOP_HOME": str(work / "home"), "ATOP_CACHE_DIR": str(work / "cache")}
    env["ATOP_DATA_DIR"] = str(data)
    train = [sys.executable, "-m", "atop_core", "train", "--profile", "smoke"]
    train += ["--datasets", "cifar10", "--device", "cpu"]
    subprocess.run(train, env=env, check=True, capture_output=True, timeout=600)
    with jupyter_lab(copy_notebooks(work), env, work) as server:
        yield server, chromium


@pytest.fixture
def page(lab):
    from tests.browser import chromium_page

    with chromium_page(lab[1]) as page:
        yield page


def test_a_pipeline_notebook_opens_clean_and_shows_its_figures(lab, page):
    open_notebook(page, lab[0], "notebooks/20_pretrain_purifier.ipynb")
    wait_for_images(page)
    sizes = image_sizes(page)
    assert len(sizes) >= 3 and all(w > 0 and h > 0 for w, h in sizes), sizes
    assert not is_dirty(page)  # JupyterLab rewrote nothing on opening it


def test_the_report_notebook_shows_its_figures_as_images(lab, page):
    open_notebook(page, lab[0], "notebooks/90_tables_and_figures.ipynb")
    wait_for_images(page)
    sizes = image_sizes(page)
    assert sizes and all(w > 0 and h > 0 for w, h in sizes), sizes


def test_the_explorer_runs_and_redraws_when_a_slider_moves(lab, page):
    open_notebook(page, lab[0], "notebooks/00_explore.ipynb")
    run_all_cells(page)
    before = explorer_picture(page)  # waits for the widgets to render
    assert error_outputs(page) == []
    assert page.locator(".widget-slider").count() >= 6
    assert before.startswith("blob:") or before.startswith("data:image/png")
    set_slider(page, "noise std", "0.40")
    wait_for_new_picture(page, before)
    assert error_outputs(page) == []
