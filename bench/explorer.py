"""explorer: how responsive the explorer notebook is on trained defenses (`--defenses`, default
each arch's checkpoints/<arch>/cifar10/defense-<purifier>-rt2-atop.pt that exists).

A redraw is what a moved slider costs: one seeded draw of the transform and the purifier, the
classifier's predictions with the votes of `explorer.VOTE_DRAWS` draws, and the picture rendered
to PNG (`explorer.explore` + `explorer.png`). An attack is the explorer's default: full-gradient
PGD-EOT, 10 steps, EOT 4, on one image (`explorer.attack_image`). Timed on one synthetic image:
the cost does not depend on its content."""

from pathlib import Path

import torch

from atop_core.config import TransformConfig
from atop_core.defense import load_defense
from atop_core.explorer import ATTACK_CHOICES, attack_image, explore, png, view_figure
from bench.harness import time_interleaved
from bench.precision import trained_defenses
from bench.workloads import BenchConfig

ATTACK = next(iter(ATTACK_CHOICES))  # full-gradient PGD-EOT through the whole model
ATTACK_STEPS, ATTACK_EOT = 10, 4
CLASSES = [str(i) for i in range(10)]


def row(cfg: BenchConfig, path: Path, device: torch.device) -> dict:
    defense = load_defense(path, device)
    size = defense.meta["image_size"]
    x = torch.rand((3, size, size), generator=torch.Generator().manual_seed(cfg.seed))
    transform = TransformConfig(**defense.meta["transform"])

    def redraw(x_adv=None):
        view = explore(defense, transform, x, CLASSES, cfg.seed, x_adv)
        return png(view_figure(view, ["clean", "attacked"][: 1 + (x_adv is not None)]))

    def attack():
        return attack_image(defense, ATTACK, x, 0, 8 / 255, ATTACK_STEPS, ATTACK_EOT, cfg.seed)

    timed = time_interleaved(
        {"redraw": redraw, "attack": attack}, device, cfg.repeats, cfg.budget_s
    )
    return {
        "defense": str(path),
        "transform": transform.kind,
        "redraw_s": round(timed["redraw"].median_s, 3),
        "attack_s": round(timed["attack"].median_s, 3),
        "attack": f"{ATTACK_CHOICES[ATTACK][0]}, {ATTACK_STEPS} steps, EOT {ATTACK_EOT}",
        "load_average": [timed["redraw"].load_before, timed["redraw"].load_after],
    }


def run(cfg: BenchConfig, device: torch.device) -> dict:
    return {"rows": [row(cfg, p, device) for p in trained_defenses(cfg)]}
