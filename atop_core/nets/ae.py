"""The AE-based purifier's network: a small U-Net that denoises and inpaints in one pass.

The paper's AE purifier follows Wu et al. (2023), whose architecture is not given (docs/paper.md);
this is our stand-in, trained with an ℓ1 loss. Skip connections carry the kept pixels' detail
past the bottleneck, and residual blocks at 1/4 resolution give the receptive field that fills a
missing 4×4 block from its neighbours at 32×32.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RES_BLOCKS = 2  # at the bottleneck


def conv_act(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv + SiLU, He-initialised so the signal neither fades nor grows with depth."""
    conv = nn.Conv2d(cin, cout, 3, stride, 1)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return nn.Sequential(conv, nn.SiLU())


class ResBlock(nn.Module):
    """x + conv(act(conv(x))): depth at the bottleneck without harder optimisation."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(conv_act(ch, ch), nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x + self.body(x))


class UNetAE(nn.Module):
    """(masked image in [0, 1], keep-mask) -> image in [0, 1]; H and W divisible by 4."""

    def __init__(self, width: int, res_blocks: int = RES_BLOCKS):
        super().__init__()
        w = width
        # full-resolution layers are the CPU cost, so only the stem, one decoder conv and the head
        # run at H×W; the work happens at 1/2 and 1/4 resolution
        self.enc1 = conv_act(4, w)
        self.enc2 = nn.Sequential(conv_act(w, 2 * w, stride=2), conv_act(2 * w, 2 * w))
        self.down = conv_act(2 * w, 4 * w, stride=2)
        self.mid = nn.Sequential(*(ResBlock(4 * w) for _ in range(res_blocks)))
        self.dec2 = conv_act(4 * w + 2 * w, 2 * w)
        self.dec1 = conv_act(2 * w + w, w)
        self.head = nn.Conv2d(w, 3, 3, padding=1)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        # centre the kept pixels and mark missing ones with their own channel (0 is then "unknown")
        h1 = self.enc1(torch.cat([(x * 2 - 1) * keep, 1 - keep], dim=1))
        h2 = self.enc2(h1)
        h = self.mid(self.down(h2))
        h = self.dec2(torch.cat([_up(h), h2], dim=1))
        h = self.dec1(torch.cat([_up(h), h1], dim=1))
        return torch.sigmoid(self.head(h))


def _up(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")
