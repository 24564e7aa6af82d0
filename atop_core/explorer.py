"""The interactive explorer (notebooks/00_explore.ipynb): one test image through the random
transform, the purifier and the frozen classifier, and an attack on that image.

The computation is plain functions that tests call without widgets (`find_defenses`, `explore`,
`attack_image`, `predictions_frame`); `Explorer` wires them to ipywidgets controls.
"""

import dataclasses
import html
import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import ipywidgets as w
import pandas as pd
import torch
from IPython.display import Markdown, display
from matplotlib.figure import Figure
from torch import Tensor

from atop_core.analysis import TransformStages, rt_stages
from atop_core.attacks import AttackConfig, run_attack
from atop_core.config import (
    PROFILES,
    TRANSFORM_KINDS,
    TransformConfig,
    get_profile,
    settings,
)
from atop_core.defense import DefendedModel, load_defense
from atop_core.harness import attack_target
from atop_core.nets.purifiers import resize_to
from atop_core.pipeline import DataBundle, load_bundle, train_chain
from atop_core.plots import figure2_random_transforms
from atop_core.progress import progress
from atop_core.transforms import RandomTransform

PROFILE_ORDER = ("quick", "paper", "smoke")  # the defenses offered first come first
ATTACK_CHOICES = {  # label -> (attack, protocol): what the explorer's attack control offers
    "PGD-EOT, whole model (full gradients)": ("pgd-eot", "whole-model"),
    "BPDA+EOT, whole model (purifier skipped in the gradient)": ("bpda-eot", "whole-model"),
    "PGD on the classifier alone (the authors' protocol)": ("pgd", "classifier-only"),
}
DEFAULT_DEFENSE = "gan-rt2-atop"  # the paper's main defense, shown first when trained
VOTE_DRAWS = 16  # transform draws behind the "majority vote" rows
TOP_K = 3
FIGURE_DPI = 110


# --- the computation ------------------------------------------------------------------------


def find_defenses(dataset: str) -> dict[str, Path]:
    """Every trained defense of `dataset` under the checkpoints folder, labelled
    "profile: file stem", quick-profile defenses first."""
    root = settings().checkpoints_dir
    found = {}
    for profile in PROFILE_ORDER:
        for path in sorted((root / profile / dataset).glob("defense-*.pt")):
            found[f"{profile}: {path.stem.removeprefix('defense-')}"] = path
    return found


def default_defense(labels: list[str]) -> str:
    """The paper's main defense (GAN, RT2, AToP) of the first profile with it, else the first."""
    return next((label for label in labels if label.endswith(DEFAULT_DEFENSE)), labels[0])


def profile_of(label: str) -> str:
    return label.split(":", 1)[0]


@dataclass(frozen=True)
class View:
    """One draw of the defense on an image (and its adversarial copy, once attacked): the stages
    of t and g, row 0 the clean image and row 1 the adversarial one, both under the same draw."""

    stages: TransformStages
    predictions: pd.DataFrame


def _stack(parts: list[TransformStages]) -> TransformStages:
    """Stages of single images, one per row (the per-copy fields stack along the batch axis)."""
    fields = {}
    for f in dataclasses.fields(TransformStages):
        values = [getattr(p, f.name) for p in parts]
        if f.name == "kind":
            fields[f.name] = values[0]
        else:
            fields[f.name] = torch.cat(values, dim=1 if values[0].dim() == 5 else 0)
    return TransformStages(**fields)


def _top(probs: Tensor, classes: list[str]) -> str:
    """ "cat 61%, dog 20%, frog 9%": the `TOP_K` most likely classes of (classes,) probabilities."""
    values, index = probs.topk(min(TOP_K, probs.numel()))
    pairs = zip(values.tolist(), index.tolist(), strict=True)
    return ", ".join(f"{classes[i]} {p:.0%}" for p, i in pairs if p >= 0.005)  # shown as >= 1%


