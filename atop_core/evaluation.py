"""Evaluating a saved defense into a record file: what `python -m atop_core evaluate` runs.

Loads the defense and the profile's fixed evaluation images, resumes the record at its path if a
killed run left one (refusing a record of any other run), attacks the remaining batches (or one
shard of them), runs the sanity checks and the attack-failure indicators (`indicators.py`) and
marks the record complete. A record keeps the attack's loss trace per batch.
"""

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

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
    start_record,
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


@dataclass(frozen=True)
class EvalRun:
    """One evaluation's choices, as `evaluate_defense` takes them (draws resolved)."""

    profile: Profile
    attack: AttackConfig
    protocol: str
    device: torch.device
    n: int | None
    draws: int
    shard: tuple[int, int] | None
    seed: int
    randomness: str

    def out(self, dataset: str, defense_name: str) -> Path:
        """The record's path; the image count is named only when not the profile's `n_eval`
        (for `dataset`)."""
        n = None if self.n in (None, self.profile.for_dataset(dataset).data.n_eval) else self.n
        return record_path(
            settings().results_dir,
            self.profile.name,
            dataset,
            defense_name,
            self.attack.tag(),
            self.protocol,
            self.shard,
            n,
            self.randomness,
        )


@dataclass(frozen=True)
class EvalImages:
    """The fixed evaluation images (uint8) and their indices, and the slice one shard attacks."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: list[int]
    batches: range  # global batch positions of the shard
    lo: int  # the shard's first and one-past-last image
    hi: int

    @classmethod
    def of(cls, dataset: str, image_size: int, run: EvalRun) -> "EvalImages":
        """The profile's fixed images of `dataset` at `image_size` (as the defense was trained)."""
        ev, data = run.profile.evaluation, run.profile.data
        test = shrink(load_dataset(dataset, "test"), image_size)
        sub, idx = eval_subset(dataset, test, run.n or data.n_eval, data.eval_seed)
        batches = shard_batches(len(idx), ev.batch_size, run.shard)
        lo, hi = batches.start * ev.batch_size, min(len(idx), batches.stop * ev.batch_size)
        return cls(sub.images, sub.labels, idx, batches, lo, hi)


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
    draws = draws or profile.evaluation.draws
    run = EvalRun(profile, attack, protocol, device, n, draws, shard, seed, randomness)
    if attack.name == "clean" and protocol != CLEAN_PROTOCOL:
        return _clean_copy(path, run)
    # Not channels_last, though bench measured it 1.1x faster: torchattacks' L2 attacks flatten
    # input gradients with .view, which fails on the channels_last gradients it would produce.
    defense = load_defense(path, device, seed=seed)
    meta = defense.meta
    run = dataclasses.replace(run, profile=profile.for_dataset(meta["dataset"]))
    described = describe_defense(path, meta, seed)
    subject = Subject(
        model=defense if meta["purifier"] is not None else defense.classifier,
        described=described,
        dataset=meta["dataset"],
        num_classes=meta["num_classes"],
        identity=(described["sha256"], network_digest(defense.classifier)),
    )
    data = EvalImages.of(meta["dataset"], meta["image_size"], run)
    return evaluate_subject(subject, run, data, run.out(meta["dataset"], described["name"]), sanity)


@dataclass(frozen=True)
class Subject:
    """What is evaluated: the model attacked and judged, its description in the record, and the
    (defense, bare classifier) digests under which repeated sanity checks are shared."""

    model: nn.Module
    described: dict
    dataset: str
    num_classes: int
    identity: tuple[str, str | None]


def evaluate_subject(
    subject: Subject, run: EvalRun, data: EvalImages, out: Path | None, sanity: bool = True
) -> tuple[dict, Path | None]:
    """Attack and judge `subject` on `data`, resuming the record at `out` (None: kept in memory
    only), then run the checks; returns the complete record and `out`."""
    if run.attack.num_classes not in (None, subject.num_classes):  # AutoAttack's targeted runs
        attack = dataclasses.replace(run.attack, num_classes=subject.num_classes)
        run = dataclasses.replace(run, attack=attack)
    header = _header(subject, run, data)
    record = resume_or_start(out, header) if out is not None else start_record(header)
    if record.get("complete"):
        return record, out
    started = time.perf_counter() - record.get("wall_s", 0.0)
    record = _attack_remaining(record, out, subject.model, run, data, started)
    checks, indicators = {}, {}
    if sanity and run.profile.evaluation.sanity_n and data.batches.start == 0:
        checks, indicators = _checks(record, subject.model, run, data, subject.identity)
    verdict = unreliable(checks) if checks else None
    record.update(
        sanity=checks,
        indicators=indicators,
        unreliable=True if marks_unreliable(indicators) else verdict,
        env=environment(run.device),
        wall_s=round(time.perf_counter() - started, 1),
        complete=True,
    )
    if out is not None:
        write_json(out, record)
    return record, out


