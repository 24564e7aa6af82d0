"""Judging a stochastic defense on adversarial examples (DESIGN §4).

Adversarial examples are made once per sample, then the defense is run `draws` times on them:
single-draw accuracy (the first draw), majority vote over the draws, and worst of the draws (a
sample counts only if every draw is right). Each comes with a Wilson 95% interval.
"""

import math
import time

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from atop_core.attacks import AttackConfig, run_attack
from atop_core.defense import DefendedModel

PROTOCOLS = ("whole-model", "classifier-only")
Z_95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(k: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (sound near 0 and 1, unlike the normal)."""
    if n == 0:
        return 0.0, 1.0
    if k == n:  # the closed form, exactly: avoids 0.9999999999999999
        return n / (n + z * z), 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@torch.no_grad()
def judge(defense: nn.Module, x: Tensor, y: Tensor, draws: int) -> Tensor:
    """(draws, B) bool: whether each draw of the defense classifies each image correctly."""
    if isinstance(defense, DefendedModel):
        return defense.draw_logits(x, draws).argmax(-1) == y
    return (defense(x).argmax(-1) == y).expand(draws, -1)


def summarize(correct: Tensor) -> dict:
    """Single-draw, majority-vote and worst-of-K accuracy, each with its interval, and per-sample
    outcomes, from a (draws, N) bool tensor."""
    draws, n = correct.shape
    outcomes = {
        "single": correct[0],
        "vote": correct.float().mean(0) > 0.5,
        "worst": correct.all(0),
    }
    return {
        "n": n,
        "draws": draws,
        "accuracy": {k: int(v.sum()) / n for k, v in outcomes.items()},
        "interval": {k: wilson_interval(int(v.sum()), n) for k, v in outcomes.items()},
        "per_sample": {"correct_draws": correct.sum(0).tolist()},
    }


def evaluate(
    defense: DefendedModel | nn.Module,
    attack: AttackConfig,
    images: Tensor,
    labels: Tensor,
    protocol: str,
    device: torch.device,
    draws: int = 5,
    batch_size: int = 64,
) -> dict:
    """Attack `images` under `protocol` and judge the defense on the results. `whole-model`
    attacks the defense itself (with EOT when `attack.eot` > 1); `classifier-only` attacks the bare
    classifier and then purifies (the authors' ablation protocol, BPDA with identity)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    target = defense
    if protocol == "classifier-only" and isinstance(defense, DefendedModel):
        target = defense.classifier
    start, results = time.perf_counter(), []
    bar = tqdm(range(0, len(images), batch_size), desc=f"{attack.name}/{protocol}", leave=False)
    for i in bar:
        x = images[i : i + batch_size].to(device).float().div_(255)
        y = labels[i : i + batch_size].to(device)
        x_adv = run_attack(target, attack, x, y)
        results.append(judge(defense, x_adv, y, draws).cpu())
        bar.set_postfix(acc=f"{torch.cat(results, 1)[0].float().mean():.3f}")
    record = summarize(torch.cat(results, 1))
    return {
        "protocol": protocol,
        "attack": attack.describe(),
        **record,
        "wall_s": round(time.perf_counter() - start, 1),
    }