@torch.no_grad()
def predictions_frame(
    defense: DefendedModel, images: dict[str, Tensor], stages: TransformStages, classes: list[str]
) -> pd.DataFrame:
    """Per image: the bare classifier's top classes on it, on this draw's purified image, and the
    share of votes over `VOTE_DRAWS` fresh draws of the defense (a random defense is judged on
    many draws, not one)."""
    rows = []
    for row, (name, x) in enumerate(images.items()):
        x = x[None]
        purified = resize_to(stages.combined[row : row + 1].to(x.device), x.shape[-2:])
        votes = defense.draw_logits(x, VOTE_DRAWS).argmax(-1).flatten()
        shares = torch.bincount(votes, minlength=len(classes)).float() / VOTE_DRAWS
        probs = defense.classifier(torch.cat([x, purified])).softmax(-1)
        rows.append((f"{name} image x", _top(probs[0], classes)))
        rows.append((f"{name}, this draw g(t(x))", _top(probs[1], classes)))
        rows.append((f"{name}, votes of {VOTE_DRAWS} draws", _top(shares, classes)))
    return pd.DataFrame(rows, columns=["what f classifies", f"top {TOP_K} classes"])


def explore(
    defense: DefendedModel,
    transform: TransformConfig,
    x: Tensor,
    classes: list[str],
    seed: int,
    x_adv: Tensor | None = None,
) -> View:
    """The defense, its transform replaced by `transform`, on one image x (C, H, W) in [0, 1]: one
    draw seeded by `seed`; with `x_adv`, the attacked image under that same draw as row 2."""
    defense.transform = RandomTransform(transform, seed=seed)
    device = next(defense.classifier.parameters()).device
    images = {"clean": x} if x_adv is None else {"clean": x, "attacked": x_adv}
    images = {k: v.to(device) for k, v in images.items()}
    stages = _stack(
        [rt_stages(defense.purifier, transform, im[None], seed) for im in images.values()]
    )
    return View(stages, predictions_frame(defense, images, stages, classes))


def attack_image(
    defense: DefendedModel,
    choice: str,
    x: Tensor,
    y: int,
    eps: float,
    steps: int,
    eot: int,
    seed: int,
    on_step: Callable[[], None] | None = None,
) -> Tensor:
    """An adversarial copy of one image x (C, H, W) by the attack labelled `choice` in
    `ATTACK_CHOICES`, through the library's registry; `on_step` is called on every forward
    pass of the classifier while the attack runs (a progress bar's tick)."""
    name, protocol = ATTACK_CHOICES[choice]
    draws = eot if protocol == "whole-model" else 1  # the bare classifier has no randomness
    cfg = AttackConfig(name, eps=eps, steps=steps, eot=draws, seed=seed)
    device = next(defense.classifier.parameters()).device
    defense.transform.seed(seed)

    def tick(*_) -> None:  # a forward hook that returns None leaves the output alone
        if on_step is not None:
            on_step()

    hook = defense.classifier.register_forward_hook(tick)
    try:
        target = attack_target(defense, protocol)
        x_adv = run_attack(target, cfg, x.unsqueeze(0).to(device), torch.tensor([y], device=device))
    finally:
        hook.remove()
    return x_adv[0].cpu()


def view_figure(view: View, labels: list[str]) -> Figure:
    return figure2_random_transforms(view.stages, rows=range(len(labels)), row_labels=labels)


