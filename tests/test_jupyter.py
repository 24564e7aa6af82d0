"""Notebook outputs as a reader sees them: inline figures, the embedded report, tidy outputs,
progress bars that suit where they draw."""

import base64
import io

import nbformat
import pytest
from IPython.core.interactiveshell import InteractiveShell
from matplotlib.figure import Figure
from PIL import Image
from tqdm.auto import tqdm as auto_tqdm

from atop_core.jupyter import (
    KERNEL_SPEC,
    collapse_carriage_returns,
    output_problems,
    report_parts,
    show_figures_inline,
    tidy_notebook,
)
from atop_core.progress import progress


def _png(path, size=(3, 2)):
    Image.new("RGB", size).save(path)
    return path.read_bytes()


def test_outside_ipython_figures_are_left_alone():
    assert show_figures_inline() is False


def test_in_an_ipython_shell_a_bare_figure_displays_as_png():
    shell = InteractiveShell.instance()
    try:
        fig = Figure(figsize=(1, 1))
        fig.subplots().plot([0, 1])
        assert "image/png" not in shell.display_formatter.format(fig)[0]
        assert show_figures_inline() is True
        data = shell.display_formatter.format(fig)[0]["image/png"]  # base64 text
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[0] > 0
    finally:
        InteractiveShell.clear_instance()


def test_report_images_become_embedded_parts_in_reading_order(tmp_path):
    (tmp_path / "figures").mkdir()
    a, b = _png(tmp_path / "figures" / "a.png"), _png(tmp_path / "figures" / "b.png", (5, 5))
    text = "# Report\n\n![a](figures/a.png)\n\nbetween\n\n![b](figures/b.png)\n"
    parts = report_parts(text, tmp_path)
    assert [kind for kind, _ in parts] == ["markdown", "png", "markdown", "png"]
    assert parts[1][1] == a and parts[3][1] == b
    assert parts[2][1].strip() == "between"


def test_a_missing_report_figure_is_an_error_not_a_broken_image(tmp_path):
    with pytest.raises(FileNotFoundError):
        report_parts("![a](figures/missing.png)", tmp_path)


def test_carriage_return_redraws_collapse_to_what_a_terminal_shows():
    assert collapse_carriage_returns("a 0%\ra 50%\ra 100%\nnext\n") == "a 100%\nnext\n"


def _executed(*outputs, kernel="Python 3"):
    book = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("x")
    cell.outputs = [nbformat.from_dict(o) for o in outputs]
    book.cells = [cell]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": kernel, "language": "python"}
    return book


def _stream(text, name="stdout"):
    return {"output_type": "stream", "name": name, "text": text}


def test_tidying_names_machine_folders_collapses_bars_and_fixes_the_kernel_name():
    book = _executed(_stream("step 1\rstep 2\nsaved /home/u/atop/results/x.json\n"))
    tidy = tidy_notebook(book, {"/home/u/atop": "$ATOP_HOME", "/home/u": "~"})
    assert tidy.cells[0].outputs[0]["text"] == "step 2\nsaved $ATOP_HOME/results/x.json\n"
    assert tidy.metadata["kernelspec"] == KERNEL_SPEC
    assert output_problems(tidy) == []


def test_papermills_record_of_the_run_names_folders_like_the_outputs():
    book = _executed(_stream("done\n"), kernel=KERNEL_SPEC["display_name"])
    book.metadata["papermill"] = {
        "input_path": "notebooks/10_train_classifier.ipynb",
        "output_path": "/home/u/atop/outputs/quick/cifar10/10_train_classifier.ipynb",
    }
    assert output_problems(book) == [
        "papermill's output_path is a machine path "
        "(/home/u/atop/outputs/quick/cifar10/10_train_classifier.ipynb)"
    ]
    tidy = tidy_notebook(book, {"/home/u/atop": "$ATOP_HOME"})
    assert tidy.metadata["papermill"]["output_path"] == (
        "$ATOP_HOME/outputs/quick/cifar10/10_train_classifier.ipynb"
    )
    assert tidy.metadata["papermill"]["input_path"] == "notebooks/10_train_classifier.ipynb"
    assert output_problems(tidy) == []


@pytest.mark.parametrize(
    ("output", "problem"),
    [
        ({"output_type": "execute_result", "execution_count": 1, "metadata": {},
          "data": {"text/plain": "<Figure size 560x280 with 1 Axes>"}}, "figure shown as text"),
        (_stream("saved /tmp/abc/results/r.json\n"), "machine path"),
        (_stream("progress 3/3\n", "stderr"), "stderr"),
        (_stream("UserWarning: careful\n"), "warning"),
        (_stream("1%\r2%\n"), "progress redraws"),
        ({"output_type": "display_data", "metadata": {},
          "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "m1"},
                   "text/plain": "VBox()"}}, "widget saved without its state"),
    ],
)  # fmt: skip
def test_each_thing_a_reader_should_not_see_is_reported(output, problem):
    problems = output_problems(_executed(output, kernel=KERNEL_SPEC["display_name"]))
    assert len(problems) == 1 and problem in problems[0], problems


def test_a_widget_whose_state_was_saved_is_fine_and_an_old_kernel_name_is_reported():
    widget = {"output_type": "display_data", "metadata": {},
              "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "m1"}}}  # fmt: skip
    book = _executed(widget)
    state = {"application/vnd.jupyter.widget-state+json": {"state": {"m1": {}}}}
    book.metadata["widgets"] = state
    assert output_problems(book) == ["kernel display name is not 'Python 3 (ipykernel)'"]


def test_text_progress_draws_on_stdout(monkeypatch, capsys):
    monkeypatch.setenv("ATOP_PROGRESS", "text")
    for _ in progress(range(3), desc="counting"):
        pass
    out, err = capsys.readouterr()
    assert "counting" in out and "3/3" in out and err == ""


def test_auto_progress_is_tqdm_auto(monkeypatch):
    monkeypatch.delenv("ATOP_PROGRESS", raising=False)
    with progress(range(1), disable=True) as bar:
        assert isinstance(bar, auto_tqdm)


def test_a_bad_progress_setting_names_the_variable_and_the_choices(monkeypatch):
    monkeypatch.setenv("ATOP_PROGRESS", "widgets")
    with pytest.raises(ValueError, match="ATOP_PROGRESS must be one of auto, text, got 'widgets'"):
        progress(range(1))
