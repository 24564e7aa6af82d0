"""Classifiers: images in [0, 1] to logits, with input normalization inside the model.

Every model is `Classifier(normalize, net)`: `net` is a standard architecture whose state-dict
keys are the usual ones (torchvision's ResNets; RobustBench's WideResNet), so external weights
load under `net.` and the normalization stays ours ("classifier normalization lives
inside the classifier module").
"""

import math
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from atop_core.registry import Registry

CLASSIFIERS = Registry("classifier")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # the values most CIFAR-10 training code uses
CIFAR10_STD = (0.2471, 0.2435, 0.2616)  # per-pixel std of the training set
CIFAR_STEM_MAX_SIZE = 64  # up to here a 3×3 stride-1 stem; above, ImageNet's 7×7/2 + max-pool
SMALL_STEM = 24  # airbench94's stem width
SMALL_WIDTHS = (32, 64, 128)  # airbench94's (64, 256, 256), cut to ~0.3M params for CPU
KEYS_SHOWN = 5  # how many missing / unexpected keys an error message names


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers, so they travel with the state dict and device."""

    def __init__(self, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def set_identity(self) -> None:
        """For nets trained on raw [0, 1] input, such as RobustBench's."""
        self.mean.fill_(0.0)
        self.std.fill_(1.0)


class Classifier(nn.Module):
    """normalize then net; two named parts so external weights can load into `.net` alone.

    With `flip_average`, eval mode returns the mean of the logits of the image and its mirror
    image (horizontal-flip test-time augmentation, as airbench evaluates); train mode always
    sees one view, so training cost and recipe are unchanged. It is a flag, not a module, so
    state dicts are the same either way."""

    def __init__(self, normalize: Normalize, net: nn.Module, flip_average: bool = False) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.flip_average = flip_average

    def forward(self, x: Tensor) -> Tensor:
        if not self.flip_average or self.training:
            return self.net(self.normalize(x))
        both = self.net(self.normalize(torch.cat([x, x.flip(3)])))  # one pass for both views
        return (both[: len(x)] + both[len(x) :]) / 2


