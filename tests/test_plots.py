"""Figures: each returns a labelled Figure from small synthetic data, and
`save_figure` writes PNG and PDF whole or not at all."""

import matplotlib
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

from atop_core import plots
from atop_core.analysis import mix_number_analysis, readings_frame, rt_stages
from atop_core.config import TransformConfig
from atop_core.io import write_json

matplotlib.use("Agg")  # headless: no display in tests or CI

SIZE = 32
CLASSES = [f"class{i}" for i in range(10)]


class FillGray(nn.Module):
    def forward(self, copies, keep):
        return copies * keep + 0.5 * (1 - keep)


def _images(b=3, seed=0):
    return torch.rand(b, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _labelled(ax) -> bool:
    return bool(ax.get_xlabel()) and bool(ax.get_ylabel())


def _record(name, attack, eps=8 / 255, steps=10, eot=2, acc=0.4, unreliable=None):
    return {
        "dataset": "cifar10",
        "profile": "smoke",
        "protocol": "whole-model",
        "defense": {"name": name},
        "attack": {"name": attack, "eps": eps, "steps": steps, "eot": eot},
        "draws": 3,
        "n": 64,
        "accuracy": {k: acc for k in ("single", "vote", "worst")},
        "interval": {k: [acc - 0.1, acc + 0.1] for k in ("single", "vote", "worst")},
        "unreliable": unreliable,
    }


def _eps_frame(unreliable=None):
    records = []
    for name, base in (("defense-a", 0.8), ("defense-b", 0.6)):
        records.append(_record(name, "clean", acc=base))
        records += [
            _record(name, "pgd-eot", eps=e / 255, acc=base / (1 + e), unreliable=unreliable)
            for e in (2, 4, 8)
        ]
    return readings_frame(records)


# --- save_figure ----------------------------------------------------------------------------


def _figure():
    fig = Figure()
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1])
    ax.set(xlabel="x", ylabel="y")
    return fig


def test_save_figure_writes_png_and_pdf_beside_each_other(tmp_path):
    png, pdf = plots.save_figure(_figure(), tmp_path / "figs" / "fig-eps0.03")
    assert (png.name, pdf.name) == ("fig-eps0.03.png", "fig-eps0.03.pdf")
    assert png.read_bytes().startswith(b"\x89PNG") and pdf.read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in png.parent.iterdir()) == [pdf.name, png.name]  # no temp files


def test_a_failed_save_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "fig"
    plots.save_figure(_figure(), target)
    old_pdf = (tmp_path / "fig.pdf").read_bytes()
    fig = _figure()
    real = fig.savefig

    def fail_on_pdf(buf, format, **kw):
        real(buf, format=format, **kw)
        if format == "pdf":
            raise OSError("disk full")

    monkeypatch.setattr(fig, "savefig", fail_on_pdf)
    with pytest.raises(OSError):
        plots.save_figure(fig, target)
    assert (tmp_path / "fig.pdf").read_bytes() == old_pdf
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.pdf", "fig.png"]


def test_the_same_figure_saves_to_the_same_pdf(tmp_path):
    plots.save_figure(_figure(), tmp_path / "a")
    plots.save_figure(_figure(), tmp_path / "b")
    assert (tmp_path / "a.pdf").read_bytes() == (tmp_path / "b.pdf").read_bytes()


# --- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, columns",
    [
        (TransformConfig(kind="rt1"), 3),  # input, masked, purified
        (TransformConfig(kind="rt2"), 4),  # + noisy
        (TransformConfig(kind="rt3"), 11),  # input, noisy, 4 copies, 4 fills, combined
    ],
)
def test_figure2_has_a_titled_column_per_stage(cfg, columns):
    stages = rt_stages(FillGray(), cfg, _images(3), seed=0)
    fig = plots.figure2_random_transforms(stages, rows=(0, 2), row_labels=["cat", "dog"])
    axes = fig.axes
    assert isinstance(fig, Figure) and len(axes) == 2 * columns
    assert all(ax.get_title() for ax in axes[:columns])
    assert [axes[0].get_ylabel(), axes[columns].get_ylabel()] == ["cat", "dog"]
    assert fig.get_suptitle().startswith(cfg.kind.upper())


def test_figure2_fills_show_only_the_blocks_each_copy_lost():
    stages = rt_stages(FillGray(), TransformConfig(kind="rt3"), _images(1), seed=0)
    fig = plots.figure2_random_transforms(stages, rows=(0,))
    fill = fig.axes[6].get_images()[0].get_array()  # first fill, after input, noisy, 4 copies
    lost = (1 - stages.keep[0, 0, 0]).bool().numpy()
    assert (fill[lost] == 0.5).all() and (fill[~lost] == 0).all()


def test_purified_examples_label_predictions_right_and_wrong():
    x, labels = _images(2), torch.tensor([3, 5])
    images = {"clean": x, "purified": x}
    preds = {"clean": torch.tensor([3, 5]), "purified": torch.tensor([3, 1])}
    fig = plots.purified_examples(images, preds, labels, CLASSES, title="t")
    axes = fig.axes  # row-major: kinds down, images across
    assert [ax.get_xlabel() for ax in axes] == [
        "f: class3 ✓",
        "f: class5 ✓",
        "f: class3 ✓",
        "f: class1 ✗",
    ]
    assert axes[3].xaxis.label.get_color() == plots.WRONG
    assert [axes[0].get_title(), axes[1].get_title()] == ["true: class3", "true: class5"]
    assert axes[0].get_ylabel() == "clean"


