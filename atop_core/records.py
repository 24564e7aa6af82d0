"""Evaluation records in and out: one JSON file per (defense, attack, protocol[, shard]).

A record carries its whole protocol and per-sample outcomes, and is
rewritten atomically after every batch with `complete: false` until its run ends, so a killed
evaluation resumes where it stopped. A file is resumed only by the very same run: a record of
another protocol, attack, defense, index list or batch size is refused, never mixed in.
"""

import glob
import math
import platform
import re
from pathlib import Path

import torch
import torchattacks

from atop_core.io import read_json, sha256_file, write_json
from atop_core.provenance import code_version

SCHEMA = 1
# Fields that define a run: a file on disk is resumed (or merged) only if all of them agree.
RUN_KEYS = ("schema", "dataset", "split", "profile", "protocol", "indices", "defense", "attack")
RUN_KEYS += ("draws", "batch_size", "seeding", "precision", "randomness")
SHARD_RE = re.compile(r"__shard-(\d+)-of-(\d+)\.json$")
Z_95 = 1.959964  # two-sided 95% normal quantile


class RecordMismatchError(ValueError):
    """A record file on disk belongs to another run than the one asked for."""


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


def sample_outcomes(per_sample: dict, draws: int) -> dict[str, list[bool]]:
    """Per-sample success under each reading of a stochastic defense: the first draw alone,
    the majority vote over `draws`, and the worst of them (every draw right)."""
    return {
        "single": [bool(v) for v in per_sample["first_draw"]],
        "vote": [c > draws / 2 for c in per_sample["correct_draws"]],
        "worst": [c == draws for c in per_sample["correct_draws"]],
    }


def summarize_outcomes(per_sample: dict, draws: int) -> dict:
    """`n`, `accuracy` and Wilson `interval` (single, vote, worst) from per-sample outcomes."""
    outcomes = sample_outcomes(per_sample, draws)
    n = len(per_sample["first_draw"])
    return {
        "n": n,
        "accuracy": {k: (sum(v) / n if n else 0.0) for k, v in outcomes.items()},
        "interval": {k: list(wilson_interval(sum(v), n)) for k, v in outcomes.items()},
    }


def worst_case(records: list[dict]) -> dict:
    """Accuracy against a suite of attacks on one defense, done right for a stochastic model: a
    sample counts only if it survives every attack (each judged after optimisation, by each
    reading). All records must cover the same images in the same order."""
    first = records[0]["per_sample"]["index"]
    for r in records:
        if r["per_sample"]["index"] != first:
            raise ValueError(f"record {r['attack']['name']!r} covers other images than the first")
    per_attack = [sample_outcomes(r["per_sample"], r["draws"]) for r in records]
    n, result = len(first), {"n": len(first), "attacks": [r["attack"]["name"] for r in records]}
    robust = {k: [all(o[k][i] for o in per_attack) for i in range(n)] for k in per_attack[0]}
    result["accuracy"] = {k: sum(v) / n for k, v in robust.items()}
    result["interval"] = {k: list(wilson_interval(sum(v), n)) for k, v in robust.items()}
    result["unreliable"] = any(r.get("unreliable") for r in records)
    return result


def environment(device: torch.device) -> dict:
    return {
        "torch": torch.__version__,
        "torchattacks": torchattacks.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "atop_core": code_version(),
    }


def describe_defense(path: str | Path, meta: dict, seed: int) -> dict:
    """The defense part of a record, from a defense file and its saved metadata."""
    path = Path(path)
    purifier = meta.get("purifier") or {}
    classifier = meta.get("classifier") or {}
    return {
        "name": path.stem,
        "file": path.name,
        "sha256": sha256_file(path),
        "classifier": meta["classifier_arch"],
        "purifier": purifier.get("kind", "none"),
        "transform": meta["transform"],
        "atop": bool(meta["atop"]),
        "adversarial_training": classifier.get("adv", "none"),
        "seed": seed,
    }


def record_path(
    results_dir: Path,
    profile: str,
    dataset: str,
    defense_name: str,
    attack_tag: str,
    protocol: str,
    shard: tuple[int, int] | None = None,
    n: int | None = None,
    randomness: str = "fresh",
) -> Path:
    """`<results>/<profile>/<dataset>/<defense>__<attack>__<protocol>[__frozen][__n<n>]
    [__shard-i-of-k].json`; `n` names an image count other than the profile's `n_eval`, so runs
    at two sizes never meet in one file, and frozen randomness its own runs."""
    suffix = "__frozen" if randomness == "frozen" else ""
    suffix += f"__n{n}" if n is not None else ""
    suffix += f"__shard-{shard[0]}-of-{shard[1]}" if shard else ""
    return (
        results_dir / profile / dataset / f"{defense_name}__{attack_tag}__{protocol}{suffix}.json"
    )


def start_record(header: dict) -> dict:
    """A record with no outcomes yet."""
    return {**header, "per_sample": {"index": [], "correct_draws": [], "first_draw": []}}


