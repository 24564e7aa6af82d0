"""Attacks by name: torchattacks where it has the attack, our own where it does not (DESIGN §4).

Every attack takes a model mapping [0,1] images to logits and returns adversarial images in [0,1].
Library attacks run inside `torch.random.fork_rng()` seeded with the attack's own seed, so their
random starts are reproducible and never touch the stream of anyone else (the defense has its own
generator anyway). So far: clean, fgsm, pgd (torchattacks), pgd-eot (ours); issue 4 adds the rest.
"""

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import torchattacks
from torch import Tensor, nn

from atop_core.defense import DefendedModel
from atop_core.registry import Registry

ATTACKS = Registry("attack")
AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class AttackConfig:
    """One configured attack; `eot` counts transform draws per gradient (pgd-eot only)."""

    name: str = "pgd"
    eps: float = 8 / 255
    steps: int = 10
    alpha: float = 2 / 255
    eot: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        ATTACKS.get_entry(self.name)  # refuses unknown names, listing the known ones
        if self.eps < 0:
            raise ValueError(f"eps must be >= 0 on the [0,1] pixel scale, got {self.eps}")
        if self.steps < 1 or self.eot < 1:
            raise ValueError(f"steps and eot must be >= 1, got {self.steps} and {self.eot}")

    def describe(self) -> dict:
        return asdict(self)


def _check_range(x: Tensor) -> None:
    if x.min() < 0 or x.max() > 1:  # torchattacks 3.5 no longer checks this itself
        raise ValueError(f"images must lie in [0, 1], got [{x.min():.3f}, {x.max():.3f}]")


@ATTACKS.register("clean")
def _clean(cfg: AttackConfig) -> AttackFn:
    return lambda model, x, y: x


@ATTACKS.register("fgsm")
def _fgsm(cfg: AttackConfig) -> AttackFn:
    return lambda model, x, y: torchattacks.FGSM(model, eps=cfg.eps)(x, y)


@ATTACKS.register("pgd")
def _pgd(cfg: AttackConfig) -> AttackFn:
    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        attack = torchattacks.PGD(
            model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, random_start=True
        )
        return attack(x, y)

    return run


@ATTACKS.register("pgd-eot")
def _pgd_eot(cfg: AttackConfig) -> AttackFn:
    """Full-gradient PGD with EOT (Lee & Kim, ICCV 2023): the gradient of the mean loss over
    `eot` draws of the whole defense, batched into one pass. Ours, because torchattacks' EOTPGD
    loops over draws one forward at a time."""

    def run(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        g = torch.Generator(device=x.device).manual_seed(cfg.seed)
        delta = (torch.rand(x.shape, generator=g, device=x.device) * 2 - 1) * cfg.eps
        for _ in range(cfg.steps):
            delta.requires_grad_(True)
            loss = eot_loss(model, (x + delta).clamp(0, 1), y, cfg.eot)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + cfg.alpha * grad.sign()).clamp(-cfg.eps, cfg.eps)
        return (x + delta).clamp(0, 1).detach()

    return run


def eot_loss(model: nn.Module, x: Tensor, y: Tensor, draws: int) -> Tensor:
    """Sum over samples of the mean cross-entropy over `draws` transform draws (one batch)."""
    if isinstance(model, DefendedModel):
        logits = model.draw_logits(x, draws)
        return F.cross_entropy(logits.flatten(0, 1), y.repeat(draws), reduction="sum") / draws
    return F.cross_entropy(model(x), y, reduction="sum")


def run_attack(model: nn.Module, cfg: AttackConfig, x: Tensor, y: Tensor) -> Tensor:
    """Adversarial images for (x, y); the model is put in eval mode and left there."""
    _check_range(x)
    model.eval()
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        return ATTACKS.build(cfg.name, cfg)(model, x, y).detach()
