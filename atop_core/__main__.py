"""Command line: `python -m atop_core <command> --profile quick`.

Each command runs one pipeline stage for every dataset of a profile; a dataset that cannot be
loaded here (CIFAR-100 offline) is reported as not run, with the reason, and the others go on.
"""

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from atop_core.config import ENV_DATA_DIR, PROFILES, Profile, get_profile, resolve_device, settings
from atop_core.data import DataFormatError, DataNotFoundError, eval_subset, load_dataset
from atop_core.io import write_json
from atop_core.pipeline import train_chain
from atop_core.records import evaluate_defense

log = logging.getLogger("atop_core")


def prepare_data(profile: Profile) -> dict:
    """Load (and cache) every split of the profile's datasets and fix their evaluation subsets."""
    status = {}
    for name in profile.datasets:
        start = time.perf_counter()
        try:
            train = load_dataset(name, "train")
            test = load_dataset(name, "test")
        except (DataNotFoundError, DataFormatError) as err:
            status[name] = {"status": "not run", "reason": str(err)}
            continue
        _, indices = eval_subset(name, test, profile.data.n_eval, profile.data.eval_seed)
        status[name] = {
            "status": "ready",
            "source": train.source,
            "n_train": len(train),
            "n_test": len(test),
            "n_eval": len(indices),
            "eval_seed": profile.data.eval_seed,
            "first_indices": indices[:5],
            "wall_s": round(time.perf_counter() - start, 1),
        }
    return status


def _print_status(status: dict) -> None:
    for name, entry in status.items():
        if entry["status"] == "ready":
            print(
                f"  {name:<11} ready: {entry['n_train']} train / {entry['n_test']} test images "
                f"from {entry['source']}; {entry['n_eval']} fixed evaluation indices"
            )
        else:
            print(f"  {name:<11} NOT RUN: {entry['reason']}")


def train(profile: Profile, device_name: str) -> dict:
    """Train (or reuse) the classifier, purifiers and AToP fine-tunings for each ready dataset."""
    device = resolve_device(device_name)
    status = {}
    for name in profile.datasets:
        try:
            load_dataset(name, "test")
        except (DataNotFoundError, DataFormatError) as err:
            status[name] = {"status": "not run", "reason": str(err)}
            continue
        start = time.perf_counter()
        defenses = train_chain(profile, name, device)
        status[name] = {
            "status": "trained",
            "device": str(device),
            "wall_s": round(time.perf_counter() - start, 1),
            "defenses": [
                {
                    k: d[k]
                    for k in (
                        "file",
                        "atop",
                        "classifier_eval_acc",
                        "eval_acc_single_draw",
                        "n_eval",
                    )
                }
                for d in defenses
            ],
        }
    return status


def _print_training(status: dict) -> None:
    for name, entry in status.items():
        if entry["status"] != "trained":
            print(f"  {name:<11} NOT RUN: {entry['reason']}")
            continue
        first = entry["defenses"][0]
        print(
            f"  {name:<11} trained in {entry['wall_s']} s on {entry['device']}; classifier "
            f"clean accuracy {first['classifier_eval_acc']:.3f} on {first['n_eval']} images"
        )
        for d in entry["defenses"]:
            print(f"    {d['file']:<28} clean accuracy, one draw: {d['eval_acc_single_draw']:.3f}")


def _evaluate(args: argparse.Namespace, profile: Profile) -> int:
    if not args.defense:
        raise SystemExit("evaluate needs --defense PATH [PATH ...] (files from `train`)")
    for path in args.defense:
        record, out = evaluate_defense(
            path,
            profile,
            args.attack,
            protocol=args.protocol,
            steps=args.steps or profile.evaluation.steps,
            eot=args.eot or profile.evaluation.eot,
            eps=args.eps,
            n=args.n,
            draws=args.draws or profile.evaluation.draws,
            device=resolve_device(args.device),
        )
        acc, ci = record["accuracy"], record["interval"]["single"]
        print(
            f"  {Path(path).name:<34} {args.attack} ({args.protocol}): single "
            f"{acc['single']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}], vote {acc['vote']:.3f}, worst "
            f"{acc['worst']:.3f}, n={record['n']} -> {out}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atop_core", description=__doc__)
    parser.add_argument("command", choices=["prepare-data", "train", "evaluate"])
    parser.add_argument("--profile", default="quick", choices=list(PROFILES))
    parser.add_argument("--data-dir", help=f"local dataset copies (overrides ${ENV_DATA_DIR})")
    parser.add_argument("--datasets", nargs="+", help="subset of the profile's datasets")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda:1...")
    evaluation = parser.add_argument_group("evaluate")
    evaluation.add_argument("--defense", nargs="+", help="defense checkpoint(s) to evaluate")
    evaluation.add_argument("--attack", default="pgd-eot", help="attack name (atop_core.attacks)")
    evaluation.add_argument("--steps", type=int, help="attack steps (default: the profile's)")
    evaluation.add_argument("--eot", type=int, help="transform draws per attack gradient")
    evaluation.add_argument("--eps", type=float, default=8 / 255)
    evaluation.add_argument(
        "--protocol", default="whole-model", choices=["whole-model", "classifier-only"]
    )
    evaluation.add_argument("--n", type=int, help="images (default: the profile's n_eval)")
    evaluation.add_argument("--draws", type=int, help="defense draws per image when judging")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.data_dir:
        os.environ[ENV_DATA_DIR] = args.data_dir
    overrides = {"datasets": tuple(args.datasets)} if args.datasets else {}
    profile = get_profile(args.profile, **overrides)
    if args.command == "evaluate":
        return _evaluate(args, profile)
    if args.command == "prepare-data":
        status, show = prepare_data(profile), _print_status
    else:
        status, show = train(profile, args.device), _print_training
    path = settings().results_dir / profile.name / f"{args.command}_status.json"
    write_json(path, status)
    print(f"{args.command} ({profile.name}):")
    show(status)
    print(f"  status written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
