"""C&W-L2 (Carlini & Wagner 2017), ours: torchattacks' CW has no binary search over its constant.

Per sample: minimise ||x' − x||² + c·max(z_y − max_{j≠y} z_j, −κ) over x' = (tanh(w) + 1)/2 with
Adam, for `steps` steps at each of `search_steps` constants c, found by C&W's binary search
(×10 until the first success, then bisection). The result is the closest (L2) example that was
misclassified at any step; a sample never misclassified keeps the last iterate at the largest
constant (at least as strong as returning the clean image, which C&W do). Unbounded by default
(the paper's "CW-100": 100 steps); with a finite `eps`, every iterate is projected onto the L2
ball of radius eps before the model sees it, so the result lies in the ball.
"""

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from atop_core.attacks import AttackConfig

SEARCH_STEPS = 5  # C&W use 9 from c = 1e-3; we start higher and search fewer
INITIAL_CONST = 0.1
LR = 0.01  # C&W's Adam learning rate
TANH_MARGIN = 1 - 1e-6  # atanh(±1) is infinite: start just inside
TINY = 1e-24  # under the square root of a norm, so its gradient at 0 is 0, not NaN


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y − max_{j≠y} z_j per sample (C&W's f6): negative once the sample is misclassified."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return true - others.amax(1)


def project_l2(x: Tensor, adv: Tensor, eps: float) -> Tensor:
    """`adv` moved onto the L2 ball of radius eps around x along adv − x (unchanged inside)."""
    if math.isinf(eps):
        return adv  # also keeps inf / norm out of the backward pass (0 · inf = NaN)
    delta = adv - x
    norm = delta.flatten(1).pow(2).sum(1).add(TINY).sqrt()  # differentiable at delta = 0
    return x + delta * (eps / norm).clamp(max=1).view(-1, 1, 1, 1)


def _search(model: nn.Module, x: Tensor, y: Tensor, const: Tensor, cfg: "AttackConfig") -> tuple:
    """One constant per sample: (closest misclassified example, its squared L2 distance or inf,
    the last iterate)."""
    w = torch.atanh((2 * x - 1) * TANH_MARGIN).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=cfg.lr)
    best, best_dist = x.clone(), torch.full_like(const, float("inf"))
    for _ in range(cfg.steps):
        adv = project_l2(x, (torch.tanh(w) + 1) / 2, cfg.eps)
        dist = (adv - x).flatten(1).pow(2).sum(1)
        m = margin(model(adv), y)
        loss = (dist + const * m.clamp(min=-cfg.kappa)).sum()
        (w.grad,) = torch.autograd.grad(loss, w)  # not .backward(): leave the model's grads alone
        opt.step()
        with torch.no_grad():
            better = (m < 0) & (m <= -cfg.kappa) & (dist < best_dist)
            best[better], best_dist[better] = adv[better], dist[better]
    return best, best_dist, adv.detach()


def cw_l2(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    lower = torch.zeros(len(x), device=x.device)
    upper = torch.full_like(lower, float("inf"))
    const = torch.full_like(lower, cfg.const)
    best, best_dist = x.clone(), torch.full_like(lower, float("inf"))
    for _ in range(cfg.search_steps):
        found, dist, last = _search(model, x, y, const, cfg)
        better = dist < best_dist
        best[better], best_dist[better] = found[better], dist[better]
        success = dist < float("inf")
        upper = torch.where(success, torch.minimum(upper, const), upper)
        lower = torch.where(success, lower, torch.maximum(lower, const))
        const = torch.where(upper < float("inf"), (lower + upper) / 2, const * 10)
    never = best_dist == float("inf")
    return torch.where(never.view(-1, 1, 1, 1), last, best).clamp(0, 1)
