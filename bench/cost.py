"""What the paper profile costs, before anyone starts it: per training stage and per evaluation
table, the images passed through, the network FLOPs (counted with PyTorch's formulas on the paper
profile's own networks, one image at a time) and the hours they take on one GPU and on eight.

Hours = FLOPs / (the card's dense bf16 peak × `SHARE`, the share of peak the work reaches). The
share is an assumption until `scripts/gpu_check.sh` measures it on a card (its eval rows'
`fraction_of_conv_peak`): 5%, what a plain PyTorch ResNet-18 CIFAR-10 epoch of about ten
seconds on an A100 reaches (165 TFLOP of training arithmetic per epoch, against a 312 TFLOP/s
peak); small 32-px networks use a large card poorly. (On 2 CPU cores bench measured 0.72-0.84 of
the convolution peak for the paper networks' attack loop: a CPU is far easier to keep busy.)
Eight GPUs: data-parallel training at `DDP_EFFICIENCY`, sharded
evaluation at 1 (independent jobs). Evaluation counts one attack image-draw-step as one forward
and backward pass through transform, purifier and classifier; judging and Square's queries are
forward passes (a third of that); AutoAttack counts every one of its attacks run on every image
(an upper bound: each runs only on the points still robust). Sanity checks add their attacks on
`sanity_n` images per record.
"""

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from atop_core.attacks import AttackConfig
from atop_core.config import get_profile
from atop_core.data import DATASETS
from atop_core.defense import DefendedModel
from atop_core.experiments import (
    ablation_suite,
    adaptive_suite,
    generalization_suite,
    standard_case_suite,
)
from atop_core.nets.classifiers import build_classifier
from atop_core.nets.purifiers import build_discriminator, build_purifier
from atop_core.train import (
    classifier_state,
    classifier_step,
    finetune_inputs,
    finetune_step,
    pretrain_step,
    purifier_state,
)
from atop_core.transforms import RandomTransform
from bench.harness import count_flops
from bench.workloads import BenchConfig

H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s, H100 SXM
SHARE = 0.05  # assumed share of that peak (see the module doc)
DDP_EFFICIENCY = 0.9  # eight-GPU data-parallel training, assumed
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "imagenette": 9_469}
FORWARD = 1 / 3  # a forward pass, as a share of forward + backward
SANITY_SQUARE_QUERIES = 1000  # the sanity checks' Square (EvalConfig.square_queries)


def _batch(size: int, n: int, classes: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, size, size, generator=g)
    return x.to(device), torch.randint(0, classes, (n,), generator=g).to(device)


def stage_steps(profile, dataset: str, kind: str, device="cpu", batch: int | None = None) -> dict:
    """{stage: (one step on a batch, its batch size)} for each training stage, and one attack
    step of the defense and of the bare classifier, with purifier `kind` on `dataset` at the
    profile's networks (random weights) and batch sizes (or `batch` images for all)."""
    size = DATASETS.get_entry(dataset).image_size
    classes = len(DATASETS.get_entry(dataset).classes)
    c_cfg, p_cfg = profile.classifier, dataclasses.replace(profile.purifier, kind=kind)
    width = {"width": c_cfg.width} if c_cfg.width else {}
    classifier = build_classifier(c_cfg.arch_for(size), classes, size, **width).to(device)
    at = dataclasses.replace(c_cfg, adv=profile.baselines[0] if profile.baselines else "pgd")
    purifier = build_purifier(kind, width=p_cfg.width, image_size=size).to(device)
    disc = build_discriminator(width=p_cfg.width, image_size=size) if kind == "gan" else None
    disc = disc.to(device) if disc is not None else None
    transform = RandomTransform(dataclasses.replace(profile.transform, kind="rt2"), seed=0)
    state = purifier_state(purifier, disc, p_cfg.lr, p_cfg.betas)
    frozen = build_classifier(c_cfg.arch_for(size), classes, size, **width).to(device)
    frozen.eval().requires_grad_(False)
    craft = finetune_inputs(profile.finetune, frozen)
    steps = {
        "classifier": (classifier_step(classifier_state(classifier, c_cfg, 1), c_cfg), c_cfg),
        "adversarial training": (classifier_step(classifier_state(classifier, at, 1), at), at),
        "pretraining": (pretrain_step(state, transform, p_cfg), p_cfg),
        "AToP fine-tuning": (
            finetune_step(state, transform, frozen, profile.finetune, p_cfg.gan_weight, craft),
            profile.finetune,
        ),
    }
    defense = DefendedModel(frozen, purifier, transform).eval()
    out = {}
    for name, (step, cfg) in steps.items():
        n = batch or cfg.batch_size
        x, y = _batch(size, n, classes, device)
        out[name] = (lambda step=step, x=x, y=y: step(x, y, torch.Generator())), n
    for name, model in (("defense step", defense), ("classifier step", frozen)):
        n = batch or profile.evaluation.batch_size
        x, y = _batch(size, n, classes, device)

        def attack_step(model=model, x=x, y=y) -> None:
            point = x.clone().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(model(point), y), point)

        out[name] = attack_step, n
    return out


