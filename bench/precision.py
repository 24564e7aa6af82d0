"""precision: what bf16 autocast (the library's default on CUDA, `ATOP_AMP`) does to the attack.

Fidelity, on trained defenses (`--defenses`, default each arch's
checkpoints/<arch>/cifar10/defense-<purifier>-rt2-atop.pt that exists): the whole defense's EOT
input gradient at the same seeded draws in float32 and under bf16 autocast, compared by cosine
similarity and by the share of nonzero pixels whose sign agrees (what an L∞ PGD step follows).
The scale to judge them by is beside: the same comparison between two float32 gradients at
independent draws, the EOT noise every attack step already carries. Random weights are no
stand-in here: untrained deep purifiers are chaotic (on the quick GAN, bf16 and float32 gradients
of random weights were uncorrelated, of trained weights 0.995 alike).
Speed, on each arch's networks with random weights (speed does not depend on them): PGD-EOT in
each precision, timed in interleaved rounds. On a CPU without fast bf16 (AVX2) bf16 is an order
of magnitude slower: the benchmark is meant for a GPU (`--device cuda`)."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from atop_core.attacks import eot_grad, eot_loss
from atop_core.config import settings
from atop_core.defense import freeze, load_defense
from bench.harness import time_interleaved
from bench.workloads import BenchConfig, arch, attack_runner, build_defense, ours, synthetic_images

DRAW_SEED, OTHER_DRAW_SEED = 1, 2
FIDELITY_IMAGES = 16


def _gradient(model, x: Tensor, y: Tensor, eot: int, seed: int, amp: bool) -> Tensor:
    model.transform.seed(seed)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        return eot_grad(eot_loss, model, x, y, eot).float()


def agreement(a: Tensor, b: Tensor, prefix: str) -> dict:
    """Mean per-image cosine similarity, and the share of pixels nonzero in either gradient
    whose signs agree (masked pixels have none)."""
    cosine = F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).mean().item()
    nonzero = (a != 0) | (b != 0)
    signs = ((a.sign() == b.sign()) & nonzero).sum().item() / max(1, nonzero.sum().item())
    return {f"{prefix}_cosine": round(cosine, 4), f"{prefix}_sign_agreement": round(signs, 4)}


def trained_defenses(cfg: BenchConfig) -> list[Path]:
    if cfg.defenses:
        return [Path(p) for p in cfg.defenses]
    root = settings().checkpoints_dir
    found = (
        root / a / "cifar10" / f"defense-{kind}-rt2-atop.pt"
        for a in cfg.archs
        for kind in cfg.purifiers
    )
    return [p for p in found if p.exists()]


def fidelity_row(cfg: BenchConfig, path: Path, device: torch.device) -> dict:
    model = freeze(load_defense(path, device))
    x, y = synthetic_images(FIDELITY_IMAGES, device, cfg.seed)
    reference = _gradient(model, x, y, cfg.eot, DRAW_SEED, amp=False)
    bf16 = _gradient(model, x, y, cfg.eot, DRAW_SEED, amp=True)
    other_draws = _gradient(model, x, y, cfg.eot, OTHER_DRAW_SEED, amp=False)
    return {
        "defense": str(path),
        "images": len(x),
        "eot": cfg.eot,
        **agreement(bf16, reference, "bf16"),  # bf16 vs float32, the same draws
        **agreement(other_draws, reference, "draws"),  # float32 at other draws vs float32
    }


def speed_row(cfg: BenchConfig, a: str, kind: str, device: torch.device) -> dict:
    style = ours(cfg.batch)
    model = build_defense(arch(a), kind, style, device, cfg.seed)
    x, y = synthetic_images(cfg.n_images(a), device, cfg.seed)
    runners = {
        "float32": attack_runner(model, style, x, y),
        "bf16": attack_runner(model, style, x, y, amp=True),
    }
    runs = {name: (lambda run=run: run(cfg.steps, cfg.eot)) for name, run in runners.items()}
    timed = time_interleaved(runs, device, cfg.repeats, cfg.budget_s)
    per_s = {k: len(x) / t.best_s for k, t in timed.items()}
    return {
        "arch": a,
        "purifier": kind,
        "images": len(x),
        "steps": cfg.steps,
        "eot": cfg.eot,
        "images_per_s_float32": round(per_s["float32"], 3),
        "images_per_s_bf16": round(per_s["bf16"], 3),
        "bf16_speedup": round(per_s["bf16"] / per_s["float32"], 3),
        "load_average": [timed["float32"].load_before, timed["float32"].load_after],
    }


def run(cfg: BenchConfig, device: torch.device) -> dict:
    fidelity = [fidelity_row(cfg, p, device) for p in trained_defenses(cfg)]
    speed = [speed_row(cfg, a, kind, device) for a in cfg.archs for kind in cfg.purifiers]
    return {"rows": speed, "fidelity": fidelity}