# --- mix number -------------------------------------------------------------------------------


def test_mix_number_surface_is_a_labelled_heatmap_per_quantity():
    x = _images(2)
    frame = mix_number_analysis(x, (x + 0.02).clamp(0, 1), [0.1, 0.5], [1, 2, 3], 0.1, 8)
    fig = plots.mix_number_surface(frame)
    heatmaps = [ax for ax in fig.axes if ax.get_title()]
    assert len(heatmaps) == 2 and all(_labelled(ax) for ax in heatmaps)
    colorbar = [ax for ax in fig.axes if ax not in heatmaps]
    assert len(colorbar) == 1 and colorbar[0].get_ylabel() == plots.SURFACE_UNITS
    assert [t.get_text() for t in heatmaps[0].get_yticklabels()] == ["0.50", "0.10"]
    assert "8×8 grid" in fig.get_suptitle()


# --- accuracy curves ----------------------------------------------------------------------------


def test_robust_vs_eps_draws_a_line_per_defense_with_wilson_bars():
    fig = plots.robust_vs_eps(_eps_frame())
    ax = fig.axes[0]
    assert _labelled(ax) and "1/255" in ax.get_xlabel() and "%" in ax.get_ylabel()
    assert len(ax.containers) == 2  # one errorbar per defense
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b"]
    line = ax.containers[0].lines[0]
    assert list(line.get_xdata()) == [0, 2, 4, 8]
    assert line.get_ydata()[0] == pytest.approx(80.0)  # clean accuracy, in percent


def test_unreliable_points_get_one_legend_entry():
    fig = plots.robust_vs_eps(_eps_frame(unreliable=True))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["a", "b", plots.UNRELIABLE]


def test_two_records_at_one_budget_are_refused_not_averaged():
    frame = pd.concat([_eps_frame(), readings_frame([_record("defense-a", "fgsm")])])
    with pytest.raises(ValueError, match="several records"):
        plots.robust_vs_eps(frame)
    assert plots.robust_vs_eps(frame, attack=["clean", "pgd-eot"]).axes


@pytest.mark.parametrize("budget, values", [("steps", [1, 5, 20, 100]), ("eot", [1, 2, 4])])
def test_robust_vs_budget_puts_the_budget_on_x(budget, values):
    records = [_record("defense-a", "pgd-eot", **{budget: v}) for v in values]
    fig = plots.robust_vs_budget(readings_frame(records), budget, reading="worst")
    ax = fig.axes[0]
    assert ax.get_xlabel() == plots.BUDGET_LABELS[budget] and "worst" in ax.get_ylabel()
    assert list(ax.containers[0].lines[0].get_xdata()) == values
    assert ax.get_xscale() == ("log" if budget == "steps" else "linear")


def test_unknown_budget_and_empty_selection_are_refused():
    with pytest.raises(ValueError, match="unknown budget"):
        plots.robust_vs_budget(_eps_frame(), "restarts")
    with pytest.raises(ValueError, match="no records"):
        plots.robust_vs_eps(_eps_frame(), attack="autoattack")


# --- training curves ----------------------------------------------------------------------------

LOGS = {
    "classifier": [
        {"epoch": 1, "loss": 1.5, "acc": 0.4, "eval_acc": 0.5},
        {"epoch": 2, "loss": 1.2, "acc": 0.6, "eval_acc": 0.62},
    ],
    "purifier": [{"epoch": 1, "l1": 0.08, "eval_acc": 0.3}],
}


def test_training_curves_has_a_labelled_panel_per_metric_in_percent():
    fig = plots.training_curves(LOGS)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in panels] == [
        plots.METRIC_LABELS[m] for m in ("loss", "l1", "acc", "eval_acc")
    ]
    assert all(ax.get_xlabel() == "epoch" for ax in panels)
    eval_lines = {line.get_label(): list(line.get_ydata()) for line in panels[3].lines}
    assert eval_lines == {"classifier": [50.0, 62.0], "purifier": [30.0]}
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["classifier", "purifier"]


def test_training_curves_refuse_logs_without_known_metrics():
    with pytest.raises(ValueError, match="none of"):
        plots.training_curves({"run": [{"epoch": 1, "train_s": 3.0}]})


def test_read_training_logs_names_runs_without_their_config_hash(tmp_path):
    write_json(tmp_path / "classifier-small-none-07dbd93169dc.log.json", LOGS["classifier"])
    write_json(tmp_path / "purifier-ae-rt2-atop-e9d32f5541da.log.json", LOGS["purifier"])
    write_json(tmp_path / "defense-ae-rt2-atop.json", {"not": "a log"})
    logs = plots.read_training_logs(tmp_path)
    assert logs == {
        "classifier-small-none": LOGS["classifier"],
        "purifier-ae-rt2-atop": LOGS["purifier"],
    }
    assert list(plots.read_training_logs(tmp_path, "purifier-*.log.json")) == [
        "purifier-ae-rt2-atop"
    ]