def stage_flops(profile, dataset: str, kind: str) -> dict[str, float]:
    """FLOPs per image of each of `stage_steps`, counted on batches of two."""
    return {
        name: count_flops(step) / n
        for name, (step, n) in stage_steps(profile, dataset, kind, batch=2).items()
    }


def attack_steps(cfg: AttackConfig) -> float:
    """Image-draw-steps one image costs under `cfg` (forward-only work at a third)."""
    name, steps, eot = cfg.name, cfg.steps or 1, cfg.eot or 1
    if name == "clean":
        return 0.0
    if name == "square" or name == "square-l2":
        return cfg.queries * FORWARD
    if name.startswith("cw"):
        return steps * cfg.search_steps
    if name in ("autoattack", "autoattack-l2"):  # APGD-CE, APGD-T and FAB-T on 9 targets, Square
        return steps + 9 * steps + 9 * steps + cfg.queries * FORWARD
    if name.startswith("autoattack-rand"):  # APGD-CE and APGD-DLR with EOT
        return 2 * steps * eot
    if name == "fgsm":
        return 1.0
    return steps * eot + FORWARD  # PGD-like: steps with EOT, the last iterate scored


def record_flops(cfg: AttackConfig, step: float, n: int, draws: int, sanity_n: int) -> float:
    """One record: the attack on `n` images, judging `draws` draws, and the sanity checks (on
    `sanity_n` images: the attack at a large budget, at twice the steps and EOT (4x), on the
    classifier alone, and Square)."""
    attack = attack_steps(cfg) * step
    checks = 0.0
    if cfg.name != "clean":
        checks = sanity_n * (6 * attack + SANITY_SQUARE_QUERIES * FORWARD * step)
    return n * attack + n * draws * FORWARD * step + checks


def evaluation_tables(
    profile, flops: dict[str, dict[str, float]]
) -> dict[str, tuple[float, float]]:
    """FLOPs of each table's records at the profile's budgets: the ablation (every purifier,
    transform and AToP, both protocols), the generalization table (RT2 purifiers, the bare and
    adversarially trained classifiers), the adaptive attacks and the standard case (RT2); with
    the images attacked (records × n)."""
    ev, n = profile.evaluation, profile.data.n_eval

    def cost(attacks: list[AttackConfig], step_of: dict[str, float], rows: float) -> tuple:
        total = sum(
            rows * record_flops(cfg, step_of[kind], n, ev.draws, ev.sanity_n)
            for cfg in attacks
            for kind in profile.purifiers
        )
        return total, rows * len(attacks) * len(profile.purifiers) * n

    def plus(a: tuple, b: tuple) -> tuple:
        return a[0] + b[0], a[1] + b[1]

    defense = {k: f["defense step"] for k, f in flops.items()}
    classifier = {k: f["classifier step"] for k, f in flops.items()}
    ablation_rows, rt2_rows = 2 * len(profile.transforms), 2  # per purifier: ± AToP
    classifiers = (1 + len(profile.baselines)) / len(profile.purifiers)  # bare and AT, once
    generalization = generalization_suite(profile)
    return {
        "ablation": plus(
            cost(ablation_suite(profile, "whole-model"), defense, ablation_rows),
            cost(ablation_suite(profile, "classifier-only"), classifier, ablation_rows),
        ),
        "generalization": plus(
            cost(generalization, defense, rt2_rows), cost(generalization, classifier, classifiers)
        ),
        "adaptive": cost(adaptive_suite(profile), defense, rt2_rows),
        "standard case": cost(standard_case_suite(profile), defense, rt2_rows),
    }