def _clean_copy(path: str | Path, run: EvalRun) -> tuple[dict, Path]:
    """The clean record under `run.protocol`: the CLEAN_PROTOCOL record, relabelled, naming its
    source (`same_as`) and costing no time of its own."""
    source, source_path = evaluate_defense(
        path,
        run.profile,
        run.attack,
        protocol=CLEAN_PROTOCOL,
        device=run.device,
        n=run.n,
        draws=run.draws,
        shard=run.shard,
        seed=run.seed,
        randomness=run.randomness,
    )
    record = {**source, "protocol": run.protocol, "same_as": source_path.name, "wall_s": 0.0}
    out = run.out(source["dataset"], source["defense"]["name"])
    write_json(out, record)
    return record, out


def _header(subject: Subject, run: EvalRun, data: EvalImages) -> dict:
    """What identifies the run: a record resumes only under the very same header."""
    ev = run.profile.evaluation
    header = {
        "schema": SCHEMA,
        "dataset": subject.dataset,
        "split": "test",
        "profile": run.profile.name,
        "protocol": run.protocol,
        "indices": {
            "n": len(data.indices),
            "seed": run.profile.data.eval_seed,
            "sha256": indices_sha256(data.indices),
            "shard": list(run.shard) if run.shard else None,
        },
        "defense": subject.described,
        "attack": run.attack.describe(),
        "draws": run.draws,
        "batch_size": ev.batch_size,
        "seeding": f"batch b: defense seed * {SEED_STRIDE} + b, attack seed * {SEED_STRIDE} + b",
    }
    if amp_enabled(run.device) and not ATTACKS[run.attack.name].float32:
        header["precision"] = BF16  # absent: float32, as in every record before this field
    if run.randomness != "fresh":
        header["randomness"] = run.randomness  # absent: fresh draws, as in every earlier record
    return header


def _attack_remaining(
    record: dict,
    out: Path | None,
    target: nn.Module,
    run: EvalRun,
    data: EvalImages,
    started: float,
) -> dict:
    """Attack and judge the shard's batches the record does not hold yet, saving after each."""
    batch_size = run.profile.evaluation.batch_size
    done = -(-len(record["per_sample"]["index"]) // batch_size)  # batches are saved whole

    def keep(first: int, correct: torch.Tensor, trace: dict | None) -> None:
        nonlocal record
        positions = range(data.lo + first, data.lo + first + correct.shape[1])
        record["wall_s"] = round(time.perf_counter() - started, 1)
        record = save_progress(out, record, correct, [data.indices[p] for p in positions], trace)

    evaluate(
        target,
        run.attack,
        data.images[data.lo : data.hi],
        data.labels[data.lo : data.hi],
        run.protocol,
        run.device,
        run.draws,
        batch_size,
        first_batch=data.batches.start,
        skip_batches=done,
        defense_seed=run.seed,
        randomness=run.randomness,
        on_batch=keep,
    )
    return record


def _checks(
    record: dict,
    target: nn.Module,
    run: EvalRun,
    data: EvalImages,
    identity: tuple[str, str | None],
) -> tuple[dict, dict]:
    """The sanity checks and the attack-failure indicators, on `sanity_n` images spread over the
    (sorted) index list: test splits stored by class would bias a prefix."""
    ev = run.profile.evaluation
    picked = list(range(0, data.hi, max(1, data.hi // ev.sanity_n)))[: ev.sanity_n]
    first_draw = record["per_sample"]["first_draw"]
    white_box = sum(first_draw[p] for p in picked) / len(picked)
    checks = sanity_checks(
        target,
        run.attack,
        data.images[picked],
        data.labels[picked],
        run.protocol,
        white_box,
        run.device,
        draws=run.draws,
        batch_size=ev.batch_size,
        square_queries=ev.square_queries,
        defense_seed=run.seed,
        randomness=run.randomness,
        identity=identity,
        bare_data=(data.images[: data.hi], data.labels[: data.hi]),  # shard 0's (all, unsharded)
    )
    indicators = attack_indicators(
        record,
        attack_target(target, run.protocol),
        target,
        run.attack,
        data.images[picked].to(run.device).float().div(255),
        data.labels[picked].to(run.device),
        checks,
        seed=run.seed,
    )
    return checks, indicators
