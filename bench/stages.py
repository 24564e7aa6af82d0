"""One epoch of each paper-profile training stage, timed: images per second of each stage's step
at the profile's batch size (random weights, synthetic images; bf16 autocast with `--amp`), and
the epoch's seconds on the dataset's training set. On a GPU (`scripts/gpu_check.sh`) it turns
`cost`'s assumed share of peak into a measurement: `fraction_of_peak` per stage. On a CPU the
paper networks are slow: use `--purifiers ae` and a small `--budget-s` for a look."""

import torch

from atop_core.config import get_profile
from atop_core.precision import autocast
from bench.cost import H100_BF16_PEAK, TRAIN_IMAGES, stage_flops, stage_steps
from bench.harness import time_interleaved
from bench.workloads import BenchConfig

DATASET = "cifar10"
TRAINING = ("classifier", "adversarial training", "pretraining", "AToP fine-tuning")


def run(cfg: BenchConfig, device: torch.device) -> dict:
    profile = get_profile("paper")
    rows = []
    for kind in cfg.purifiers:
        steps = stage_steps(profile, DATASET, kind, device)
        flops = stage_flops(profile, DATASET, kind)
        names = [n for n in TRAINING if kind == cfg.purifiers[0] or n not in TRAINING[:2]]
        calls = {}
        for name in names:
            step, n = steps[name]
            calls[name] = lambda step=step: _amp(step, device, cfg.amp)
        timed = time_interleaved(calls, device, cfg.repeats, cfg.budget_s)
        for name in names:
            n = steps[name][1]
            images_per_s = n / min(timed[name].seconds)
            rows.append(
                {
                    "stage": name if name in TRAINING[:2] else f"{name} ({kind})",
                    "batch": n,
                    "images_per_s": round(images_per_s, 1),
                    "epoch_s": round(TRAIN_IMAGES[DATASET] / images_per_s, 1),
                    "gflop_per_s": round(images_per_s * flops[name] / 1e9, 1),
                    "fraction_of_h100_peak": round(images_per_s * flops[name] / H100_BF16_PEAK, 4),
                }
            )
    return {"rows": rows, "dataset": DATASET, "amp": cfg.amp}


def _amp(step, device: torch.device, on: bool) -> None:
    with autocast(device, on):
        step()
