"""Evaluating a saved defense into a record file: what `python -m atop_core evaluate` runs.

Loads the defense and the profile's fixed evaluation images, resumes the record at its path if a
killed run left one (refusing a record of any other run), attacks the remaining batches (or one
shard of them), runs the sanity checks and the attack-failure indicators (`indicators.py`) and
marks the record complete. A record keeps the attack's loss trace per batch.
"""

import dataclasses
import time
from pathlib import Path

import torch

from atop_core.attacks import ATTACKS, AttackConfig
from atop_core.config import SEED_STRIDE, Profile, settings
from atop_core.data import eval_subset, indices_sha256, load_dataset, shrink
from atop_core.defense import load_defense
from atop_core.harness import attack_target, check_protocol, check_randomness, evaluate
from atop_core.indicators import attack_indicators, marks_unreliable
from atop_core.io import write_json
from atop_core.precision import BF16, amp_enabled
from atop_core.records import (
    SCHEMA,
    describe_defense,
    environment,
    record_path,
    resume_or_start,
    save_progress,
)
from atop_core.sanity import network_digest, sanity_checks, unreliable


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/k' -> (i, k), shard i of k (0-based), refused clearly when malformed."""
    if text is None:
        return None
    try:
        i, k = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like i/k (e.g. 0/4), got {text!r}") from None
    if not 0 <= i < k:
        raise ValueError(f"--shard {text!r}: need 0 <= i < k (shards are numbered from 0)")
    return i, k


