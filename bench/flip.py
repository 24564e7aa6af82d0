"""flip: what averaging the classifier's logits over the image and its mirror costs an attack.
Full-gradient PGD-EOT through the quick defense (GAN and AE), our way, with the classifier
evaluated once or flip-averaged (two views per image), timed in interleaved rounds on the same
images; also the classifier's share of the arithmetic of one image-draw-step."""

import dataclasses

import torch

from bench.harness import count_flops, time_interleaved
from bench.workloads import BenchConfig, arch, attack_runner, build_defense, ours, synthetic_images

ARCH = "quick"
GFLOP = 1e9


def _flops_per_image(net: torch.nn.Module, device: torch.device) -> float:
    """FLOPs of one forward and input-gradient pass of `net` on one image."""
    x = torch.rand(1, 3, 32, 32, device=device, requires_grad=True)
    return float(count_flops(lambda: net(x).sum().backward()))


def run(cfg: BenchConfig, device: torch.device) -> dict:
    n = cfg.n_images(ARCH)
    x, y = synthetic_images(n, device, cfg.seed)
    style = ours(cfg.batch)
    rows = []
    for kind in cfg.purifiers:
        runs, flops = {}, {}
        for flip in (False, True):
            a = dataclasses.replace(arch(ARCH), flip_average=flip)
            model = build_defense(a, kind, style, device, cfg.seed)
            run_attack = attack_runner(model, style, x, y, cfg.amp)
            runs[flip] = lambda run_attack=run_attack: run_attack(cfg.steps, cfg.eot)
            flops[flip] = (
                _flops_per_image(model, device),
                _flops_per_image(model.classifier, device),
            )
        timed = time_interleaved(runs, device, cfg.repeats, cfg.budget_s)
        for flip, t in timed.items():
            whole, classifier = flops[flip]
            rows.append(
                {
                    "purifier": kind,
                    "flip_average": flip,
                    "images": n,
                    "steps": cfg.steps,
                    "eot": cfg.eot,
                    "image_draw_steps_per_s": round(n * cfg.steps * cfg.eot / t.best_s, 1),
                    "gflop_per_image_draw_step": round(whole / GFLOP, 4),
                    "classifier_share": round(classifier / whole, 3),
                    "seconds": [round(s, 3) for s in t.seconds],
                    "load_average": [t.load_before, t.load_after],
                }
            )
        plain, flipped = (r["image_draw_steps_per_s"] for r in rows[-2:])
        rows[-1]["slowdown"] = round(plain / flipped, 2)
    return {"rows": rows, "arch": ARCH}
