"""Mixed precision: bf16 autocast for the attacks' and the training steps' passes.

One switch, `ATOP_AMP` (the command line's `--amp`): `auto` (the default) turns bf16 autocast on
for CUDA devices that support bf16 and leaves every other device in float32 (the CPUs this
project was built on have AVX2 and no fast bf16); `on` forces it, on the CPU too (slow there, but
what the tests use); `off` keeps float32 everywhere.

Where it applies: inside `attacks.run_attack` (the attack's forward and gradient passes; Square,
which compares logit margins query by query, stays in float32) and around every training step
(`train.fit`). Judging is never autocast, so a record's accuracies are float32 classifications
of its adversarial images; a record attacked under bf16 says so (`precision`).
"""

from contextlib import AbstractContextManager

import torch

from atop_core.config import ENV_AMP, settings

AMP_CHOICES = ("auto", "on", "off")
BF16 = "bf16-autocast"
FLOAT32 = "float32"


def amp_enabled(device: torch.device | str) -> bool:
    """Whether bf16 autocast is on for `device` under the `ATOP_AMP` setting."""
    device = torch.device(device)
    choice = settings().amp
    if choice not in AMP_CHOICES:
        raise ValueError(f"{ENV_AMP}={choice!r} is not a choice; set it to one of {AMP_CHOICES}")
    if choice == "off":
        return False
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if choice == "auto":
        return cuda_bf16
    if device.type == "cuda" and not cuda_bf16:
        raise ValueError(f"{ENV_AMP}=on but {device} has no bf16 support; set {ENV_AMP}=off")
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"{ENV_AMP}=on is supported on cuda and cpu, not {device.type}")
    return True


def autocast(device: torch.device | str, enabled: bool | None = None) -> AbstractContextManager:
    """bf16 autocast on `device` when `enabled` (None: `amp_enabled(device)`), else a context
    that changes nothing. A loop resolves `enabled` once and passes it, rather than reading the
    setting at every step."""
    device = torch.device(device)
    enabled = amp_enabled(device) if enabled is None else enabled
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def precision_name(device: torch.device | str) -> str:
    """What a record or a training log says about the precision its passes ran in."""
    return BF16 if amp_enabled(device) else FLOAT32
