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

from atop_core.config import ENV_DATA_DIR, PROFILES, Profile, get_profile, settings
from atop_core.data import DataFormatError, DataNotFoundError, eval_indices, load_dataset
from atop_core.io import write_json

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
        n = min(profile.data.n_eval, len(test))
        indices = eval_indices(name, n, profile.data.eval_seed, size=len(test))
        status[name] = {
            "status": "ready",
            "source": train.source,
            "n_train": len(train),
            "n_test": len(test),
            "n_eval": n,
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m atop_core", description=__doc__)
    parser.add_argument("command", choices=["prepare-data"])
    parser.add_argument("--profile", default="quick", choices=list(PROFILES))
    parser.add_argument("--data-dir", help=f"local dataset copies (overrides ${ENV_DATA_DIR})")
    parser.add_argument("--datasets", nargs="+", help="subset of the profile's datasets")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.data_dir:
        os.environ[ENV_DATA_DIR] = args.data_dir
    overrides = {"datasets": tuple(args.datasets)} if args.datasets else {}
    profile = get_profile(args.profile, **overrides)
    status = prepare_data(profile)
    path = settings().results_dir / profile.name / "data_status.json"
    write_json(path, status)
    print(f"prepare-data ({profile.name}):")
    _print_status(status)
    print(f"  status written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
