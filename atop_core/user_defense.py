"""Any defense, evaluated as this project evaluates its own: `atop_core.evaluate(model, ...)`.

A user's module maps [0, 1] images to logits, with or without randomness of its own (a purifier in
front of a classifier, a diffusion purifier, an adversarially trained network). `ModuleDefense`
gives it what the harness needs from a random defense: `draws` independent draws per image, its
global-generator randomness seeded per batch from the run's seed (a forked RNG, so the caller's
stream is untouched and a rerun repeats every draw), the frozen-randomness diagnostic, and the
classifier inside it for the classifier-only protocol. Whether it is random at all is measured:
two draws on the same images under different seeds either differ or not.
"""

import hashlib
import io
from pathlib import Path

import torch
from torch import Tensor, nn

from atop_core.attacks import AttackConfig
from atop_core.config import SEED_STRIDE, get_profile, resolve_device
from atop_core.data import DATASETS
from atop_core.defense import RandomDefense
from atop_core.evaluation import EvalImages, EvalRun, Subject, evaluate_subject
from atop_core.harness import check_protocol, check_randomness
from atop_core.nets import robustbench

DEFAULT_NAME = "user-defense"


class ModuleDefense(RandomDefense):
    """A user's module as a random defense; `classifier`, when given, is a module inside it."""

    def __init__(self, module: nn.Module, classifier: nn.Module | None = None) -> None:
        super().__init__()
        self.module = module
        self.classifier = classifier
        self._seed, self._calls = 0, 0

    def reseed(self, seed: int) -> None:
        self._seed, self._calls = seed, 0

    def _draw(self, x: Tensor) -> Tensor:
        """One forward pass under the next seed of the stream (the same seed when frozen)."""
        seed = self._seed * SEED_STRIDE + self._calls
        self._calls += 0 if self.frozen else 1
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed % 2**63)
            return self.module(x)

    def draw_logits(self, x: Tensor, draws: int) -> Tensor:
        if self.one_draw:
            return self._draw(x).expand(draws, -1, -1)
        return torch.stack([self._draw(x) for _ in range(draws)])

    @property
    def bare_classifier(self) -> nn.Module | None:
        return self.classifier

    def forward(self, x: Tensor) -> Tensor:
        if self.deterministic:
            return self._draw(x)
        return super().forward(x)

    @torch.no_grad()
    def probe(self, x: Tensor, num_classes: int) -> None:
        """Refuse a module whose outputs are not logits of `num_classes` classes for `x`, and
        measure whether it is random (two draws under different seeds differ)."""
        self.eval()
        self.reseed(0)
        first = self._draw(x)
        if not isinstance(first, Tensor) or first.shape != (len(x), num_classes):
            shape = tuple(first.shape) if isinstance(first, Tensor) else type(first).__name__
            raise ValueError(
                f"the model maps images {tuple(x.shape)} to {shape}; it must return logits of "
                f"shape ({len(x)}, {num_classes}), one row per image and one column per class"
            )
        if not first.is_floating_point() or not torch.isfinite(first).all():
            raise ValueError(
                f"the model's outputs must be finite float logits, got {first.dtype} with "
                f"{int((~torch.isfinite(first.float())).sum())} non-finite values"
            )
        self.reseed(1)
        self.deterministic = torch.equal(first, self._draw(x))
        self.reseed(0)


def state_sha256(module: nn.Module) -> str:
    """SHA-256 of the module's state dict as torch.save writes it (equal weights, equal digest)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def _described(name: str, defense: ModuleDefense, seed: int) -> dict:
    """The defense part of the record: the user's name, the module and its state's digest."""
    module, classifier = defense.module, defense.classifier
    return {
        "name": name,
        "file": None,
        "sha256": state_sha256(module),
        "module": f"{type(module).__module__}.{type(module).__qualname__}",
        "deterministic": defense.deterministic,
        "classifier": type(classifier).__name__ if classifier is not None else None,
        "purifier": "user",
        "transform": None,
        "atop": False,
        "adversarial_training": "none",
        "seed": seed,
    }


def evaluate(
    model: nn.Module | str,
    *,
    dataset: str,
    attack: str = "pgd-eot",
    protocol: str = "whole-model",
    n: int = 512,
    draws: int = 10,
    eot: int | None = None,
    steps: int | None = None,
    eps: float | None = None,
    name: str = DEFAULT_NAME,
    classifier: nn.Module | None = None,
    record: str | Path | None = None,
    device: torch.device | str | None = None,
    profile: str = "quick",
    image_size: int | None = None,
    seed: int = 0,
    sanity: bool = True,
    randomness: str = "fresh",
) -> dict:
    """Attack and judge `model` (any module mapping [0, 1] images to logits) on `n` fixed test
    images of `dataset`, exactly as the project's own defenses: the attack registry with EOT
    over `eot` draws per gradient, `draws` draws per image when judging (single, vote and worst
    readings with intervals), the sanity checks and attack-failure indicators. Returns the record
    (the project's schema); with `record` a path it is written there after every batch and a
    rerun resumes it. `profile` gives the default steps and EOT, the batch size and the sanity
    checks' budget; `image_size` shrinks the images (default: the dataset's own size). `model`
    may also name a RobustBench classifier (`robustbench:Standard`, `nets/robustbench.py`)."""
    check_protocol(protocol)
    check_randomness(randomness)
    if protocol == "classifier-only" and classifier is None:
        raise ValueError(
            "the classifier-only protocol attacks the classifier inside the model: pass "
            "classifier=<that module> (or use protocol='whole-model')"
        )
    prof = get_profile(profile).for_dataset(dataset)
    device = resolve_device(device or "auto")
    attack_cfg = AttackConfig(
        name=attack,
        eps=eps,
        steps=steps or prof.evaluation.steps,
        eot=eot or prof.evaluation.eot,
        seed=seed + 1,
    )
    run = EvalRun(prof, attack_cfg, protocol, device, n, draws, None, seed, randomness)
    num_classes = len(DATASETS.get_entry(dataset).classes)
    data = EvalImages.of(dataset, image_size or 0, run)
    if isinstance(model, str):
        name = model if name == DEFAULT_NAME else name
        model = robustbench.load(model, num_classes, data.images.shape[-1])
    defense = ModuleDefense(model.to(device), classifier)
    defense.probe(data.images[:2].to(device).float().div(255), num_classes)
    described = _described(name, defense, seed)
    bare = state_sha256(classifier) if classifier is not None else None
    subject = Subject(defense, described, dataset, num_classes, (described["sha256"], bare))
    out = Path(record) if record is not None else None
    return evaluate_subject(subject, run, data, out, sanity)[0]