def cost_table(profile_name: str = "paper", share: float = SHARE) -> list[dict]:
    """One row per dataset and stage or table: images, FLOPs and hours on 1 and 8 H100s."""
    profile = get_profile(profile_name)
    rate = H100_BF16_PEAK * share
    rows = []
    for dataset in profile.datasets:
        flops = {kind: stage_flops(profile, dataset, kind) for kind in profile.purifiers}
        first = flops[profile.purifiers[0]]
        n_train = TRAIN_IMAGES[dataset]
        c, p, f = profile.classifier, profile.purifier, profile.finetune
        at_images = (c.adv_epochs or c.epochs) * n_train
        stages = {
            "classifier": (c.epochs * n_train * first["classifier"], c.epochs * n_train),
            "adversarial training": (at_images * first["adversarial training"], at_images),
        }
        trainings = len({"rt2" if rt == "rt3" else rt for rt in profile.transforms})
        for kind in profile.purifiers:
            pre_images = p.epochs * (p.train_subset or n_train) * trainings
            fine_images = f.epochs * (f.train_subset or n_train) * trainings
            pre = pre_images * flops[kind]["pretraining"]
            stages[f"pretraining ({kind})"] = (pre, pre_images)
            fine = fine_images * flops[kind]["AToP fine-tuning"]
            stages[f"AToP fine-tuning ({kind})"] = (fine, fine_images)
        for name, (total, images) in stages.items():
            rows.append(_row(dataset, "training", name, images, total, rate, DDP_EFFICIENCY))
        for name, (total, images) in evaluation_tables(profile, flops).items():
            rows.append(_row(dataset, "evaluation", name, images, total, rate, 1.0))
    return rows


def _row(
    dataset: str, kind: str, name: str, images: float, flops: float, rate: float, efficiency: float
) -> dict:
    hours = flops / rate / 3600
    return {
        "dataset": dataset,
        "kind": kind,
        "stage": name,
        "images": int(images),
        "pflop": round(flops / 1e15, 1),
        "h100_hours": round(hours, 2),
        "h100x8_hours": round(hours / (8 * efficiency), 2),
    }


def run(cfg: BenchConfig, device: torch.device) -> dict:
    rows = cost_table("paper")
    totals = {k: round(sum(r[k] for r in rows), 1) for k in ("pflop", "h100_hours", "h100x8_hours")}
    return {
        "rows": rows,
        "totals": totals,
        "assumptions": {
            "peak_flop_per_s": H100_BF16_PEAK,
            "share_of_peak": SHARE,
            "ddp_efficiency": DDP_EFFICIENCY,
            "train_images": TRAIN_IMAGES,
        },
    }


DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"
MARKERS = ("<!-- cost:start -->", "<!-- cost:end -->")


def markdown(result: dict) -> str:
    """The cost table as the docs show it."""
    lines = [
        "| dataset | stage | images | PFLOP | hours, 1 H100 | hours, 8 H100 |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['dataset']} | {r['kind']}: {r['stage']} | {r['images']:,} | {r['pflop']:,} | "
            f"{r['h100_hours']:,} | {r['h100x8_hours']:,} |"
        )
    t = result["totals"]
    lines.append(f"| **all** | | | {t['pflop']:,} | {t['h100_hours']:,} | {t['h100x8_hours']:,} |")
    return "\n".join(lines)


def update_doc(result: dict, doc: Path = DOC) -> bool:
    """Replace the table between the cost markers of docs/performance.md; False if absent."""
    text = doc.read_text()
    start, end = MARKERS
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    doc.write_text(f"{head}{start}\n{markdown(result)}\n{end}{rest.split(end, 1)[1]}")
    return True
