"""finetune: images per second of AToP fine-tuning (atop_core.train.finetune_step: FGSM on the
frozen classifier, then L_df + λ·CE through it, and the discriminator's step for the GAN), at
each profile's own batch size, with the purifier in the layout the pipeline uses today (NCHW) and
in channels_last, timed in interleaved rounds."""

import dataclasses

import torch

from atop_core.config import get_profile
from atop_core.nets.purifiers import build_discriminator, build_purifier
from atop_core.train import finetune_inputs, finetune_step, purifier_state
from atop_core.transforms import RandomTransform
from bench.evaluation import GFLOP
from bench.harness import count_flops, time_interleaved
from bench.workloads import IMAGE_SIZE, BenchConfig, arch, build_defense, ours, synthetic_images

BATCHES = {"quick": 2, "paper": 4}  # batches per timed repeat (paper's batch is 8)
LAYOUTS = ("nchw", "channels_last")


def finetune_runner(a: str, kind: str, channels_last: bool, device: torch.device, seed: int = 0):
    """(step over all batches, one-batch step, batch size) for a fresh purifier (and D)."""
    profile = get_profile(a)
    cfg, p_cfg = profile.finetune, profile.purifier
    classifier = build_defense(arch(a), kind, ours(1), device, seed).classifier  # frozen, CL
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        purifier = build_purifier(kind, width=p_cfg.width, image_size=IMAGE_SIZE).to(device)
        disc = None
        if kind == "gan":
            disc = build_discriminator(width=p_cfg.width, image_size=IMAGE_SIZE).to(device)
    if channels_last:
        purifier = purifier.to(memory_format=torch.channels_last)
        disc = disc.to(memory_format=torch.channels_last) if disc is not None else None
    state = purifier_state(purifier, disc, cfg.lr, p_cfg.betas)
    transform = RandomTransform(dataclasses.replace(profile.transform, kind="rt2"), seed)

    craft = finetune_inputs(cfg, classifier)

    def make_adversarial(x, y, g):
        purifier.eval()
        return craft(x, y, g)

    step = finetune_step(state, transform, classifier, cfg, p_cfg.gan_weight, make_adversarial)
    batch = cfg.batch_size
    x, y = synthetic_images(BATCHES[a] * batch, device, seed)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(seed)

    def run_all() -> None:
        for i in range(0, len(x), batch):
            step(x[i : i + batch], y[i : i + batch], g)

    return run_all, (lambda: step(x[:batch], y[:batch], g)), batch


def run(cfg: BenchConfig, device: torch.device) -> dict:
    rows = []
    for a in cfg.archs:
        for kind in cfg.purifiers:
            runs, singles, batch = {}, {}, 0
            for layout in LAYOUTS:
                runs[layout], singles[layout], batch = finetune_runner(
                    a, kind, layout == "channels_last", device, cfg.seed
                )
            timed = time_interleaved(runs, device, cfg.repeats, cfg.budget_s, warmups=singles)
            flops = count_flops(singles["nchw"]) / batch
            for layout, t in timed.items():
                images_per_s = BATCHES[a] * batch / t.best_s
                rows.append(
                    {
                        "arch": a,
                        "purifier": kind,
                        "layout": layout,
                        "batch": batch,
                        "images": BATCHES[a] * batch,
                        "seconds": [round(s, 4) for s in t.seconds],
                        "images_per_s": round(images_per_s, 3),
                        "gflop_per_image": round(flops / GFLOP, 4),
                        "gflop_per_s": round(images_per_s * flops / GFLOP, 2),
                        "load_average": [t.load_before, t.load_after],
                    }
                )
    return {"rows": rows}
