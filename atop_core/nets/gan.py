"""The GAN-based purifier's networks: a DeepFillv2-style gated-convolution generator, the
SN-PatchGAN discriminator and the hinge losses (Yu et al. 2019, "Free-Form Image Inpainting with
Gated Convolution"; the PyTorch port nipponjo/deepfillv2-pytorch was read for shapes).

Differences from DeepFillv2, all for 32×32 inputs on CPU:
- the refine stage has no contextual-attention branch (it only matches patches, which at an 8×8
  bottleneck are a handful of pixels); it is the gated encoder-decoder of the coarse stage;
- both stages take the same 5 input channels (image, ones, missing mask);
- bottleneck dilations are capped below the bottleneck size (at 8×8 dilation 8 or 16 only reads
  padding), so a 32×32 generator keeps dilations 2 and 4;
- the discriminator stops halving before its map would be smaller than 2×2.

The generator works on [-1, 1] images with the DeepFill mask convention (1 = missing); the
discriminator takes [0, 1] images and a keep-mask like every public function, and converts.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

DILATIONS = (2, 4, 8, 16)  # DeepFillv2's bottleneck
GATE_COMPENSATION = 2.0  # 1 / sigmoid(0)
D_LAYERS = 6  # SN-PatchGAN's stride-2 convolutions at 256×256
D_KERNEL = 5
D_SLOPE = 0.2  # leaky-ReLU slope of SN-PatchGAN
D_MIN_MAP = 2  # stop halving before the patch map gets smaller than this


class GatedConv2d(nn.Module):
    """ELU(features)·sigmoid(gate): the gate learns, per pixel and channel, how much a feature
    computed partly from missing pixels may pass (Yu et al. 2019)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.cout = cout
        self.conv = nn.Conv2d(cin, 2 * cout, k, stride, dilation * (k - 1) // 2, dilation)
        # He init for ELU, and twice that for the features: the gate is ~0.5 at init and would
        # halve the signal at each of ~16 layers, leaving short CPU trainings nearly frozen
        nn.init.kaiming_normal_(self.conv.weight, nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)
        self.conv.weight.data[:cout] *= GATE_COMPENSATION

    def forward(self, x: Tensor) -> Tensor:
        features, gate = self.conv(x).split(self.cout, dim=1)
        return F.elu(features) * torch.sigmoid(gate)


class GatedUp(nn.Module):
    """Nearest ×2 up-sampling then a gated conv (DeepFill's 'deconv', free of checkerboards)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = GatedConv2d(cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def bottleneck_dilations(size: int) -> tuple[int, ...]:
    """DeepFillv2's dilations that are smaller than the bottleneck side `size`."""
    return tuple(d for d in DILATIONS if d < size)


def gated_stage(cin: int, cnum: int, dilations: tuple[int, ...]) -> nn.Sequential:
    """One DeepFill stage: 5×5 stem, two stride-2 downsamplings, dilated bottleneck, nearest-up
    decoder, tanh RGB; (N, cin, H, W) -> (N, 3, H, W) in [-1, 1], H and W divisible by 4."""
    c2, c4 = max(cnum // 2, 1), max(cnum // 4, 1)
    layers = [
        GatedConv2d(cin, c2, 5),
        GatedConv2d(c2, cnum, 3, stride=2),
        GatedConv2d(cnum, cnum),
        GatedConv2d(cnum, 2 * cnum, 3, stride=2),
        GatedConv2d(2 * cnum, 2 * cnum),
        GatedConv2d(2 * cnum, 2 * cnum),
        *(GatedConv2d(2 * cnum, 2 * cnum, dilation=d) for d in dilations),
        GatedConv2d(2 * cnum, 2 * cnum),
        GatedConv2d(2 * cnum, 2 * cnum),
        GatedUp(2 * cnum, cnum),
        GatedConv2d(cnum, cnum),
        GatedUp(cnum, c2),
        GatedConv2d(c2, c4),
        nn.Conv2d(c4, 3, 3, padding=1),  # DeepFill's to-RGB layer is ungated
        nn.Tanh(),
    ]
    return nn.Sequential(*layers)


class GatedGenerator(nn.Module):
    """Two-stage inpainting generator. Input: image in [-1, 1] with missing pixels at 0 and the
    (N, 1, H, W) missing mask (1 = missing); output: (coarse, refined) in [-1, 1]."""

    IN_CHANNELS = 5  # image, ones, missing mask (DeepFillv2's input)

    def __init__(self, cnum: int, bottleneck: int):
        super().__init__()
        dilations = bottleneck_dilations(bottleneck)
        self.coarse = gated_stage(self.IN_CHANNELS, cnum, dilations)
        self.refine = gated_stage(self.IN_CHANNELS, cnum, dilations)

    def forward(self, x: Tensor, missing: Tensor) -> tuple[Tensor, Tensor]:
        ones = torch.ones_like(missing)
        coarse = self.coarse(torch.cat([x, ones, missing], dim=1))
        # the refine stage sees the known pixels and the coarse fill only where pixels are missing
        composite = x * (1 - missing) + coarse * missing
        refined = self.refine(torch.cat([composite, ones, missing], dim=1))
        return coarse, refined


def discriminator_layers(image_size: int) -> int:
    """How many stride-2 layers SN-PatchGAN keeps at `image_size`: at most 6, and none that would
    leave a patch map smaller than D_MIN_MAP pixels (32 -> 4 layers, 256 -> 6)."""
    n, size = 0, image_size
    while n < D_LAYERS and (size + 1) // 2 >= D_MIN_MAP:
        size, n = (size + 1) // 2, n + 1
    return max(n, 1)


class PatchDiscriminator(nn.Module):
    """SN-PatchGAN: spectral-norm 5×5 stride-2 convs with leaky ReLU; every output pixel of every
    channel is one patch score (N, P). Takes [0, 1] images and the keep-mask."""

    def __init__(self, cnum: int, image_size: int):
        super().__init__()
        widths = [cnum, 2 * cnum] + [4 * cnum] * (D_LAYERS - 2)
        layers: list[nn.Module] = []
        cin = 4  # RGB in [-1, 1] + missing mask
        for cout in widths[: discriminator_layers(image_size)]:
            conv = nn.Conv2d(cin, cout, D_KERNEL, stride=2, padding=D_KERNEL // 2)
            layers += [spectral_norm(conv), nn.LeakyReLU(D_SLOPE)]
            cin = cout
        self.net = nn.Sequential(*layers, nn.Flatten())

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        return self.net(torch.cat([x * 2 - 1, 1 - keep], dim=1))


def d_hinge_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """½·mean(relu(1 − D(real))) + ½·mean(relu(1 + D(fake))), as in the authors' notebooks."""
    return 0.5 * F.relu(1 - real_scores).mean() + 0.5 * F.relu(1 + fake_scores).mean()


def g_hinge_loss(fake_scores: Tensor) -> Tensor:
    """−mean(D(fake)): the generator's side of the hinge GAN loss."""
    return -fake_scores.mean()
