"""JupyterLab in a real browser: a server on 127.0.0.1 and Chromium driven by Playwright.

Used by test_browser.py, and on its own to take the explorer's screenshot for the README:

    python -m tests.browser --screenshot figures/explorer.png   # ATOP_HOME: whose defenses to show

Chromium is the system's (Debian's `chromium` package); Playwright's own browser downloads are
never needed. JupyterLab runs from its own environment (`.venv-lab`, or `ATOP_LAB_ENV`; made by
scripts/lab_env.sh), where this environment is registered as the kernel `python3`.
"""

import argparse
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
INSTALL_HINT = (
    "install Chromium (Debian: apt-get install -y chromium) and the test extra (playwright)"
)
LAB_HINT = "create JupyterLab's environment and register this one in it: bash scripts/lab_env.sh"
NO_ANNOUNCEMENTS = {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
# Every cell attached and drawn: JupyterLab 4 otherwise skips off-screen cells (content-visibility),
# so their images load, and count as visible, only once scrolled to.
ALL_CELLS_DRAWN = ("@jupyterlab/notebook-extension", "tracker", {"windowingMode": "none"})
START_TIMEOUT_S = 60
VIEWPORT = {"width": 1280, "height": 1100}


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)


def lab_env() -> Path:
    """JupyterLab's own environment (scripts/lab_env.sh): `ATOP_LAB_ENV`, else `.venv-lab`."""
    return Path(os.environ.get("ATOP_LAB_ENV") or ROOT / ".venv-lab").absolute()


