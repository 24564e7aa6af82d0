"""Every figure: each function takes computed data (analysis.py, records, training logs) and
returns a matplotlib Figure; `save_figure` writes it as PNG and PDF, atomically.

Figures are built on `matplotlib.figure.Figure` directly, not through pyplot, so no global figure
state grows and any backend works (Jupyter shows a returned Figure). Sizes suit a two-column
paper page (about 7 inches wide) with 8-point text.
"""

import io
import re
from collections.abc import Mapping, Sequence
from functools import wraps
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullLocator
from matplotlib.transforms import ScaledTranslation
from torch import Tensor

from atop_core.analysis import TransformStages
from atop_core.io import read_json, write_bytes_atomic

PAGE_WIDTH_IN = 7.0  # a two-column paper's text width
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "image.interpolation": "nearest",  # 32-pixel images: show the pixels, not a blur
    "pdf.fonttype": 42,  # embed TrueType, so the PDF's text stays text
}
PNG_DPI = 200
RIGHT, WRONG = "#1a7f37", "#cf222e"  # prediction right / wrong
SURFACE_UNITS = "100 × mean |Δ| (pixels on [0, 1])"
MIX_TITLES = {
    "masked_perturbation": "(i) perturbation left after masking\n|mix(x′) − mix(x)|",
    "noise_residual": "(ii) noise left after mixing M copies\n|mix(x′ + noise) − mix(x′)|",
}
METRIC_LABELS = {  # per-epoch log keys written by train.fit -> axis labels with units
    "loss": "classifier CE loss (nats)",
    "ce": "CE through frozen f (nats)",
    "l1": "ℓ1 error (mean |Δ| on [0,1])",
    "g_adv": "generator hinge loss",
    "d": "discriminator hinge loss",
    "acc": "training accuracy (%)",
    "eval_acc": "held-out accuracy (%)",
}
PERCENT_METRICS = ("acc", "eval_acc")
DODGE_PT = 3.0  # sideways nudge between defenses at one x, in points
UNRELIABLE = "unreliable (failed a sanity check)"
READING_LABELS = {"single": "single draw", "vote": "majority vote", "worst": "worst of K draws"}
BUDGET_LABELS = {"steps": "attack steps (iterations)", "eot": "EOT samples per gradient step"}
CONFIG_HASH = re.compile(r"-[0-9a-f]{12}$")  # the config hash ending a training-stage file name


def _styled(make):
    """Build the figure under `STYLE`, which sets text sizes as the artists are created."""

    @wraps(make)
    def build(*args, **kwargs) -> Figure:
        with mpl.rc_context(STYLE):
            return make(*args, **kwargs)

    return build


def save_figure(fig: Figure, path: str | Path) -> tuple[Path, Path]:
    """Write `path`.png and `path`.pdf (`path` has no suffix), each whole or not at all; the PDF
    carries no creation date, so the same figure gives the same file."""
    written = []
    for fmt, extra in (("png", {"dpi": PNG_DPI}), ("pdf", {"metadata": {"CreationDate": None}})):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, **extra)
        target = Path(f"{path}.{fmt}")
        write_bytes_atomic(target, buf.getvalue())
        written.append(target)
    return written[0], written[1]


