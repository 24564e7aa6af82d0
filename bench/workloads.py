"""The work the benchmarks time: defended models at the quick and paper architectures, and
full-gradient PGD-EOT run our way or the authors' way.

Ours is `atop_core`'s attack as it is (attacks/eot.py `projected_gradient`: EOT draws batched in
passes of EOT_PASS image-draws, per-sample masks, native 32 px), on a model in channels_last. The
authors' structure is written here only, as the reference every speed-up is measured against:
batches of 8, one mask and noise per batch (per_sample=False), EOT as a Python loop of one
forward and backward per draw (as torchattacks' EOTPGD does), and the transform and purifier run
at 256x256 (work_size=256). Weights are random: speed does not depend on them.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from atop_core.attacks import EOT_PASS, AttackConfig, eot_loss
from atop_core.attacks.eot import projected_gradient
from atop_core.config import EPS_LINF, TransformConfig, get_profile
from atop_core.defense import DefendedModel
from atop_core.nets.classifiers import build_classifier
from atop_core.nets.purifiers import build_purifier
from atop_core.transforms import RandomTransform

IMAGE_SIZE = 32  # CIFAR-10, the dataset every profile runs
NUM_CLASSES = 10
AUTHORS_BATCH = 8  # the batch of the authors' *-adv notebooks
AUTHORS_SIZE = 256  # their working resolution: CIFAR up-sampled 32 -> 256
ALPHA = 2 / 255  # PGD step, AttackConfig's default


@dataclass(frozen=True)
class BenchConfig:
    """Settings of one `python -m bench` run; the defaults keep the whole run near 10 minutes on
    2 CPU cores. Rates are per image at (steps, eot), so smaller runs give the same units."""

    device: str = "cpu"
    archs: tuple[str, ...] = ("quick", "paper")
    purifiers: tuple[str, ...] = ("gan", "ae")
    steps: int = 2
    eot: int = 4
    batch: int = 64  # images per attack batch, ours (the quick profile's eval batch_size)
    images: dict = dataclasses.field(default_factory=lambda: {"quick": 64, "paper": 16})
    images_256: int = AUTHORS_BATCH  # the 256-px baseline is slow on a CPU: one batch of 8
    steps_256: int = 1  # its cost is linear in steps and draws (looped): rates are rescaled
    eot_256: int = 1  # to `steps` and `eot`, so each timed call can be one pass per batch
    eot_ablation: int = 8
    repeats: int = 3
    budget_s: float = 20.0  # stop repeating a measurement after this long (at least one repeat)
    compile: bool = False  # also time torch.compile'd networks
    amp: bool = False  # bf16 autocast (meant for GPUs; AVX2 CPUs have no fast bf16)
    # trained defense files for `precision`'s gradient comparison (random weights are chaotic);
    # empty: each arch's checkpoints/<arch>/cifar10/defense-<purifier>-rt2-atop.pt that exists
    defenses: tuple[str, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.steps, self.eot, self.batch, self.images_256, self.repeats) < 1:
            raise ValueError("steps, eot, batch, images_256 and repeats must be >= 1")
        for name in self.archs:
            get_profile(name)  # refuses unknown profile names, listing the known ones

    def n_images(self, arch: str) -> int:
        return self.images.get(arch, self.batch)


@dataclass(frozen=True)
class Style:
    """How PGD-EOT is run: the batch, where EOT draws go, resolution, masks, memory layout."""

    name: str
    batch: int
    eot_batched: bool  # all draws in one pass (ours) or a Python loop over draws (theirs)
    work_size: int  # 0: native 32 px; 256: the purifier runs up-sampled
    per_sample: bool  # a mask and noise per image (ours) or one per batch (theirs)
    channels_last: bool
    compiled: bool = False
    pass_size: int | None = EOT_PASS  # batched: image-draws per pass (None: all in one pass)


def ours(batch: int, *, channels_last: bool = True, compiled: bool = False) -> Style:
    return Style("ours", batch, True, 0, True, channels_last, compiled)


def theirs(work_size: int = AUTHORS_SIZE) -> Style:
    name = "theirs-256" if work_size else "theirs-native"
    return Style(name, AUTHORS_BATCH, False, work_size, False, False)


def variant(name: str, batch: int, *, looped: bool, channels_last: bool, **kw) -> Style:
    """An ablation step between theirs and ours: per-sample masks, native size."""
    return Style(name, batch, not looped, 0, True, channels_last, **kw)


@dataclass(frozen=True)
class Arch:
    """The networks of a profile, as `atop_core.config` defines them for 32-px images."""

    name: str
    classifier: str
    classifier_width: float
    purifier_width: int
    flip_average: bool  # the classifier's evaluation: two views per image when set


def arch(name: str) -> Arch:
    p = get_profile(name)
    c = p.classifier
    return Arch(name, c.arch_for(IMAGE_SIZE), c.width, p.purifier.width, c.flip_average)


def build_defense(
    a: Arch, kind: str, style: Style, device: torch.device, seed: int = 0
) -> DefendedModel:
    """A defended model with random weights (seeded, without touching the global stream)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        width = {"width": a.classifier_width} if a.classifier_width else {}
        classifier = build_classifier(
            a.classifier, NUM_CLASSES, IMAGE_SIZE, flip_average=a.flip_average, **width
        )
        purifier = build_purifier(
            kind, width=a.purifier_width, image_size=IMAGE_SIZE, work_size=style.work_size
        )
    transform = RandomTransform(TransformConfig(kind="rt2", per_sample=style.per_sample), seed)
    model = DefendedModel(classifier, purifier, transform).to(device).eval()
    for p in model.parameters():  # attacks differentiate the input only (as run_attack does)
        p.requires_grad_(False)
    if style.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if style.compiled:
        model.classifier, model.purifier = compile_nets(model.classifier, model.purifier)
    return model


def compile_nets(*nets: nn.Module) -> tuple[nn.Module, ...]:
    """torch.compile the networks only: the transform stays eager, because Inductor replaces
    random ops by its own generator and the transform's draws would change."""
    return tuple(torch.compile(net) for net in nets)


def synthetic_images(n: int, device: torch.device, seed: int = 0) -> tuple[Tensor, Tensor]:
    """n uniform [0,1] 32-px images and labels: timing does not depend on content."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 3, IMAGE_SIZE, IMAGE_SIZE), generator=g)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return x.to(device), y.to(device)


# --- EOT passes: all draws in one (pass_size None), the library's (EOT_PASS image-draws),
# the authors' loop (one draw per pass: pass_size 1) -------------------------------------------


def style_pass(style: Style) -> int | None:
    """Image-draws per EOT pass of a style, for atop_core's `projected_gradient` and `eot_grad`."""
    return style.pass_size if style.eot_batched else 1


def attack_runner(
    model: nn.Module, style: Style, x: Tensor, y: Tensor, amp: bool = False
) -> Callable[[int, int], None]:
    """run(steps, eot): PGD-EOT over all of x in batches of `style.batch`, by atop_core's attack
    with the style's EOT passes (looped: one draw per pass)."""
    if style.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pass_size = style_pass(style)

    def run(steps: int, eot: int) -> None:
        cfg = AttackConfig(name="pgd-eot", eps=EPS_LINF, steps=steps, alpha=ALPHA, eot=eot)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            for i in range(0, len(x), style.batch):
                xb, yb = x[i : i + style.batch], y[i : i + style.batch]
                projected_gradient(eot_loss, model, xb, yb, cfg, pass_size)

    return run