def lab_env_problem(env: Path | None = None) -> str | None:
    """Why JupyterLab cannot run this environment's notebooks from `env` (None: it can): no
    JupyterLab there, or its kernel `python3` is another environment's Python."""
    env = env or lab_env()
    if not (env / "bin" / "jupyter-lab").exists():
        return f"no JupyterLab in {env}: {LAB_HINT}"
    spec = env / "share" / "jupyter" / "kernels" / "python3" / "kernel.json"
    if not spec.exists():
        return f"no kernel python3 registered in {env}: {LAB_HINT}"
    python = json.loads(spec.read_text())["argv"][0]
    prefix = subprocess.run(
        [python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True
    ).stdout.strip()
    if prefix != sys.prefix:
        return f"{env}'s kernel python3 is {python}, not this environment's Python: {LAB_HINT}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Lab:
    url: str
    token: str
    root: Path

    def notebook_url(self, relative: str) -> str:
        """The notebook alone: `reset` drops the tabs an earlier page left in the workspace,
        which JupyterLab would otherwise restore (and one of them could be the current one)."""
        return f"{self.url}/lab/tree/{relative}?reset&token={self.token}"


def _wait_until_up(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {process.returncode}:\n{log.read_text()}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=2)
            return
        time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer within {START_TIMEOUT_S} s:\n{log.read_text()}")


@contextlib.contextmanager
def jupyter_lab(root: Path, env: dict[str, str], workdir: Path) -> Iterator[Lab]:
    """JupyterLab, from its own environment (`lab_env()`, whose kernel python3 runs notebooks),
    serving `root` on a free port of 127.0.0.1 with a random token, its news pop-up and update
    check off and its own config folder; stopped on exit, whatever happened."""
    lab = lab_env()
    problem = lab_env_problem(lab)
    if problem:
        raise RuntimeError(problem)
    config = workdir / "jupyter-config"
    (config / "labconfig").mkdir(parents=True, exist_ok=True)
    (config / "labconfig" / "page_config.json").write_text(json.dumps(NO_ANNOUNCEMENTS))
    plugin, name, values = ALL_CELLS_DRAWN
    user_settings = workdir / "lab-settings"
    (user_settings / plugin).mkdir(parents=True, exist_ok=True)
    (user_settings / plugin / f"{name}.jupyterlab-settings").write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    args = [str(lab / "bin" / "python"), "-m", "jupyter", "lab", "--no-browser", "--allow-root"]
    args += ["--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    args += [f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"]
    args += ["--LabApp.news_url=None", "--LabApp.expose_app_in_browser=True"]
    args += ["--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = workdir / "jupyterlab.log"
    env = {**env, "JUPYTER_CONFIG_DIR": str(config), "JUPYTERLAB_WORKSPACES_DIR": str(workdir)}
    env["JUPYTERLAB_SETTINGS_DIR"] = str(user_settings)
    # The lab environment's kernels first: no user-level python3 kernel can shadow the project's.
    kernels_first = [str(lab / "share" / "jupyter"), env.get("JUPYTER_PATH", "")]
    env["JUPYTER_PATH"] = os.pathsep.join(filter(None, kernels_first))
    with log.open("w") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(f"{url}/api/status?token={token}", process, log)
        yield Lab(url, token, root)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def chromium_page(chromium: str):
    """A Playwright page in the system's Chromium (no sandbox: CI runs as root)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport=VIEWPORT)
        finally:
            browser.close()


def open_notebook(page, lab: Lab, relative: str) -> None:
    """Open a notebook, the current and only tab, and wait until its cells and kernel are ready."""
    page.goto(lab.notebook_url(relative))
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", state="attached", timeout=60_000)
    page.wait_for_function(
        """path => {
            const current = window.jupyterapp?.shell.currentWidget;
            return current?.context?.path === path && current.sessionContext.session?.kernel;
        }""",
        arg=relative,
        timeout=60_000,
    )


def run_all_cells(page, timeout_s: float = 300) -> None:
    """Clear the open notebook's outputs, run every cell, and wait until each has finished."""
    commands = "window.jupyterapp.commands"
    page.evaluate(f"{commands}.execute('notebook:clear-all-cell-outputs')")
    page.evaluate(f"{commands}.execute('notebook:run-all-cells')")
    page.wait_for_function(
        """() => {
            const cells = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell')];
            const prompts = cells.map(c => c.querySelector('.jp-InputPrompt')?.textContent || '');
            return prompts.length && prompts.every(p => /\\[\\d+\\]/.test(p));
        }""",
        timeout=timeout_s * 1000,
    )


def error_outputs(page) -> list[str]:
    """The text of every error or stderr output of the open notebook."""
    selector = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
    return [e.inner_text()[:300] for e in page.query_selector_all(selector)]


def wait_for_images(page, timeout_s: float = 60) -> None:
    """Until the open notebook has output images and every one of them has loaded."""
    page.wait_for_function(
        """() => {
            const images = [...document.querySelectorAll('.jp-OutputArea-output img')];
            return images.length && images.every(i => i.complete && i.naturalWidth > 0);
        }""",
        timeout=timeout_s * 1000,
    )


def image_sizes(page) -> list[tuple[int, int]]:
    """Natural sizes of the images in the open notebook's outputs (0 x 0: a broken image)."""
    return page.evaluate(
        """() => [...document.querySelectorAll('.jp-OutputArea-output img')]
               .map(i => [i.naturalWidth, i.naturalHeight])"""
    )


def is_dirty(page) -> bool:
    return page.evaluate("() => window.jupyterapp.shell.currentWidget.context.model.dirty")


def explorer_picture(page) -> str:
    """The src of the explorer's picture (a data URL that changes when the picture does)."""
    return page.get_attribute(".widget-image", "src", timeout=60_000) or ""


def wait_for_new_picture(page, before: str, timeout_s: float = 30) -> None:
    page.wait_for_function(
        "b => document.querySelector('.widget-image').src !== b",
        arg=before,
        timeout=timeout_s * 1000,
    )


def set_slider(page, description: str, value: str) -> None:
    """Type `value` into the readout of the slider labelled `description`, as a user would."""
    slider = page.locator(".widget-slider", has=page.locator(f"label:text-is('{description}')"))
    readout = slider.locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(value)
    page.keyboard.press("Enter")


def copy_notebooks(target: Path) -> Path:
    """The notebooks in a folder of their own, so a browser session cannot write to the checkout."""
    shutil.copytree(ROOT / "notebooks", target / "notebooks")
    return target


def screenshot_explorer(out: Path, workdir: Path, defense: str = "", image: int = 0) -> Path:
    """Open the explorer with this environment's ATOP_HOME, run it, pick `defense` (a label of its
    menu; "": its default) and test image `image`, attack once, and save a screenshot to `out`."""
    chromium = find_chromium()
    if chromium is None:
        raise SystemExit(f"no Chromium found: {INSTALL_HINT}")
    root = copy_notebooks(workdir)
    with jupyter_lab(root, dict(os.environ), workdir) as lab, chromium_page(chromium) as page:
        open_notebook(page, lab, "notebooks/00_explore.ipynb")
        run_all_cells(page)
        before = explorer_picture(page)
        if defense:
            page.locator(".widget-dropdown select").first.select_option(label=defense)
            wait_for_new_picture(page, before)
            before = explorer_picture(page)
        if image:
            set_slider(page, "test image", str(image))
            wait_for_new_picture(page, before)
            before = explorer_picture(page)
        page.click(".widget-tab .lm-TabBar-tab:has-text('attack')")
        page.click(".widget-button.mod-danger")  # "attack" (the only danger-styled button)
        wait_for_new_picture(page, before, timeout_s=120)
        page.locator(
            ".jp-Cell", has=page.locator(".widget-vbox")
        ).first.scroll_into_view_if_needed()
        page.screenshot(path=str(out))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Screenshot the explorer notebook in Chromium.")
    parser.add_argument("--screenshot", type=Path, required=True, help="PNG to write")
    parser.add_argument(
        "--defense", default="", help='a label of its menu, e.g. "quick: ae-rt2-atop"'
    )
    parser.add_argument("--image", type=int, default=0, help="test image (position)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = screenshot_explorer(args.screenshot.resolve(), Path(tmp), args.defense, args.image)
        print(out)