def png(fig: Figure) -> bytes:
    """The figure as PNG at the explorer's resolution (`FIGURE_DPI`)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI)
    return buf.getvalue()


# --- the widgets ----------------------------------------------------------------------------


def _error_html(message: str) -> str:
    return f"<div style='color:#cf222e'><b>Not drawn:</b> {html.escape(message)}</div>"


class Explorer:
    """Controls and views for one dataset; `widget` is what the notebook displays."""

    def __init__(self, dataset: str, device: torch.device, seed: int = 0, image: int = 0) -> None:
        self.dataset, self.device = dataset, device
        self.data: DataBundle | None = None
        self.defense: DefendedModel | None = None
        self.x_adv: Tensor | None = None
        self.paths: dict[str, Path] = {}
        self.data_profile = ""
        self.view: View | None = None
        self._hold = False  # True while a new defense sets the controls
        self._build_controls(seed, image)
        self._load_defenses()

    # controls
    def _build_controls(self, seed: int, image: int) -> None:
        label = {"style": {"description_width": "110px"}}
        slider = {"continuous_update": False, **label}  # redraw on release, not on every pixel
        wide = {"layout": {"width": "460px"}, **label}
        self.defense_choice = w.Dropdown(description="defense", **wide)
        self.image = w.IntSlider(image, 0, 0, description="test image", **slider)
        self.kind = w.ToggleButtons(options=[k.upper() for k in TRANSFORM_KINDS[1:]], value="RT2")
        self.noise = w.FloatSlider(
            0.25, min=0, max=0.5, step=0.01, description="noise std", **slider
        )
        self.rate = w.FloatSlider(
            0.25, min=0, max=1, step=0.05, description="missing rate", **slider
        )
        self.grid = w.BoundedIntText(8, min=1, max=256, description="grid (blocks)", **label)
        self.masks = w.IntSlider(4, 2, 8, description="N (RT3 masks)", **slider)
        self.partition = w.Checkbox(True, description="RT3 masks partition the blocks (rate 1/N)")
        self.seed = w.IntText(seed, description="seed", **label)
        self.redraw = w.Button(description="redraw", icon="refresh", tooltip="the next seed")
        self.attack = w.Dropdown(options=list(ATTACK_CHOICES), description="attack", **wide)
        self.eps = w.IntSlider(8, 1, 32, description="ε (/255)", **slider)
        self.steps = w.IntSlider(10, 1, 100, description="steps", **slider)
        self.eot = w.IntSlider(4, 1, 32, description="EOT draws", **slider)
        self.run_attack = w.Button(description="attack", icon="bolt", button_style="danger")
        self.clear = w.Button(description="clear attack")
        self.picture = w.Image(format="png")
        self.table = w.HTML()
        self.message = w.HTML()
        self.log = w.Output()
        self.train = w.Button(description="train smoke defenses", icon="play", button_style="info")
        drawn_from = (self.image, self.kind, self.noise, self.rate, self.grid, self.masks)
        for control in (*drawn_from, self.partition, self.seed):
            control.observe(self._on_change, "value")
        self.defense_choice.observe(lambda _: self._select_defense(), "value")
        self.redraw.on_click(lambda _: setattr(self.seed, "value", self.seed.value + 1))
        self.run_attack.on_click(lambda _: self._attack())
        self.clear.on_click(lambda _: self._clear_attack())
        self.train.on_click(lambda _: self._train_smoke())

    @cached_property
    def widget(self) -> w.Widget:
        transform = w.VBox(
            [
                self.kind,
                w.HBox([self.noise, self.rate]),
                w.HBox([self.grid, self.masks]),
                self.partition,
                w.HBox([self.seed, self.redraw]),
            ]
        )
        attack = w.VBox(
            [
                self.attack,
                w.HBox([self.eps, self.steps]),
                w.HBox([self.eot, self.run_attack, self.clear]),
            ]
        )
        tabs = w.Tab(children=[transform, attack], titles=("random transform", "attack"))
        head = w.HBox([self.defense_choice, self.image, self.train])
        return w.VBox([head, tabs, self.message, self.picture, self.table, self.log])

    def transform_config(self) -> TransformConfig:
        """The controls' transform; raises the library's ValueError for bad values."""
        rt3_partition = self.kind.value == "RT3" and self.partition.value
        return TransformConfig(
            kind=self.kind.value.lower(),
            noise_std=self.noise.value,
            missing_rate=1 / self.masks.value if rt3_partition else self.rate.value,
            grid=self.grid.value,
            n_masks=self.masks.value,
            partition=self.partition.value,
        )

    # defenses and data
    def _load_defenses(self) -> None:
        found = find_defenses(self.dataset)
        self.paths = found
        self.train.layout.display = "none" if found else None
        if not found:
            self.defense_choice.options = []
            self.message.value = (
                f"<b>No trained defense for {self.dataset}</b> under the checkpoints folder "
                f"({settings().checkpoints_dir.name}/). Train the smoke-profile chain with the "
                "button (under a minute on 2 CPU cores), or <code>bash run_all.sh</code> for the "
                "quick profile's."
            )
            return
        self.defense_choice.options = list(found)
        self.defense_choice.value = default_defense(list(found))
        self._select_defense()

    def _select_defense(self) -> None:
        label = self.defense_choice.value
        if label is None:
            return
        profile = get_profile(profile_of(label))
        if self.data is None or self.data_profile != profile.name:
            self.data, self.data_profile = load_bundle(profile, self.dataset), profile.name
            self.image.max = len(self.data.eval.labels) - 1
        self.defense = load_defense(self.paths[label], self.device)
        t = self.defense.transform.cfg
        self._hold = True  # one redraw for the whole change, not one per control
        try:
            if t.kind != "none":
                self.kind.value = t.kind.upper()
            self.noise.value, self.rate.value, self.grid.value = t.noise_std, t.missing_rate, t.grid
            self.masks.value, self.partition.value = t.n_masks, t.partition
        finally:
            self._hold = False
        self._clear_attack()

    def image_and_label(self) -> tuple[Tensor, int]:
        i = self.image.value
        return self.data.eval.images[i].float().div(255), int(self.data.eval.labels[i])

    # drawing
    def _on_change(self, change) -> None:
        if self._hold:
            return
        if change.owner is self.image:
            self.x_adv = None  # the attack was on the previous image
        self.draw()

    def draw(self) -> None:
        """Recompute the view from the controls and show it, or show why it cannot be drawn."""
        if self.defense is None:
            return
        self.rate.disabled = self.kind.value == "RT3" and self.partition.value  # rate is 1/N
        x, y = self.image_and_label()
        try:
            cfg = self.transform_config()
            self.view = explore(self.defense, cfg, x, self.classes, self.seed.value, self.x_adv)
        except ValueError as error:
            self.message.value = _error_html(str(error))
            return
        fig = self.figure()
        self.picture.value = png(fig)
        self.picture.width = str(round(fig.get_size_inches()[0] * FIGURE_DPI))  # pixels, unscaled
        truth = f"<p>True class: <b>{html.escape(self.classes[y])}</b></p>"
        self.table.value = truth + self.view.predictions.to_html(index=False, border=0)
        self.message.value = ""

    @property
    def classes(self) -> list[str]:
        return list(self.data.train.class_names)

    def figure(self) -> Figure:
        """The current view as a figure."""
        return view_figure(self.view, ["clean", "attacked"][: 1 + (self.x_adv is not None)])

    def snapshot(self) -> Figure | Markdown:
        """What the controls show now, for a notebook read without a kernel: the figure, or why
        there is none."""
        if self.view is None:
            return Markdown(f"No trained defense for {self.dataset} yet: nothing to show.")
        return self.figure()

    def _attack(self) -> None:
        if self.defense is None:
            return
        x, y = self.image_and_label()
        self.log.clear_output()
        with self.log:
            bar = progress(total=self.steps.value, desc="attack (forward passes)", leave=False)
            try:
                self.defense.transform = RandomTransform(self.transform_config(), self.seed.value)
                self.x_adv = attack_image(
                    self.defense,
                    self.attack.value,
                    x,
                    y,
                    self.eps.value / 255,
                    self.steps.value,
                    self.eot.value,
                    self.seed.value,
                    on_step=lambda: bar.update(1),
                )
            except ValueError as error:
                self.message.value = _error_html(str(error))
                return
            finally:
                bar.close()
        self.draw()

    def _clear_attack(self) -> None:
        self.x_adv = None
        self.draw()

    def _train_smoke(self) -> None:
        self.log.clear_output()
        with self.log:
            train_chain(PROFILES["smoke"], self.dataset, self.device)
        self.log.clear_output()
        self._load_defenses()


def explorer(dataset: str, device: torch.device, seed: int = 0, image: int = 0) -> Explorer:
    """Build the explorer and display its controls (in a notebook)."""
    ex = Explorer(dataset, device, seed, image)
    display(ex.widget)
    return ex
