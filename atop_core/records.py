"""Evaluation records: one JSON file per (defense, attack, protocol), with its whole protocol.

(DESIGN §4 and STYLE §2.7.) Issue 4 grows this into the full record, resumable per batch, with
sanity checks and shards; for now a record is written whole, atomically, when its run ends.
"""

import platform
from pathlib import Path

import torch
import torchattacks

from atop_core.attacks import AttackConfig
from atop_core.config import Profile, settings
from atop_core.data import eval_subset, indices_sha256, load_dataset
from atop_core.defense import load_defense
from atop_core.evaluate import evaluate
from atop_core.io import write_json


def environment(device: torch.device) -> dict:
    return {
        "torch": torch.__version__,
        "torchattacks": torchattacks.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


def evaluate_defense(
    path: str | Path,
    profile: Profile,
    attack: str,
    *,
    protocol: str,
    steps: int,
    eot: int,
    eps: float,
    n: int | None,
    draws: int,
    device: torch.device,
    seed: int = 0,
) -> tuple[dict, Path]:
    """Attack one saved defense on the profile's fixed evaluation subset; write and return the
    record and its path (`results/<profile>/<dataset>/<defense>__<attack>__<protocol>.json`)."""
    defense = load_defense(path, device, seed=seed)
    meta = defense.meta
    test = load_dataset(meta["dataset"], "test")
    sub, idx = eval_subset(meta["dataset"], test, n or profile.data.n_eval, profile.data.eval_seed)
    n = len(idx)
    cfg = AttackConfig(name=attack, eps=eps, steps=steps, eot=eot, seed=seed + 1)
    target = defense if meta["purifier"] is not None else defense.classifier
    result = evaluate(target, cfg, sub.images, sub.labels, protocol, device, draws=draws)
    record = {
        "dataset": meta["dataset"],
        "split": "test",
        "profile": profile.name,
        "indices": {"n": n, "seed": profile.data.eval_seed, "sha256": indices_sha256(idx)},
        "defense": {
            "file": Path(path).name,
            "sha256": meta.get("sha256"),
            "classifier": meta["classifier_arch"],
            "purifier": (meta["purifier"] or {}).get("kind", "none"),
            "transform": meta["transform"],
            "atop": meta["atop"],
            "seed": seed,
        },
        "unreliable": None,  # sanity checks: issue 4
        "env": environment(device),
        **result,
    }
    tag = f"{attack}-{steps}-eot{eot}" if attack not in ("clean", "fgsm") else attack
    out = (
        settings().results_dir
        / profile.name
        / meta["dataset"]
        / f"{Path(path).stem}__{tag}__{protocol}.json"
    )
    write_json(out, record)
    return record, out
