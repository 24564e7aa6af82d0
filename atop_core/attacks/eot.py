"""PGD with EOT on the whole defense, with full gradients (pgd-eot, pgd-eot-l2) or BPDA
(bpda-eot); the EOT margin StAdv ascends.

Ours, because torchattacks' EOTPGD loops over draws one forward at a time: here the batch is
repeated `eot` times and run in one pass (Lee & Kim, ICCV 2023, full gradients through
transform, purifier and classifier; Athalye et al. 2018 for BPDA).
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atop_core.attacks.cw import margin, project_l2
from atop_core.attacks.trace import AttackTrace, attack_trace, observe
from atop_core.defense import DefendedModel, RandomDefense

if TYPE_CHECKING:
    from atop_core.attacks import AttackConfig

Loss = Callable[[nn.Module, Tensor, Tensor, int], Tensor]
# Image-draws per forward and backward pass: bounds memory by the pass, not by batch x draws
# (`python -m bench` on 2 CPU cores: 1.6x faster than one pass at batch 64 x EOT 8, and peak
# memory 4.86 -> 1.65 GiB at batch 64 x EOT 20 on the quick nets; a GPU could take larger passes).
EOT_PASS = 256


def eot_loss(model: nn.Module, x: Tensor, y: Tensor, draws: int) -> Tensor:
    """Sum over samples of the mean cross-entropy over `draws` transform draws (one batch); its
    gradient is the mean of the per-draw gradients. A plain classifier has one draw."""
    if isinstance(model, RandomDefense):
        logits = model.draw_logits(x, draws)
        observe(logits, y)
        return F.cross_entropy(logits.flatten(0, 1), y.repeat(draws), reduction="sum") / draws
    logits = model(x)
    observe(logits, y)
    return F.cross_entropy(logits, y, reduction="sum")


def eot_margin(model: nn.Module, x: Tensor, y: Tensor, draws: int) -> Tensor:
    """Sum over samples of the mean C&W margin z_y − max_{j≠y} z_j over `draws` draws: the
    expected margin, whose gradient is the mean of the per-draw gradients (StAdv's objective)."""
    if isinstance(model, RandomDefense):
        logits = model.draw_logits(x, draws)
        observe(logits, y)
        return margin(logits.flatten(0, 1), y.repeat(draws)).sum() / draws
    logits = model(x)
    observe(logits, y)
    return margin(logits, y).sum()


def bpda_loss(model: nn.Module, x: Tensor, y: Tensor, draws: int) -> Tensor:
    """`eot_loss` with the purification g∘t replaced by the identity in the backward pass only:
    the classifier sees the exact purified images, the gradient skips g∘t (BPDA)."""
    if not isinstance(model, RandomDefense):
        return eot_loss(model, x, y, 1)
    if not isinstance(model, DefendedModel):
        raise ValueError(
            "bpda-eot replaces the purification by the identity in the backward pass, so it needs "
            "the purification and the classifier apart (a DefendedModel); use pgd-eot"
        )
    repeated = x.repeat(draws, 1, 1, 1) if draws > 1 else x
    purified = repeated + (model.purify(repeated) - repeated).detach()
    logits = model.classifier(purified)
    observe(logits.view(draws, len(x), -1), y)
    return F.cross_entropy(logits, y.repeat(draws), reduction="sum") / draws


def _passes(model: nn.Module, x: Tensor, draws: int, pass_size: int | None) -> list[int]:
    """The draws of each pass: about `pass_size` image-draws (at least one draw of the whole
    batch) per pass; one draw for a plain classifier or a defense whose randomness is frozen."""
    draws = draws if isinstance(model, RandomDefense) and not model.one_draw else 1
    per_pass = draws if pass_size is None else max(1, pass_size // len(x))
    return [min(per_pass, draws - start) for start in range(0, draws, per_pass)]


def eot_grad(
    loss: Loss, model: nn.Module, x: Tensor, y: Tensor, draws: int, pass_size: int | None = EOT_PASS
) -> Tensor:
    """The gradient of `loss` over `draws` draws at x, in passes (`_passes`; None: all draws in
    one pass). It equals the one-pass gradient, the mean of the per-draw gradients; only the
    draws' order in the transform's stream differs."""
    passes = _passes(model, x, draws, pass_size)
    total = torch.zeros_like(x)
    for k in passes:
        point = x.detach().requires_grad_(True)
        total += torch.autograd.grad(loss(model, point, y, k), point)[0] * k
    return total / sum(passes)


@torch.no_grad()
def eot_score(
    loss: Loss, model: nn.Module, x: Tensor, y: Tensor, draws: int, pass_size: int | None = EOT_PASS
) -> None:
    """The forward passes of `eot_grad` alone: what they show the attack's trace."""
    for k in _passes(model, x, draws, pass_size):
        loss(model, x, y, k)


Step = Callable[[Tensor, Tensor], Tensor]  # (adversarial images, gradient) -> next images


def _linf_ball(
    x: Tensor, cfg: "AttackConfig", g: torch.Generator, random_start: bool = True
) -> tuple[Tensor, Step]:
    """A uniform start in the L∞ ball (and the image range), or x itself, and the signed step
    back into it; the ball's bounds are computed once per attack, not per step."""
    low, high = (x - cfg.eps).clamp(min=0), (x + cfg.eps).clamp(max=1)

    def step(adv: Tensor, grad: Tensor) -> Tensor:
        return (adv + cfg.alpha * grad.sign()).clamp(low, high)

    if not random_start:
        return x.clone(), step
    noise = _uniform(x.shape, g, x) * 2 - 1
    return (x + noise * cfg.eps).clamp(low, high), step


def _uniform(shape: torch.Size, g: torch.Generator, like: Tensor) -> Tensor:
    """U[0, 1) drawn on the generator's device (a training step's is on the CPU), moved to x's."""
    return torch.rand(shape, generator=g, device=g.device, dtype=like.dtype).to(like.device)


def _l2_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *[1] * (t.dim() - 1))


def _l2_ball(
    x: Tensor, cfg: "AttackConfig", g: torch.Generator, random_start: bool = True
) -> tuple[Tensor, Step]:
    """torchattacks' PGDL2 start (a random direction at a uniform radius inside the ball), or x
    itself, and step (the gradient scaled to length alpha, then back onto the ball and the image
    range)."""

    def step(adv: Tensor, grad: Tensor) -> Tensor:
        moved = adv + cfg.alpha * grad / (_l2_norm(grad) + 1e-10)
        return project_l2(x, moved, cfg.eps).clamp(0, 1)

    if not random_start:
        return x.clone(), step
    direction = torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype).to(x.device)
    radius = _uniform((len(x),), g, x) * cfg.eps
    start = direction / (_l2_norm(direction) + 1e-10) * radius.view(-1, *[1] * (x.dim() - 1))
    return (x + start).clamp(0, 1), step