def resume_or_start(path: Path, header: dict) -> dict:
    """The partial record at `path` if it belongs to this run, else a fresh one from `header`."""
    if not path.exists():
        return start_record(header)
    existing = read_json(path)
    differing = [k for k in RUN_KEYS if existing.get(k) != header.get(k)]
    if differing:
        raise RecordMismatchError(
            f"{path} holds a record of another run (differs in: {', '.join(differing)}; e.g. "
            f"{differing[0]} {existing.get(differing[0])!r} vs {header.get(differing[0])!r}). "
            "Records are never mixed: delete that file, or write to another results directory "
            "(set ATOP_HOME)."
        )
    return existing


def append_outcomes(per_sample: dict, correct: torch.Tensor, indices: list[int]) -> None:
    """Add one batch's (draws, B) bool outcomes to a record's per-sample lists."""
    per_sample["index"] += indices
    per_sample["correct_draws"] += correct.sum(0).tolist()
    per_sample["first_draw"] += correct[0].int().tolist()


def append_trace(record: dict, trace: dict | None) -> None:
    """Add one batch's attack trace (`attacks/trace.py`): its per-step mean loss and, per
    sample, whether an iterate was misclassified. Untraced attacks keep no trace."""
    if trace is None:
        return
    kept = record.setdefault("trace", {"loss": [], "fooled": []})
    kept["loss"].append(trace["loss"])
    for key in ("fooled", "returned_fooled"):
        if key in trace:
            kept[key] = kept.get(key, []) + trace[key]


def save_progress(
    path: Path | None,
    record: dict,
    correct: torch.Tensor,
    indices: list[int],
    trace: dict | None = None,
) -> dict:
    """Append one batch's (draws, B) outcomes (and attack trace) to the record and write it
    atomically (unless `path` is None: a record kept in memory)."""
    append_outcomes(record["per_sample"], correct, indices)
    append_trace(record, trace)
    record = {**record, **summarize_outcomes(record["per_sample"], record["draws"])}
    record["complete"] = False
    if path is not None:
        write_json(path, record)
    return record


def shard_groups(results_dir: Path) -> dict[Path, list[Path]]:
    """Shard files under `results_dir`, grouped by the unsharded record path they merge into."""
    groups: dict[Path, list[Path]] = {}
    for name in sorted(glob.glob(str(results_dir / "**" / "*__shard-*-of-*.json"), recursive=True)):
        path = Path(name)
        target = path.with_name(SHARD_RE.sub(".json", path.name))
        groups.setdefault(target, []).append(path)
    return groups


def merge_shards(paths: list[Path]) -> dict:
    """One record from the complete shards of one run, in shard order: the same per-sample
    outcomes as an unsharded run, because every batch is seeded by its global position."""
    shards = sorted((int(SHARD_RE.search(p.name)[1]), p) for p in paths)
    k = int(SHARD_RE.search(shards[0][1].name)[2])
    if [i for i, _ in shards] != list(range(k)):
        raise ValueError(f"shards {[i for i, _ in shards]} of {k} found; all of 0..{k - 1} needed")
    records = [read_json(p) for _, p in shards]
    for (_, p), r in zip(shards, records, strict=True):
        if not r.get("complete"):
            raise ValueError(f"{p} is not complete: rerun its shard (it resumes) before merging")
        differing = [
            key for key in RUN_KEYS if key != "indices" and r.get(key) != records[0].get(key)
        ]
        if differing:
            raise RecordMismatchError(f"{p} differs from shard 0 in {', '.join(differing)}")
    per_sample = {
        key: [v for r in records for v in r["per_sample"][key]] for key in records[0]["per_sample"]
    }
    merged = {key: records[0][key] for key in RUN_KEYS if key != "indices" and key in records[0]}
    merged["indices"] = {**records[0]["indices"], "shard": None}
    if all("trace" in r for r in records):
        merged["trace"] = {"loss": [batch for r in records for batch in r["trace"]["loss"]]}
        for key in ("fooled", "returned_fooled"):
            if all(key in r["trace"] for r in records):
                merged["trace"][key] = [v for r in records for v in r["trace"][key]]
    merged.update(
        per_sample=per_sample,
        **summarize_outcomes(per_sample, merged["draws"]),
        sanity=records[0].get("sanity", {}),
        indicators=records[0].get("indicators", {}),
        unreliable=records[0].get("unreliable"),
        env=records[0]["env"],
        wall_s=round(sum(r["wall_s"] for r in records), 1),
        shards=k,
        complete=True,
    )
    return merged


def merge_all(results_dir: Path) -> list[Path]:
    """Merge every complete shard group under `results_dir`; returns the records written."""
    written = []
    for target, paths in shard_groups(results_dir).items():
        write_json(target, merge_shards(paths))
        written.append(target)
    return written


def record_files(results_dir: Path) -> list[Path]:
    """Every record file under `results_dir`, sorted; shard files excluded (merge them first)."""
    return [
        p
        for p in sorted(Path(results_dir).rglob("*.json"))
        if "__" in p.name and not SHARD_RE.search(p.name)
    ]


def load_records(results_dir: Path, complete_only: bool = True) -> list[dict]:
    """Every record under `results_dir` (`record_files`), only the complete ones by default."""
    records = [read_json(p) for p in record_files(results_dir)]
    return [r for r in records if not complete_only or r.get("complete", True)]
