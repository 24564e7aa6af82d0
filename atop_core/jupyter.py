"""What a notebook needs beyond the computation: figures shown inline, the report with its images,
and executed notebooks tidied and checked before they are committed.

Figures are bare `matplotlib.figure.Figure` objects (plots.py), which a kernel shows as an image
only once a PNG formatter is registered for them; `show_figures_inline` does that, and
`experiments.setup` calls it, so every notebook gets it from its first cell.
"""

import re
import sys
from collections.abc import Iterable
from pathlib import Path

import nbformat
from IPython import get_ipython
from IPython.core.pylabtools import select_figure_formats
from IPython.display import Image, Markdown, display

from atop_core.config import ENV_CACHE_DIR, ENV_DATA_DIR, ENV_HOME, PACKAGE_DIR, settings

KERNEL_SPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")
# an absolute path of two folders or more (`/usr/lib/x.py`); URLs and relative paths do not match
MACHINE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.+-]+/){2,}[\w.+-]*")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"  # saved in the notebook's metadata


def show_figures_inline(formats: Iterable[str] = ("png",)) -> bool:
    """Register the running IPython shell's formatter for matplotlib Figures (PNG by default);
    False, and nothing done, outside IPython (a script, a test)."""
    shell = get_ipython()
    if shell is None:
        return False
    select_figure_formats(shell, set(formats))
    return True


def report_parts(markdown: str, base: Path) -> list[tuple[str, object]]:
    """The report as ("markdown", text) and ("png", bytes) parts in reading order: its image links
    (relative to `base`, the report's folder) become the images themselves, so the notebook shows
    them wherever it is opened from."""
    parts: list[tuple[str, object]] = []
    last = 0
    for link in IMAGE_LINK.finditer(markdown):
        parts.append(("markdown", markdown[last : link.start()]))
        parts.append(("png", (base / link.group(2)).read_bytes()))
        last = link.end()
    parts.append(("markdown", markdown[last:]))
    return [(kind, body) for kind, body in parts if kind == "png" or body.strip()]


def display_report(path: str | Path) -> None:
    """Show REPORT.md in the notebook, its figures embedded as images."""
    path = Path(path)
    for kind, body in report_parts(path.read_text(), path.parent):
        display(Image(data=body, format="png") if kind == "png" else Markdown(body))


def collapse_carriage_returns(text: str) -> str:
    """What a terminal shows of text that redraws lines with '\\r' (text progress bars)."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def _tidy_text(text: str, roots: dict[str, str]) -> str:
    text = collapse_carriage_returns(text)
    for root, name in sorted(roots.items(), key=lambda item: -len(item[0])):
        text = text.replace(root.rstrip("/"), name)
    return text


def tidy_notebook(book: nbformat.NotebookNode, roots: dict[str, str]) -> nbformat.NotebookNode:
    """An executed notebook as a reader should see it: progress bars at their final state, each
    folder of `roots` (absolute path -> short name, e.g. the ATOP_HOME -> "$ATOP_HOME") written as
    its name (in outputs and in papermill's record of the run's paths), and the kernel named as
    JupyterLab names it (else it marks the notebook edited)."""
    for cell in book.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = _tidy_text(out["text"], roots)
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    out["data"][mime] = _tidy_text(value, roots)
    run = book.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if isinstance(run.get(key), str):
            run[key] = _tidy_text(run[key], roots)
    book.metadata["kernelspec"] = dict(KERNEL_SPEC)
    return book


def machine_roots() -> dict[str, str]:
    """This machine's folders that outputs mention, each with the name a reader sees instead."""
    s = settings()
    roots = {
        str(s.home): f"${ENV_HOME}",
        str(s.cache_dir): f"${ENV_CACHE_DIR}",
        str(PACKAGE_DIR.parent): ".",
        sys.prefix: "$PYTHON_PREFIX",
        str(Path.home()): "~",
    }
    if s.data_dir is not None:
        roots[str(s.data_dir.resolve())] = f"${ENV_DATA_DIR}"
    return roots


def tidy_notebook_file(path: str | Path) -> None:
    """`tidy_notebook` with this machine's roots on a file, rewritten in place."""
    book = nbformat.read(path, as_version=4)
    nbformat.write(tidy_notebook(book, machine_roots()), path)


def _output_text(out: dict) -> str:
    data = out.get("data", {})
    text = out.get("text", "") + "".join(v for k, v in data.items() if k.startswith("text/"))
    return text if isinstance(text, str) else "".join(text)


def output_problems(book: nbformat.NotebookNode) -> list[str]:
    """What a reader should not meet in a committed notebook's outputs: figures shown as text,
    machine paths, warnings or errors, widgets whose state was not saved with the notebook,
    unprocessed progress redraws, and a kernel name that JupyterLab would rewrite on opening."""
    problems = []
    widget_models = book.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    if book.metadata.get("kernelspec", {}).get("display_name") != KERNEL_SPEC["display_name"]:
        problems.append(f"kernel display name is not {KERNEL_SPEC['display_name']!r}")
    for key, value in book.metadata.get("papermill", {}).items():
        if key.endswith("_path") and isinstance(value, str) and MACHINE_PATH.search(value):
            problems.append(f"papermill's {key} is a machine path ({value})")
    for number, cell in enumerate(book.cells, 1):
        for out in cell.get("outputs", []):
            text, data = _output_text(out), out.get("data", {})
            where = f"cell {number}"
            if "<Figure size" in text and "image/png" not in data:
                problems.append(f"{where}: a figure shown as text, not as an image")
            if path := MACHINE_PATH.search(text):
                problems.append(f"{where}: a machine path in an output ({path.group(0)})")
            if out.get("output_type") == "error" or out.get("name") == "stderr":
                problems.append(f"{where}: an error or stderr output ({text.strip()[:80]!r})")
            if "Warning" in text:
                problems.append(f"{where}: a warning in an output ({text.strip()[:80]!r})")
            if WIDGET_MIME in data and data[WIDGET_MIME].get("model_id") not in widget_models:
                problems.append(f"{where}: a widget saved without its state (draws nothing)")
            if "\r" in text:
                problems.append(f"{where}: progress redraws ('\\r') not collapsed")
    return problems


def image_count(book: nbformat.NotebookNode) -> int:
    return sum(
        "image/png" in out.get("data", {}) for c in book.cells for out in c.get("outputs", [])
    )


if __name__ == "__main__":  # python -m atop_core.jupyter NOTEBOOK...: tidy executed notebooks
    for name in sys.argv[1:]:
        tidy_notebook_file(name)
