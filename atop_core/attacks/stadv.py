"""StAdv (Xiao et al., ICLR 2018), ours: torchattacks has no spatially transformed attack.

Every pixel is resampled (bilinear, `grid_sample` with align_corners=False and border padding)
from its own position plus a flow vector. The flow is in `grid_sample`'s normalised
coordinates, where the image spans [−1, 1]: the bound 0.05 of the DiffPure protocol (Laidlaw et
al.'s StAdvAttack: an L∞ bound on these coordinates) caps each component of every pixel's
displacement at 0.05 · W/2 pixels, 2.5% of the image side (0.8 px on 32 × 32 CIFAR). Adam
minimises the margin z_y − max_{j≠y} z_j plus tau times Xiao et al.'s flow-smoothness loss, and
the flow is clamped to the bound after every step, so the bound holds exactly.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from atop_core.attacks.eot import BestIterate, eot_grad, eot_margin, eot_score
from atop_core.attacks.trace import attack_trace

if TYPE_CHECKING:
    from atop_core.attacks import AttackConfig

FLOW_BOUND = 0.05  # DiffPure's StAdv bound (Laidlaw et al. 2021, perceptual-advex default)
LR = 0.01  # perceptual-advex's Adam rate for StAdv
TAU = 0.05  # smoothness weight: Xiao et al.'s τ; also perceptual-advex's 0.0025 / bound
SMOOTH_EPS = 1e-10  # inside the square root, for a gradient at zero flow differences


def apply_flow(x: Tensor, flow: Tensor) -> Tensor:
    """x (B, C, H, W) resampled at its pixel grid plus `flow` (B, H, W, 2), in [0, 1]."""
    identity = torch.eye(2, 3, device=x.device, dtype=x.dtype).expand(len(x), 2, 3)
    grid = F.affine_grid(identity, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid + flow, "bilinear", "border", align_corners=False)
    return out.clamp(0, 1)


def flow_smoothness(flow: Tensor) -> Tensor:
    """Xiao et al.'s L_flow per sample: over every pixel p and 4-neighbour q, the L2 norm of
    flow(p) − flow(q) (each neighbour pair counts twice, once from each side)."""
    across = (flow[:, :, 1:] - flow[:, :, :-1]).pow(2).sum(-1)
    down = (flow[:, 1:] - flow[:, :-1]).pow(2).sum(-1)
    pairs = (across + SMOOTH_EPS).sqrt().sum((1, 2)) + (down + SMOOTH_EPS).sqrt().sum((1, 2))
    return 2 * pairs


def stadv_ascent(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    cfg: "AttackConfig",
    after_gradient: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """The last flow (B, H, W, 2), every component within ±cfg.eps, after `cfg.steps` Adam
    steps from zero flow. On a random defense the margin is averaged over `cfg.eot` draws (EOT):
    its gradient with respect to the moved image comes from `eot_grad`, in passes, and the chain
    rule carries it to the flow. `after_gradient` sees each flow once its passes have run."""
    b, _, h, w = x.shape
    flow = torch.zeros(b, h, w, 2, device=x.device, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.Adam([flow], lr=cfg.lr)
    for _ in range(cfg.steps):
        moved = apply_flow(x, flow)
        toward = eot_grad(eot_margin, model, moved.detach(), y, cfg.eot or 1)
        if after_gradient is not None:
            after_gradient(flow.detach())
        loss = (moved * toward).sum() + cfg.tau * flow_smoothness(flow).sum()
        (flow.grad,) = torch.autograd.grad(loss, flow)  # leave the model's grads alone
        opt.step()
        with torch.no_grad():
            flow.clamp_(-cfg.eps, cfg.eps)
    return flow.detach()


def stadv_flow(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    """Per image the best flow of `stadv_ascent` (the last one scored too), by the mean logits
    of each flow's EOT draws."""
    with attack_trace() as trace:
        zero = torch.zeros(len(x), *x.shape[2:], 2, device=x.device, dtype=x.dtype)
        best = BestIterate(zero, trace)
        last = stadv_ascent(model, x, y, cfg, after_gradient=best.consider)
        eot_score(eot_margin, model, apply_flow(x, last), y, cfg.eot or 1)  # forward passes only
        best.consider(last)
        trace.returned(best.fooled)
    return best.images


def stadv(model: nn.Module, x: Tensor, y: Tensor, cfg: "AttackConfig") -> Tensor:
    return apply_flow(x, stadv_flow(model, x, y, cfg))