PGD_BALLS = {"linf": _linf_ball, "l2": _l2_ball}


def pgd_ascent(
    loss: Loss,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: "AttackConfig",
    g: torch.Generator,
    *,
    random_start: bool = True,
    pass_size: int | None = EOT_PASS,
    after_gradient: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """The last of `cfg.steps` PGD iterates in the attack's norm ball (L∞: signed steps; L2:
    torchattacks' PGDL2 steps) ascending `loss`, from a random start drawn from `g` (or from x);
    the EOT gradient in passes of `pass_size` image-draws (`eot_grad`). `after_gradient` sees
    each iterate once its gradient's passes have run. With one step from x it is FGSM."""
    adv, step = PGD_BALLS[cfg.norm](x, cfg, g, random_start)
    for _ in range(cfg.steps):
        grad = eot_grad(loss, model, adv, y, cfg.eot, pass_size)
        if after_gradient is not None:
            after_gradient(adv)
        adv = step(adv, grad)
    return adv.detach()


class BestIterate:
    """Per image, the iterate of highest loss among those the mean logits of its EOT draws
    misclassify, or of all if none is; read from the trace after each iterate's passes. What it
    keeps (`images`) is what the attack passes to `consider`: the images, or StAdv's flows."""

    def __init__(self, x: Tensor, trace: AttackTrace):
        self.trace = trace
        self.images = x.clone()
        self.loss = torch.full((len(x),), -torch.inf, device=x.device)
        self.fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        trace.step()

    def consider(self, adv: Tensor) -> None:
        point_loss, fooled = (t.to(adv.device) for t in self.trace.current())
        # a misclassified iterate beats a right one; among equals, the higher loss wins
        better = (fooled & ~self.fooled) | ((fooled == self.fooled) & (point_loss > self.loss))
        self.images[better], self.loss[better] = adv[better], point_loss[better]
        self.fooled[better] = fooled[better]
        self.trace.step()


def projected_gradient(
    loss: Loss,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: "AttackConfig",
    pass_size: int | None = EOT_PASS,
) -> Tensor:
    """PGD (`pgd_ascent`) from a random start drawn from the attack's own seed, returning per
    image the best iterate (`BestIterate`; the last iterate is scored too): the last alone, or
    the highest cross-entropy alone, can lose a point the attack had found (silent success,
    `indicators.py`). Ours because torchattacks' PGD and PGDL2 see one draw per step, or with
    EOT the mean logits, in one pass of batch × draws."""
    g = torch.Generator(device=x.device).manual_seed(cfg.seed)
    with attack_trace() as trace:
        best = BestIterate(x, trace)
        last = pgd_ascent(
            loss, model, x, y, cfg, g, pass_size=pass_size, after_gradient=best.consider
        )
        eot_score(loss, model, last, y, cfg.eot, pass_size)  # forward passes only
        best.consider(last)
        trace.returned(best.fooled)
    return best.images.detach()


def pgd_eot(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    """pgd-eot (L∞) and pgd-eot-l2: full gradients through transform, purifier and classifier."""
    return projected_gradient(eot_loss, model, x, y, cfg)


def bpda_eot(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    return projected_gradient(bpda_loss, model, x, y, cfg)
