"""The attacks torchattacks 3.5.1 has, configured from an `AttackConfig`.

They draw their random starts from the global generator; `run_attack` runs them inside a
seeded `fork_rng`. AutoAttack is assembled from torchattacks' own parts, as its `AutoAttack`
class does, but with the original's 100 iterations (torchattacks passes 10) and the original's
9 target classes for APGD-T and FAB-T on every dataset (torchattacks uses num_classes - 1).
"""

from typing import TYPE_CHECKING

import torch
import torchattacks
from torch import Tensor, nn

if TYPE_CHECKING:
    from atop_core.attacks import AttackConfig

TA_NORM = {"linf": "Linf", "l2": "L2"}
AA_TARGET_CLASSES = 9  # AutoAttack's targeted runs (Croce & Hein 2020), also on CIFAR-100


def clean(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    return x


def fgsm(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    return torchattacks.FGSM(model, eps=cfg.eps)(x, y)


def bim(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    return torchattacks.BIM(model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps)(x, y)


def pgd(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    attack = torchattacks.PGD(model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps)
    return attack(x, y)


def pgd_l2(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    attack = torchattacks.PGDL2(model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps)
    return attack(x, y)


def eot_pgd(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    """torchattacks' EOTPGD: the gradient averaged over `eot` forward passes, looped."""
    attack = torchattacks.EOTPGD(
        model, eps=cfg.eps, alpha=cfg.alpha, steps=cfg.steps, eot_iter=cfg.eot
    )
    return attack(x, y)


def apgd(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    """APGD-CE (L∞ or L2) with EOT. torchattacks returns the clean image for every sample its
    last forward did not misclassify; we return the highest-loss iterate for those instead, so a
    stochastic defense is judged on the attack's work, not on one lucky draw."""
    attack = torchattacks.APGD(
        model, norm=TA_NORM[cfg.norm], eps=cfg.eps, steps=cfg.steps, n_restarts=1,
        seed=cfg.seed, loss="ce", eot_iter=cfg.eot,
    )  # fmt: skip
    highest_loss, robust, _, fooled = attack.attack_single_run(x, y)
    return torch.where(robust.view(-1, 1, 1, 1), highest_loss, fooled)


def check_classes(model: nn.Module, x: Tensor, num_classes: int) -> None:
    with torch.no_grad():
        outputs = model(x[:1]).shape[-1]
    if outputs != num_classes:
        raise ValueError(
            f"num_classes is {num_classes} but the model outputs {outputs} logits; pass "
            f"AttackConfig(num_classes={outputs})"
        )


def autoattack(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    """AutoAttack `standard`: APGD-CE, APGD-T, FAB-T, Square, each on what the previous left."""
    check_classes(model, x, cfg.num_classes)
    common = {"norm": TA_NORM[cfg.norm], "eps": cfg.eps, "seed": cfg.seed, "n_restarts": 1}
    classes = {"n_classes": cfg.num_classes}
    apgdt = torchattacks.APGDT(model, steps=cfg.steps, **classes, **common)
    fab = torchattacks.FAB(model, steps=cfg.steps, multi_targeted=True, **classes, **common)
    apgdt.n_target_classes = fab.n_target_classes = min(AA_TARGET_CLASSES, cfg.num_classes - 1)
    parts = [
        torchattacks.APGD(model, steps=cfg.steps, loss="ce", **common),
        apgdt,
        fab,
        torchattacks.Square(model, n_queries=cfg.queries, **common),
    ]
    return torchattacks.MultiAttack(parts)(x, y)


def autoattack_rand(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    """AutoAttack `rand`, for randomized defenses: APGD-CE then APGD-DLR, with `eot` draws."""
    common = {"norm": TA_NORM[cfg.norm], "eps": cfg.eps, "seed": cfg.seed, "n_restarts": 1}
    parts = [
        torchattacks.APGD(model, steps=cfg.steps, loss=loss, eot_iter=cfg.eot, **common)
        for loss in ("ce", "dlr")
    ]
    return torchattacks.MultiAttack(parts)(x, y)


def square(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    """Square (Andriushchenko et al. 2020): score-based black-box, `queries` per image."""
    attack = torchattacks.Square(
        model, norm=TA_NORM[cfg.norm], eps=cfg.eps, n_queries=cfg.queries, seed=cfg.seed
    )
    return attack(x, y)