def _show(ax, image: Tensor) -> None:
    """A (C, H, W) [0,1] image, without ticks or grid (labels stay usable)."""
    ax.imshow(image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy(), vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


# --- images ----------------------------------------------------------------------------------


def _stage_columns(stages: TransformStages, fills_only: bool) -> list[tuple[str, Tensor]]:
    """(title, (B, C, H, W) images) per column: input, noisy, K copies, K fills, combined."""
    k = stages.copies.shape[0]
    cols = [("input\n$x$", stages.input)]
    if stages.kind in ("rt2", "rt3"):
        cols.append(("noisy\n$x + n$", stages.noisy))
    if k == 1:
        return cols + [
            ("masked\n$t(x)$", stages.copies[0]),
            ("purified\n$g(t(x))$", stages.filled[0]),
        ]
    cols += [(f"copy {i + 1}\n$t_{i + 1}(x)$", stages.copies[i]) for i in range(k)]
    fills = stages.filled * (1 - stages.keep) if fills_only else stages.filled
    what = "fill {0}\n$m_{0} \\odot g(t_{0})$" if fills_only else "purified {0}\n$g(t_{0})$"
    cols += [(what.format(i + 1), fills[i]) for i in range(k)]
    return cols + [("combined\n$\\hat{x}$", stages.combined)]


@_styled
def figure2_random_transforms(
    stages: TransformStages,
    rows: Sequence[int] = (0, 1),
    fills_only: bool = True,
    row_labels: Sequence[str] | None = None,
) -> Figure:
    """The paper's Figure 2 on real images: input, noise, N masked copies, their completions,
    and the combination x̂ = Σ_i m_i ⊙ g(t_i(x)); `rows` picks images of the batch, `row_labels`
    names them (e.g. their classes). Black pixels are missing (zero)."""
    cols = _stage_columns(stages, fills_only)
    rows = [r for r in rows if r < stages.input.shape[0]]
    side = min(1.0, PAGE_WIDTH_IN / len(cols))
    fig = Figure(figsize=(side * len(cols), side * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(cols), squeeze=False)
    for r, row in enumerate(rows):
        for c, (title, images) in enumerate(cols):
            _show(axes[r, c], images[row])
            if r == 0:
                axes[r, c].set_title(title, fontsize=7)
        axes[r, 0].set_ylabel(row_labels[r] if row_labels else f"image {row}")
    note = "; $m_i$: the blocks copy $i$ lost" if stages.copies.shape[0] > 1 else ""
    fig.suptitle(f"{stages.kind.upper()}, one draw (black: missing pixels{note})")
    return fig


@_styled
def purified_examples(
    images: Mapping[str, Tensor],
    predictions: Mapping[str, Tensor],
    labels: Tensor,
    class_names: Sequence[str],
    max_images: int = 8,
    title: str | None = None,
) -> Figure:
    """A grid: one column per image, one row per kind (clean, adversarial, purified clean,
    purified adversarial, from `analysis.purify_examples`); under each, the classifier's
    prediction, green with ✓ when right, red with ✗ when wrong."""
    n, kinds = min(max_images, len(labels)), list(images)
    side = min(1.0, PAGE_WIDTH_IN / n)
    fig = Figure(figsize=(side * n + 0.4, (side + 0.3) * len(kinds) + 0.2), layout="constrained")
    axes = fig.subplots(len(kinds), n, squeeze=False)
    for c in range(n):
        truth = int(labels[c])
        axes[0, c].set_title(f"true: {class_names[truth]}", fontsize=7)
        for r, kind in enumerate(kinds):
            ax, pred = axes[r, c], int(predictions[kind][c])
            _show(ax, images[kind][c])
            ok = pred == truth
            ax.set_xlabel(
                f"f: {class_names[pred]} {'✓' if ok else '✗'}",
                color=RIGHT if ok else WRONG,
                fontsize=7,
            )
    for r, kind in enumerate(kinds):
        axes[r, 0].set_ylabel(kind.replace(" ", "\n", 1))
    if title:
        fig.suptitle(title)
    return fig


# --- the missing-rate × mix-number analysis ----------------------------------------------------


@_styled
def mix_number_surface(
    frame: pd.DataFrame, values: Sequence[str] = ("masked_perturbation", "noise_residual")
) -> Figure:
    """Heatmaps of `analysis.mix_number_analysis` (clearer than the authors' 3-D surface): mix
    number across, missing rate up, one panel per quantity on one shared colour scale."""
    vmax = float(frame[list(values)].to_numpy().max())
    fig = Figure(figsize=(3.4 * len(values) + 0.6, 3.2), layout="constrained")
    axes = fig.subplots(1, len(values), squeeze=False)[0]
    for i, (ax, value) in enumerate(zip(axes, values, strict=True)):
        grid = frame.pivot(index="missing_rate", columns="mix_number", values=value)
        grid = grid.sort_index(ascending=False)  # the highest missing rate on top
        sns.heatmap(
            grid,
            ax=ax,
            vmin=0.0,
            vmax=vmax,
            cmap="viridis",
            annot=grid.size <= 100,
            fmt=".1f",
            annot_kws={"fontsize": 6},
            cbar=i == len(values) - 1,
            cbar_kws={"label": SURFACE_UNITS},
            yticklabels=[f"{r:.2f}" for r in grid.index],
        )
        ax.grid(False)
        ax.set_xlabel("mix number M (masked copies averaged)")
        ax.set_ylabel("missing rate r (fraction masked)")
        ax.set_title(MIX_TITLES.get(value, value))
    grid, std = frame["grid"].iloc[0], frame["noise_std"].iloc[0]
    fig.suptitle(
        f"masks on a {grid}×{grid} grid, noise σ = {std:.3g} ({std * 255:.3g}/255), "
        f"n = {frame['n'].iloc[0]} images"
    )
    return fig


# --- robust accuracy ---------------------------------------------------------------------------


def _select(frame: pd.DataFrame, x: str, reading: str, attack: str | Sequence[str] | None):
    """The rows to draw: one reading, the named attack(s), one row per (defense, x)."""
    data = frame[(frame["reading"] == reading) & frame[x].notna()]
    if attack is not None:
        data = data[data["attack"].isin([attack] if isinstance(attack, str) else attack)]
    if data.empty:
        raise ValueError(
            f"no records with reading {reading!r}, attack {attack!r} and a {x} to plot"
        )
    dup = data.duplicated(["defense", x])
    if dup.any():
        raise ValueError(
            f"several records per (defense, {x}) for {sorted(data[dup]['defense'].unique())}; "
            "filter the frame to one attack, protocol and fixed other budgets first"
        )
    return data


def _budget_axis(ax, values: np.ndarray) -> None:
    """Log-2 spacing when the budgets span 8× or more (symmetric-log when 0, clean accuracy,
    is among them), with a tick at every budget measured."""
    positive = values[values > 0]
    if len(positive) and positive.max() / positive.min() >= 8:
        if values.min() > 0:
            ax.set_xscale("log", base=2)
        else:
            ax.set_xscale("symlog", base=2, linthresh=positive.min(), linscale=0.5)
    ticks = np.unique(values)
    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
    ax.xaxis.set_minor_locator(NullLocator())


def _draw_defense(ax, d: pd.DataFrame, x: str, shift_pt: float, color, label: str) -> list:
    """One defense's line with Wilson bars, nudged `shift_pt` points sideways so bars at one x
    don't hide each other; crosses on records that failed a sanity check. Returns the legend
    handles: the line, then a cross if any."""
    nudge = ax.transData + ScaledTranslation(shift_pt / 72, 0, ax.figure.dpi_scale_trans)
    d = d.sort_values(x)
    xs, acc = d[x].to_numpy(dtype=float), 100 * d["accuracy"].to_numpy()
    err = np.vstack([acc - 100 * d["lo"].to_numpy(), 100 * d["hi"].to_numpy() - acc])
    style = {"marker": "o", "ms": 4, "capsize": 2, "color": color, "transform": nudge}
    handles = [ax.errorbar(xs, acc, yerr=err, label=label, **style)]
    ax.update_datalim(np.column_stack([xs, acc]))  # nudged artists don't autoscale
    bad = d["unreliable"].to_numpy(dtype=bool)
    if bad.any():
        cross = {"ms": 8, "transform": nudge, "label": UNRELIABLE}
        handles += ax.plot(xs[bad], acc[bad], "kx", **cross)
    return handles


def _accuracy_lines(
    frame: pd.DataFrame, x: str, xlabel: str, reading: str, attack: str | Sequence[str] | None
) -> Figure:
    """Accuracy (%) against column `x`, one line per defense, Wilson 95% error bars."""
    data = _select(frame, x, reading, attack)
    fig = Figure(figsize=(PAGE_WIDTH_IN * 0.8, 2.8), layout="constrained")
    ax = fig.subplots()
    groups = list(data.groupby("defense", sort=True))
    palette = sns.color_palette("colorblind", len(groups))
    lines, crosses = [], []
    for i, (color, (name, d)) in enumerate(zip(palette, groups, strict=True)):
        shift = DODGE_PT * (i - (len(groups) - 1) / 2)
        line, *cross = _draw_defense(ax, d, x, shift, color, name.removeprefix("defense-"))
        lines, crosses = lines + [line], crosses + cross
    _budget_axis(ax, data[x].to_numpy(dtype=float))
    ax.autoscale_view()
    ax.set(xlabel=xlabel, ylabel=f"accuracy, {READING_LABELS[reading]} (%)", ylim=(-3, 103))
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(f"{', '.join(sorted(data['attack'].unique()))} (error bars: Wilson 95%)")
    fig.legend(handles=lines + crosses[:1], loc="outside right upper", title="defense")
    return fig


@_styled
def robust_vs_eps(
    frame: pd.DataFrame, reading: str = "vote", attack: str | Sequence[str] | None = None
) -> Figure:
    """Robust accuracy against the L∞ budget ε (in 1/255 units), one line per defense, from
    `analysis.readings_frame` (where clean accuracy sits at ε = 0)."""
    return _accuracy_lines(frame, "eps_255", "ε (L∞, units of 1/255)", reading, attack)


@_styled
def robust_vs_budget(
    frame: pd.DataFrame,
    budget: str = "steps",
    reading: str = "vote",
    attack: str | Sequence[str] | None = None,
) -> Figure:
    """Robust accuracy against the attack's steps or EOT samples (`budget` = "steps" | "eot"):
    a sound evaluation flattens out as the budget grows."""
    if budget not in BUDGET_LABELS:
        raise ValueError(f"unknown budget {budget!r}; known: {', '.join(BUDGET_LABELS)}")
    return _accuracy_lines(frame, budget, BUDGET_LABELS[budget], reading, attack)


# --- training curves ---------------------------------------------------------------------------


def read_training_logs(directory: str | Path, pattern: str = "*.log.json") -> dict[str, list]:
    """{run name: per-epoch log} for the `.log.json` files `train.fit` wrote under `directory`;
    names drop the config hash (classifier-small-none-07dbd93169dc -> classifier-small-none)."""
    logs = {}
    for path in sorted(Path(directory).glob(pattern)):
        name = CONFIG_HASH.sub("", path.name.removesuffix(".log.json"))
        logs[name] = read_json(path)
    return logs


@_styled
def training_curves(
    logs: Mapping[str, Sequence[Mapping]], metrics: Sequence[str] | None = None
) -> Figure:
    """One panel per logged metric against the epoch, one line per run (a one-epoch run is a
    point). Accuracies are shown in percent."""
    present = {k for log in logs.values() for entry in log for k in entry}
    metrics = metrics or [m for m in METRIC_LABELS if m in present]
    if not metrics:
        raise ValueError(f"none of {', '.join(METRIC_LABELS)} in the logs; found {present}")
    ncols = min(3, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig = Figure(figsize=(PAGE_WIDTH_IN, 2.1 * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    palette = dict(zip(logs, sns.color_palette("colorblind", len(logs)), strict=True))
    last = max(e["epoch"] for log in logs.values() for e in log)
    for ax, metric in zip(axes, metrics, strict=False):
        scale = 100.0 if metric in PERCENT_METRICS else 1.0
        for name, log in logs.items():
            points = [(e["epoch"], scale * e[metric]) for e in log if metric in e]
            if points:
                ax.plot(
                    *zip(*points, strict=True), marker="o", ms=3, color=palette[name], label=name
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0.5, last + 0.5)  # a one-epoch run gets a sensible axis too
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    handles = {}
    for ax in axes:
        handles.update(zip(*ax.get_legend_handles_labels()[::-1], strict=True))  # label -> handle
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=3, title="run")
    return fig


@_styled
def loss_traces(traces: Mapping[str, Sequence[float]]) -> Figure:
    """The attack's loss per iterate (cross-entropy, mean over the draws and the images), one
    line per record: a curve still rising at the end is the incomplete-optimisation indicator."""
    if not traces:
        raise ValueError("no traced records: only PGD-EOT, BPDA+EOT and StAdv trace their loss")
    fig = Figure(figsize=(PAGE_WIDTH_IN, 3.2), layout="constrained")
    ax = fig.subplots()
    palette = sns.color_palette("colorblind", 10)  # ten colours, then a new line style
    for i, (name, curve) in enumerate(traces.items()):
        style = ("-", "--", ":")[i // 10 % 3]
        ax.plot(
            range(len(curve)), curve, style, marker="o", ms=2.5, color=palette[i % 10], label=name
        )
    ax.set_xlabel("iterate (0: the random start; the last is the final point, scored only)")
    ax.set_ylabel("attack loss: CE (nats)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(loc="outside right center", title="record")
    return fig