def shard_batches(n: int, batch_size: int, shard: tuple[int, int] | None) -> range:
    """The global batch positions of one shard: contiguous, whole batches, as even as can be."""
    total = -(-n // batch_size)
    if shard is None:
        return range(total)
    i, k = shard
    return range(i * total // k, (i + 1) * total // k)


# Clean accuracy is the same under both protocols (nothing is attacked, and the defense draws the
# same seeded randomness): it is computed once, under this one, and copied for the other.
CLEAN_PROTOCOL = "whole-model"


def _clean_copy(
    path: str | Path,
    profile: Profile,
    attack: AttackConfig,
    protocol: str,
    device: torch.device,
    n: int | None,
    draws: int | None,
    shard: tuple[int, int] | None,
    seed: int,
    randomness: str,
) -> tuple[dict, Path]:
    """The clean record under `protocol`: the CLEAN_PROTOCOL record, relabelled, naming its source
    (`same_as`) and costing no time of its own."""
    source, source_path = evaluate_defense(
        path,
        profile,
        attack,
        protocol=CLEAN_PROTOCOL,
        device=device,
        n=n,
        draws=draws,
        shard=shard,
        seed=seed,
        randomness=randomness,
    )
    record = {**source, "protocol": protocol, "same_as": source_path.name, "wall_s": 0.0}
    out = record_path(
        settings().results_dir,
        profile.name,
        source["dataset"],
        source["defense"]["name"],
        attack.tag(),
        protocol,
        shard,
        _named_n(profile, n),
        randomness,
    )
    write_json(out, record)
    return record, out


def _named_n(profile: Profile, n: int | None) -> int | None:
    """The image count a record path names: none for the profile's own `n_eval`."""
    return None if n in (None, profile.data.n_eval) else n


def evaluate_defense(
    path: str | Path,
    profile: Profile,
    attack: AttackConfig,
    *,
    protocol: str,
    device: torch.device,
    n: int | None = None,
    draws: int | None = None,
    shard: tuple[int, int] | None = None,
    seed: int = 0,
    sanity: bool = True,
    randomness: str = "fresh",
) -> tuple[dict, Path]:
    """Attack one saved defense on the profile's fixed evaluation subset; write (resumably) and
    return the record and its path. `randomness` "frozen" gives each image one fixed draw of
    the transform, shared by the attack and the judge (`harness.py`)."""
    check_protocol(protocol)
    check_randomness(randomness)
    if attack.name == "clean" and protocol != CLEAN_PROTOCOL:
        return _clean_copy(
            path, profile, attack, protocol, device, n, draws, shard, seed, randomness
        )
    ev = profile.evaluation
    draws = draws or ev.draws
    # Not channels_last, though bench measured it 1.1x faster: torchattacks' L2 attacks flatten
    # input gradients with .view, which fails on the channels_last gradients it would produce.
    defense = load_defense(path, device, seed=seed)
    meta = defense.meta
    test = shrink(load_dataset(meta["dataset"], "test"), meta["image_size"])  # as trained
    sub, idx = eval_subset(meta["dataset"], test, n or profile.data.n_eval, profile.data.eval_seed)
    target = defense if meta["purifier"] is not None else defense.classifier
    if attack.num_classes not in (None, meta["num_classes"]):  # AutoAttack's targeted runs
        attack = dataclasses.replace(attack, num_classes=meta["num_classes"])
    batches = shard_batches(len(idx), ev.batch_size, shard)
    lo, hi = batches.start * ev.batch_size, min(len(idx), batches.stop * ev.batch_size)
    header = {
        "schema": SCHEMA,
        "dataset": meta["dataset"],
        "split": "test",
        "profile": profile.name,
        "protocol": protocol,
        "indices": {
            "n": len(idx),
            "seed": profile.data.eval_seed,
            "sha256": indices_sha256(idx),
            "shard": list(shard) if shard else None,
        },
        "defense": describe_defense(path, meta, seed),
        "attack": attack.describe(),
        "draws": draws,
        "batch_size": ev.batch_size,
        "seeding": f"batch b: defense seed * {SEED_STRIDE} + b, attack seed * {SEED_STRIDE} + b",
    }
    if amp_enabled(device) and not ATTACKS[attack.name].float32:
        header["precision"] = BF16  # absent: float32, as in every record before this field
    if randomness != "fresh":
        header["randomness"] = randomness  # absent: fresh draws, as in every earlier record
    out = record_path(
        settings().results_dir,
        profile.name,
        meta["dataset"],
        header["defense"]["name"],
        attack.tag(),
        protocol,
        shard,
        _named_n(profile, n),
        randomness,
    )
    record = resume_or_start(out, header)
    if record.get("complete"):
        return record, out
    start = time.perf_counter() - record.get("wall_s", 0.0)
    done = -(-len(record["per_sample"]["index"]) // ev.batch_size)  # batches are saved whole

    def keep(first: int, correct: torch.Tensor, trace: dict | None) -> None:
        nonlocal record
        positions = range(lo + first, lo + first + correct.shape[1])
        record["wall_s"] = round(time.perf_counter() - start, 1)
        record = save_progress(out, record, correct, [idx[p] for p in positions], trace)

    evaluate(
        target,
        attack,
        sub.images[lo:hi],
        sub.labels[lo:hi],
        protocol,
        device,
        draws,
        ev.batch_size,
        first_batch=batches.start,
        skip_batches=done,
        defense_seed=seed,
        randomness=randomness,
        on_batch=keep,
    )
    checks, indicators = {}, {}
    if sanity and ev.sanity_n and batches.start == 0:
        # spread over the (sorted) index list: test splits stored by class would bias a prefix
        picked = list(range(0, hi, max(1, hi // ev.sanity_n)))[: ev.sanity_n]
        first_draw = record["per_sample"]["first_draw"]
        white_box = sum(first_draw[p] for p in picked) / len(picked)
        checks = sanity_checks(
            target,
            attack,
            sub.images[picked],
            sub.labels[picked],
            protocol,
            white_box,
            device,
            draws=draws,
            batch_size=ev.batch_size,
            square_queries=ev.square_queries,
            defense_seed=seed,
            randomness=randomness,
            identity=(header["defense"]["sha256"], network_digest(defense.classifier)),
            bare_data=(sub.images[:hi], sub.labels[:hi]),  # shard 0's (all, unsharded)
        )
        indicators = attack_indicators(
            record,
            attack_target(target, protocol),
            target,
            attack,
            sub.images[picked].to(device).float().div(255),
            sub.labels[picked].to(device),
            checks,
            seed=seed,
        )
    verdict = unreliable(checks) if checks else None
    record.update(
        sanity=checks,
        indicators=indicators,
        unreliable=True if marks_unreliable(indicators) else verdict,
        env=environment(device),
        wall_s=round(time.perf_counter() - start, 1),
        complete=True,
    )
    write_json(out, record)
    return record, out