@contextmanager
def single_view(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with flip averaging off inside the block (a no-op for other modules)."""
    saved = getattr(model, "flip_average", None)
    if saved is not None:
        model.flip_average = False
    try:
        yield model
    finally:
        if saved is not None:
            model.flip_average = saved


def _wrap(net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> Classifier:
    return Classifier(Normalize(mean, std), net)


# --- small: a fast plain conv net for CPU profiles ---------------------------------------------


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)]


class ConvGroup(nn.Sequential):
    """airbench94's block: conv, 2×2 max-pool, BN, GELU, conv, BN, GELU. Pooling right after the
    first conv keeps that conv at full resolution and the rest cheap."""

    def __init__(self, cin: int, cout: int) -> None:
        conv1, bn1 = _conv_bn(cin, cout)
        super().__init__(conv1, nn.MaxPool2d(2), bn1, nn.GELU(), *_conv_bn(cout, cout), nn.GELU())


class SmallNet(nn.Sequential):
    """Stem, three ConvGroups (32→16→8→4 at 32×32), global max-pool, linear: after Keller
    Jordan's airbench94 (github.com/KellerJordan/cifar10-airbench), narrower and without its
    data-dependent whitening stem, so it needs no data to build."""

    def __init__(self, num_classes: int, width: float = 1.0) -> None:
        stem = max(1, round(SMALL_STEM * width))
        widths = [max(1, round(c * width)) for c in SMALL_WIDTHS]
        parts = {"stem": nn.Sequential(*_conv_bn(3, stem), nn.GELU())}
        for i, (cin, cout) in enumerate(zip([stem, *widths[:-1]], widths, strict=True), start=1):
            parts[f"group{i}"] = ConvGroup(cin, cout)
        parts |= {"pool": nn.AdaptiveMaxPool2d(1), "flatten": nn.Flatten()}
        parts["fc"] = nn.Linear(widths[-1], num_classes)
        super().__init__(OrderedDict(parts))


@CLASSIFIERS.register("small")
def small(
    num_classes: int,
    image_size: int,
    width: float = 1.0,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> Classifier:
    """~0.3M parameters at width 1; `image_size` is unused (global pooling takes any size)."""
    return _wrap(SmallNet(num_classes, width), mean, std)


# --- ResNets (He et al. 2016), torchvision's modules and key names ----------------------------


def resnet(
    block: type[BasicBlock | Bottleneck],
    layers: list[int],
    num_classes: int,
    image_size: int,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> Classifier:
    """torchvision's ResNet (adaptive average pool, so any input size), with the usual CIFAR stem
    (3×3 stride-1 conv, no max-pool) for images up to 64 pixels: the ImageNet stem would shrink a
    32×32 image to 8×8 before the first block."""
    net = ResNet(block, layers, num_classes=num_classes)
    if image_size <= CIFAR_STEM_MAX_SIZE:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    return _wrap(net, mean, std)


@CLASSIFIERS.register("resnet18")
def resnet18(num_classes: int, image_size: int, **kwargs) -> Classifier:
    return resnet(BasicBlock, [2, 2, 2, 2], num_classes, image_size, **kwargs)


@CLASSIFIERS.register("resnet34")
def resnet34(num_classes: int, image_size: int, **kwargs) -> Classifier:
    return resnet(BasicBlock, [3, 4, 6, 3], num_classes, image_size, **kwargs)


@CLASSIFIERS.register("resnet50")
def resnet50(num_classes: int, image_size: int, **kwargs) -> Classifier:
    return resnet(Bottleneck, [3, 4, 6, 3], num_classes, image_size, **kwargs)


# --- WideResNet (Zagoruyko & Komodakis 2016), RobustBench's key names -------------------------


class WideBlock(nn.Module):
    """Pre-activation basic block. As in RobustBench's (TRADES') code, a block that changes width
    feeds its shortcut the activated input; a block that keeps width adds the raw input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal_in_out = cin == cout
        # The attribute name is RobustBench's, so its checkpoints load unchanged.
        self.convShortcut = (
            None if self.equal_in_out else nn.Conv2d(cin, cout, 1, stride, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class WideGroup(nn.Module):
    """`n` blocks at one width; the `.layer` level exists only to match RobustBench's keys."""

    def __init__(self, n: int, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        blocks = [
            WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)
        ]
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    """WRN-depth-widen with dropout 0 (RobustBench's models), adaptive average pool at the end
    so inputs other than 32×32 work."""

    def __init__(self, depth: int, widen: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4 (28, 34, 70, ...), got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.block1 = WideGroup(n, widths[0], widths[1], 1)
        self.block2 = WideGroup(n, widths[1], widths[2], 2)
        self.block3 = WideGroup(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """Zagoruyko's init: conv weights N(0, 2 / fan_out), BN to identity, zero fc bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(F.relu(self.bn1(out)), 1)
        return self.fc(out.flatten(1))


def wide_resnet(
    depth: int,
    widen: int,
    num_classes: int,
    image_size: int,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> Classifier:
    """WRN-depth-widen; `image_size` is unused (the net keeps its CIFAR stem at any size)."""
    return _wrap(WideResNet(depth, widen, num_classes), mean, std)


@CLASSIFIERS.register("wrn-28-10")
def wrn_28_10(num_classes: int, image_size: int, **kwargs) -> Classifier:
    return wide_resnet(28, 10, num_classes, image_size, **kwargs)


@CLASSIFIERS.register("wrn-70-16")
def wrn_70_16(num_classes: int, image_size: int, **kwargs) -> Classifier:
    return wide_resnet(70, 16, num_classes, image_size, **kwargs)


# --- entry points --------------------------------------------------------------------------------


def build_classifier(
    arch: str, num_classes: int, image_size: int, flip_average: bool = False, **kwargs
) -> Classifier:
    """One entry point by name; an unknown `arch` lists the known ones. Built on CPU. A
    `robustbench:<model>` name builds that RobustBench architecture (`nets/robustbench.py`)."""
    from atop_core.nets import robustbench  # it builds on this module

    if robustbench.is_robustbench(arch):
        model = robustbench.build(arch, num_classes, image_size)
    else:
        model = CLASSIFIERS.build(arch, num_classes, image_size, **kwargs)
    model.flip_average = flip_average
    return model


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not (buffers such as BN statistics excluded)."""
    return sum(p.numel() for p in model.parameters())


def _read_state_dict(path: Path, map_location: str | torch.device) -> dict[str, Tensor]:
    """The tensors of a checkpoint: a raw state dict, or one under `state_dict` or
    `model_state_dict`, with DataParallel's `module.` prefix removed."""
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path} holds objects other than tensors, which we do not unpickle; if you trust "
            "the file, re-save only its state dict: torch.save(torch.load(path, "
            "weights_only=False)['state_dict'], new_path)"
        ) from e
    for key in ("state_dict", "model_state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _key_mismatch(have: Mapping[str, Tensor], want: Mapping[str, Tensor]) -> list[str]:
    """Problems loading `have` into a module whose state dict is `want`; empty if none. Missing
    BN `num_batches_tracked` counters are fine: checkpoints before PyTorch 0.4.1 lack them."""
    missing = [k for k in want if k not in have and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in have if k not in want]
    shapes = [
        f"{k}: file {tuple(have[k].shape)}, model {tuple(want[k].shape)}"
        for k in have
        if k in want and have[k].shape != want[k].shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            problems.append(f"{label} ({len(keys)}): {', '.join(keys[:KEYS_SHOWN])}")
    return problems


def load_external_state_dict(
    model: nn.Module, path: str | Path, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Load a checkpoint into a `Classifier`, in place, and return it.

    A file with our keys (`normalize.*`, `net.*`) loads whole. A file with only the net's keys
    (for example RobustBench's Standard WRN-28-10, which has no normalization and expects raw
    [0, 1] input) loads into `model.net`, and `model.normalize` becomes the identity, with a
    warning. Anything else raises ValueError naming the first missing and unexpected keys.
    """
    path = Path(path)
    state = _read_state_dict(path, map_location)
    full = model.state_dict()
    if not _key_mismatch(state, full):
        model.load_state_dict(state)
        return model
    inner = {k: v for k, v in state.items() if not k.startswith("normalize.")}
    if inner and all(k.startswith("net.") for k in inner):
        inner = {k.removeprefix("net."): v for k, v in inner.items()}
    net_only = isinstance(model, Classifier) and len(inner) == len(state)
    problems = (
        _key_mismatch(inner, model.net.state_dict()) if net_only else _key_mismatch(state, full)
    )
    if problems:
        raise ValueError(
            f"{path} does not fit this model; {'; '.join(problems)}. Build the classifier with "
            "the architecture, num_classes and image_size the checkpoint was trained with "
            "(build_classifier(arch, num_classes, image_size))."
        )
    model.net.load_state_dict(inner)
    model.normalize.set_identity()
    warnings.warn(
        f"{path} has no normalization buffers, so the classifier's Normalize is now the identity "
        "(mean 0, std 1), as RobustBench's models expect raw [0, 1] input; if the net was trained "
        "on normalized input, set model.normalize.mean and .std yourself.",
        stacklevel=2,
    )
    return model
