"""Example defenses for `atop_core.evaluate` and `python -m atop_core evaluate --module`.

`gaussian_noise`: the quick profile's CIFAR-10 classifier behind Gaussian noise, the simplest random
defense (randomized smoothing's noise, without its certificate), trained by `run_all.sh` or
`python -m atop_core train --profile quick`. Copy it to wrap your own purifier or classifier.
"""

import torch
from torch import Tensor, nn

from atop_core.config import settings
from atop_core.defense import load_defense

SIGMA = 0.1  # noise standard deviation on the [0, 1] scale


class GaussianNoise(nn.Module):
    """x -> classifier(clamp(x + N(0, sigma²))): fresh noise from the global generator per call."""

    def __init__(self, classifier: nn.Module, sigma: float = SIGMA) -> None:
        super().__init__()
        self.classifier, self.sigma = classifier, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier((x + self.sigma * torch.randn_like(x)).clamp(0, 1))


def gaussian_noise() -> nn.Module:
    """The quick CIFAR-10 classifier behind Gaussian noise of standard deviation SIGMA."""
    path = settings().checkpoints_dir / "quick" / "cifar10" / "defense-none-none-plain.pt"
    return GaussianNoise(load_defense(path, "cpu").classifier)
