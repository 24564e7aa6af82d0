"""Purifiers g(·): one interface over the GAN- and AE-based networks.

A purifier takes the transformed image (missing pixels zeroed) and its keep-mask, both at the
caller's size and in [0, 1], and returns full images in [0, 1]: every stage's raw output, with no
pasting back of known pixels, because those pixels are noisy and the authors' code classifies the
raw stage-2 output (docs/paper.md).

An optional `work_size` runs the whole transform → purifier chain at a larger square size, as the
authors' code does at 256×256: callers up-sample the image with `to_work_size` *before* the random
transform (so noise is drawn per working pixel, (256/32)² draws per CIFAR pixel) and bring the
result back with `resize_to` before the classifier. The purifier itself only runs at that size.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from atop_core.nets.ae import UNetAE
from atop_core.nets.gan import GatedGenerator, PatchDiscriminator
from atop_core.registry import Registry

PURIFIERS = Registry("purifier")
DOWNSAMPLING = 4  # both networks halve twice, so their working size must be divisible by 4
MIN_WIDTH = 4  # the GAN's last decoder layer has width // 4 channels


def _check_divisible(size: int, what: str) -> None:
    if size <= 0 or size % DOWNSAMPLING:
        raise ValueError(
            f"{what} {size} is not a positive multiple of {DOWNSAMPLING}; the purifiers downsample "
            f"twice: pick a size divisible by {DOWNSAMPLING} or set work_size (e.g. 32 or 256)"
        )


def resize_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize, antialiased so that shrinking does not alias; stays in [0, 1]. A no-op
    when x already has that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return out.clamp(0, 1)


def to_work_size(x: Tensor, purifier: nn.Module | None) -> Tensor:
    """x resized to the purifier's `work_size`, the size the transform must then run at; x itself
    when the purifier (or a stand-in without one) works at the input's size."""
    work_size = getattr(purifier, "work_size", 0)
    return resize_to(x, (work_size, work_size)) if work_size else x


class Purifier(nn.Module):
    """Base class: the size checks every purifier needs."""

    def __init__(self, work_size: int = 0) -> None:
        super().__init__()
        if work_size:
            _check_divisible(work_size, "work_size")
        self.work_size = work_size

    def native_stages(self, x: Tensor, keep: Tensor) -> list[Tensor]:
        """Stage outputs at the size of x; subclasses implement this."""
        raise NotImplementedError

    def stages(self, x: Tensor, keep: Tensor) -> list[Tensor]:
        """Every stage's full output (N, 3, H, W) in [0, 1]. x: (N, 3, H, W) in [0, 1] with missing
        pixels zeroed; keep: (N, 1, H, W), 1 = kept, 0 = missing."""
        height, width = x.shape[-2], x.shape[-1]
        if self.work_size and (height, width) != (self.work_size, self.work_size):
            raise ValueError(
                f"this purifier works at {self.work_size}×{self.work_size} (work_size) but got "
                f"{height}×{width}: up-sample with to_work_size(x, purifier) before the random "
                "transform, as DefendedModel and the training steps do"
            )
        _check_divisible(height, "image height")
        _check_divisible(width, "image width")
        return self.native_stages(x, keep)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """The last stage's output, the purified image."""
        return self.stages(x, keep)[-1]


@PURIFIERS.register("gan")
class GanPurifier(Purifier):
    """DeepFillv2-style two-stage gated generator (nets/gan.py); stages: [coarse, refined]."""

    def __init__(self, *, width: int, image_size: int, work_size: int = 0) -> None:
        super().__init__(work_size)
        bottleneck = (work_size or image_size) // DOWNSAMPLING
        self.net = GatedGenerator(width, bottleneck)

    def native_stages(self, x: Tensor, keep: Tensor) -> list[Tensor]:
        # DeepFill convention: [-1, 1] image with missing pixels at 0, mask 1 where missing
        coarse, refined = self.net((x * 2 - 1) * keep, 1 - keep)
        return [(coarse + 1) / 2, (refined + 1) / 2]


@PURIFIERS.register("ae")
class AePurifier(Purifier):
    """U-Net encoder-decoder (nets/ae.py) trained with ℓ1; one stage."""

    def __init__(self, *, width: int, image_size: int, work_size: int = 0) -> None:
        super().__init__(work_size)
        self.net = UNetAE(width)

    def native_stages(self, x: Tensor, keep: Tensor) -> list[Tensor]:
        return [self.net(x, keep)]


def _check_width(width: int) -> None:
    if width < MIN_WIDTH:
        raise ValueError(f"width {width} is below {MIN_WIDTH}; use e.g. 16 (quick) or 48 (paper)")


def build_purifier(kind: str, *, width: int, image_size: int, work_size: int = 0) -> Purifier:
    """A fresh purifier of `kind` (see PURIFIERS) for square images of side `image_size`;
    `work_size` > 0 runs it at that size (the paper's code: 256; see the module docstring)."""
    builder = PURIFIERS.get_entry(kind)
    _check_width(width)
    _check_divisible(work_size or image_size, "work_size" if work_size else "image_size")
    return builder(width=width, image_size=image_size, work_size=work_size)


def build_discriminator(*, width: int, image_size: int) -> nn.Module:
    """SN-PatchGAN for the GAN purifier; `image_size` is the size D sees (the work size if set).
    Call it as D(x, keep) with x in [0, 1]; it returns (N, P) patch scores."""
    _check_width(width)
    if image_size < 1:
        raise ValueError(f"image_size {image_size} must be positive")
    return PatchDiscriminator(width, image_size)
