"""Attacking and judging a stochastic defense, batch by batch.

Adversarial examples are made once per sample, then the defense is run `draws` times on them:
single-draw accuracy (the first draw), majority vote over the draws, and worst of the draws (a
sample counts only if every draw is right), each with a Wilson 95% interval (`records.py`).
Every batch seeds the defense's transform and the attack from its global position in the index
list, so a resumed, sharded or repeated run gives the same per-sample outcomes. Frozen randomness
(a diagnostic) gives each image one draw that the attack and the judge share. Each batch's attack
trace (`attacks/trace.py`) goes to the caller with its outcomes.
"""

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from atop_core.attacks import AttackConfig, run_attack
from atop_core.attacks.trace import tracing
from atop_core.config import SEED_STRIDE
from atop_core.defense import RandomDefense
from atop_core.progress import progress
from atop_core.records import append_outcomes, summarize_outcomes

PROTOCOLS = ("whole-model", "classifier-only")
RANDOMNESS = ("fresh", "frozen")  # fresh draws per pass, or one fixed draw per image
BatchCallback = Callable[[int, Tensor, dict | None], None]


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")


def check_randomness(randomness: str) -> None:
    if randomness not in RANDOMNESS:
        raise ValueError(f"unknown randomness {randomness!r}; known: {', '.join(RANDOMNESS)}")


def batch_seed(seed: int, batch: int) -> int:
    """Batch b of a run seeded s draws from s * SEED_STRIDE + b."""
    return seed * SEED_STRIDE + batch


@torch.no_grad()
def judge(defense: nn.Module, x: Tensor, y: Tensor, draws: int) -> Tensor:
    """(draws, B) bool: whether each draw of the defense classifies each image correctly."""
    if isinstance(defense, RandomDefense):
        return defense.draw_logits(x, draws).argmax(-1) == y
    return (defense(x).argmax(-1) == y).expand(draws, -1)


def attack_target(defense: nn.Module, protocol: str) -> nn.Module:
    """What the attacker differentiates: the whole defense, or (classifier-only, the authors'
    ablation protocol, BPDA with the identity) the bare classifier, purified afterwards."""
    check_protocol(protocol)
    if protocol == "classifier-only" and isinstance(defense, RandomDefense):
        if defense.classifier is None:
            raise ValueError(
                "the classifier-only protocol attacks the classifier inside the defense, and "
                "this one names none: pass classifier=<the module inside it> (or use whole-model)"
            )
        return defense.classifier
    return defense


def attack_and_judge(
    defense: nn.Module,
    attack: AttackConfig,
    x: Tensor,
    y: Tensor,
    protocol: str,
    draws: int,
    batch: int,
    defense_seed: int = 0,
) -> tuple[Tensor, dict | None]:
    """(draws, B) outcomes of one batch, seeded by its global position `batch`, and the
    attack's trace (None for attacks that do not mark their steps)."""
    if isinstance(defense, RandomDefense):
        defense.reseed(batch_seed(defense_seed, batch))
    cfg = dataclasses.replace(attack, seed=batch_seed(attack.seed, batch))
    with tracing() as trace:
        x_adv = run_attack(attack_target(defense, protocol), cfg, x, y)
    return judge(defense, x_adv, y, draws).cpu(), trace.finish()


def evaluate(
    defense: nn.Module,
    attack: AttackConfig,
    images: Tensor,
    labels: Tensor,
    protocol: str,
    device: torch.device | str,
    draws: int = 5,
    batch_size: int = 64,
    *,
    first_batch: int = 0,
    skip_batches: int = 0,
    defense_seed: int = 0,
    randomness: str = "fresh",
    on_batch: BatchCallback | None = None,
) -> dict:
    """Attack uint8 `images` in batches and judge the defense on the results.

    `first_batch` is the global position of `images[0]`'s batch (for shards), `skip_batches`
    the batches already done (for resume; `on_batch` saw them before). Returns `n`, `accuracy`,
    `interval` and `per_sample` over the batches run here.
    """
    check_protocol(protocol)
    check_randomness(randomness)
    starts = range(skip_batches * batch_size, len(images), batch_size)
    per_sample = {"index": [], "correct_draws": [], "first_draw": []}
    bar = progress(starts, desc=f"{attack.name}/{protocol}", leave=False, mininterval=5)
    with frozen(defense, randomness == "frozen"):
        for start in bar:
            batch = first_batch + start // batch_size
            x = images[start : start + batch_size].to(device).float().div_(255)
            y = labels[start : start + batch_size].to(device)
            correct, trace = attack_and_judge(
                defense, attack, x, y, protocol, draws, batch, defense_seed
            )
            append_outcomes(per_sample, correct, list(range(start, start + len(y))))
            if on_batch is not None:
                on_batch(start, correct, trace)
            accuracy = sum(per_sample["first_draw"]) / len(per_sample["index"])
            bar.set_postfix(acc=f"{accuracy:.3f}")
    return {**summarize_outcomes(per_sample, draws), "per_sample": per_sample}


@contextmanager
def frozen(defense: nn.Module, on: bool) -> Iterator[None]:
    """A defense's randomness frozen (one draw per image) while inside, if `on`."""
    if not isinstance(defense, RandomDefense):
        yield
        return
    saved, defense.frozen = defense.frozen, on
    try:
        yield
    finally:
        defense.frozen = saved
