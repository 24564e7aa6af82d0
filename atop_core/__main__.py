"""Command line: `python -m atop_core COMMAND --profile quick` (`--help` after a command lists its
options).

Each command runs one pipeline stage for every dataset of a profile; a dataset that cannot be
loaded here (CIFAR-100 offline) is reported as not run, with the reason, and the others go on.
"""

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from atop_core import distributed
from atop_core.allocator import tune_malloc
from atop_core.attacks import AttackConfig
from atop_core.cluster import EXECUTORS, ClusterConfig, evaluate_sharded
from atop_core.config import (
    ENV_AMP,
    ENV_DATA_DIR,
    PROFILES,
    Profile,
    get_profile,
    overridden,
    resolve_device,
    settings,
    with_fields,
)
from atop_core.data import DATASETS, eval_subset, load_dataset, unavailable_reason
from atop_core.evaluation import evaluate_defense, parse_shard
from atop_core.harness import PROTOCOLS, RANDOMNESS
from atop_core.indicators import fired
from atop_core.io import write_json
from atop_core.pipeline import train_chain
from atop_core.precision import AMP_CHOICES
from atop_core.records import merge_all, record_path
from atop_core.user_defense import evaluate

log = logging.getLogger("atop_core")


def prepare_data(profile: Profile) -> dict:
    """Load (and cache) every split of the profile's datasets and fix their evaluation subsets."""
    status = {}
    for name in profile.datasets:
        start = time.perf_counter()
        if reason := unavailable_reason(name):
            status[name] = {"status": "not run", "reason": reason}
            continue
        train, test = load_dataset(name, "train"), load_dataset(name, "test")
        scale = profile.for_dataset(name).data
        _, indices = eval_subset(name, test, scale.n_eval, scale.eval_seed)
        status[name] = {
            "status": "ready",
            "source": train.source,
            "n_train": len(train),
            "n_test": len(test),
            "n_eval": len(indices),
            "eval_seed": scale.eval_seed,
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


def train(profile: Profile, device_name: str) -> dict | None:
    """Train (or reuse) the classifier, purifiers and AToP fine-tunings for each ready dataset.
    Under `torchrun --nproc_per_node=N` every stage trains data-parallel over the N processes
    (`distributed.py`); rank 0 returns the status, the other ranks None."""
    with distributed.process_group(device_name) as device:
        status = _train_datasets(profile, device)
        main = distributed.is_main()
    return status if main else None


def _train_datasets(profile: Profile, device) -> dict:
    status = {}
    for name in profile.datasets:
        if reason := unavailable_reason(name):
            status[name] = {"status": "not run", "reason": reason}
            continue
        start = time.perf_counter()
        defenses = train_chain(profile, name, device)
        status[name] = {
            "status": "trained",
            "device": str(device),
            **({"processes": distributed.world_size()} if distributed.active() else {}),
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


class CommandLine(argparse.ArgumentParser):
    """argparse, with a bad input answered by one line naming it (and exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _defense_path(text: str, profile: Profile, dataset: str | None) -> Path:
    """A checkpoint path, or a defense name resolved under checkpoints/<profile>/<dataset>/."""
    path = Path(text)
    if not (path.exists() or path.suffix):
        if dataset is None:
            raise ValueError(
                f"--defense {text!r} is a name, not a file: add --dataset to resolve it"
            )
        path = settings().checkpoints_dir / profile.name / dataset / f"{text}.pt"
    if not path.exists():
        raise ValueError(
            f"no defense checkpoint at {path}; check the path, or train one first "
            "(python -m atop_core train)"
        )
    return path


def _evaluation_inputs(
    args: argparse.Namespace, profile: Profile
) -> tuple[AttackConfig, list[Path], tuple[int, int] | None, ClusterConfig | None]:
    """The attack, defense files, shard and shard jobs the arguments name; a ValueError names a
    bad one."""
    ev = profile.evaluation
    attack = AttackConfig(
        name=args.attack,
        eps=args.eps,
        steps=args.steps or ev.steps,
        eot=args.eot or ev.eot,
        seed=args.seed + 1,
    )
    shard = parse_shard(args.shard)
    cluster = None
    if args.shards is not None:
        cluster = ClusterConfig(
            shards=args.shards,
            executor=args.executor,
            partition=args.slurm_partition,
            timeout_min=args.timeout_min,
            gpus_per_node=args.slurm_gpus,
            retries=args.retries,
        )
    paths = [_defense_path(text, profile, args.dataset) for text in args.defense]
    return attack, paths, shard, cluster


def _print_record(name: str, record: dict, tag: str, protocol: str, out: Path) -> None:
    acc, ci = record["accuracy"], record["interval"]["single"]
    flag = {True: " UNRELIABLE", False: "", None: " (no sanity checks)"}[record["unreliable"]]
    print(
        f"  {name:<34} {tag} ({protocol}): single {acc['single']:.3f} [{ci[0]:.3f}, "
        f"{ci[1]:.3f}], vote {acc['vote']:.3f}, worst {acc['worst']:.3f}, n={record['n']}{flag} "
        f"-> {out}"
    )
    for indicator in fired(record.get("indicators", {})):
        print(f"    indicator fired: {indicator}: {record['indicators'][indicator]['fix']}")


def _evaluate(args: argparse.Namespace, profile: Profile, inputs) -> int:
    attack, paths, shard, cluster = inputs
    kw = {
        "protocol": args.protocol,
        "device": resolve_device(args.device),
        "n": args.n,
        "draws": args.draws,
        "seed": args.seed,
        "sanity": not args.no_sanity,
        "randomness": args.randomness,
    }
    for path in paths:
        if cluster is not None:
            record, out = evaluate_sharded(path, profile, attack, cluster, **kw)
        else:
            record, out = evaluate_defense(path, profile, attack, shard=shard, **kw)
        if args.dataset and record["dataset"] != args.dataset:
            raise SystemExit(f"{path} defends {record['dataset']}, not --dataset {args.dataset}")
        _print_record(path.name, record, attack.tag(), args.protocol, out)
    return 0


def load_factory(text: str) -> Callable[[], nn.Module]:
    """`pkg.mod:factory` -> the factory; a ValueError says what is wrong with the text."""
    module_name, _, attr = text.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--module must look like pkg.mod:factory, got {text!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--module {text!r}: cannot import {module_name!r} ({err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"--module {text!r}: {module_name} has no function {attr!r}")
    return factory


def _evaluate_module(args: argparse.Namespace, profile: Profile) -> int:
    """`evaluate --module`: the user's defense into a record beside the project's."""
    if args.dataset is None:
        raise ValueError("--module needs --dataset: the dataset the defense classifies")
    if args.shard:
        raise ValueError("--shard applies to --defense files; evaluate a --module unsharded")
    factory = load_factory(args.module)
    model = factory()
    if not isinstance(model, nn.Module):
        raise ValueError(f"--module {args.module!r} returned {type(model).__name__}, not a module")
    classifier = None
    if args.classifier:
        classifier = model.get_submodule(args.classifier.replace("/", "."))
    name = args.name or args.module.partition(":")[2]
    profile = profile.for_dataset(args.dataset)
    ev = profile.evaluation
    steps, eot = args.steps or ev.steps, args.eot or ev.eot
    tag = AttackConfig(name=args.attack, eps=args.eps, steps=steps, eot=eot).tag()
    n = None if args.n in (None, profile.data.n_eval) else args.n
    out = record_path(
        settings().results_dir, profile.name, args.dataset, name, tag, args.protocol, None, n,
        args.randomness,
    )  # fmt: skip
    record = evaluate(
        model,
        dataset=args.dataset,
        attack=args.attack,
        protocol=args.protocol,
        n=args.n or profile.data.n_eval,
        draws=args.draws or ev.draws,
        eot=eot,
        steps=steps,
        eps=args.eps,
        name=name,
        classifier=classifier,
        record=out,
        device=args.device,
        profile=profile.name,
        seed=args.seed,
        sanity=not args.no_sanity,
        randomness=args.randomness,
    )
    _print_record(name, record, tag, args.protocol, out)
    return 0


def _merge(profile: Profile) -> int:
    written = merge_all(settings().results_dir / profile.name)
    for path in written:
        print(f"  merged shards into {path}")
    print(f"merge ({profile.name}): {len(written)} record(s)")
    return 0


def _options(*groups: str) -> list[argparse.ArgumentParser]:
    """Parent parsers for the option groups a command takes."""
    parents = []
    for group in groups:
        parent = CommandLine(add_help=False)
        if group == "profile":
            parent.add_argument("--profile", default="quick", choices=list(PROFILES))
        if group == "data":
            parent.add_argument(
                "--data-dir", help=f"local dataset copies (overrides ${ENV_DATA_DIR})"
            )
        if group == "datasets":
            parent.add_argument(
                "--datasets", nargs="+", choices=list(DATASETS), help="a subset of the profile's"
            )
        if group == "compute":
            parent.add_argument(
                "--device", default="auto", help="auto (CUDA when present), cpu, cuda:1..."
            )
            parent.add_argument(
                "--amp",
                choices=AMP_CHOICES,
                help=f"bf16 autocast for attacks and training (overrides ${ENV_AMP}; auto: CUDA)",
            )
        parents.append(parent)
    return parents


def _evaluate_options(command: argparse.ArgumentParser) -> None:
    which = command.add_mutually_exclusive_group(required=True)
    which.add_argument("--defense", nargs="+", help="checkpoint(s), or names with --dataset")
    which.add_argument(
        "--module",
        help="pkg.mod:factory, a function returning your own defense (a torch module mapping "
        "[0, 1] images to logits); needs --dataset",
    )
    command.add_argument(
        "--dataset", choices=list(DATASETS), help="resolves defense names; must match the defense"
    )
    command.add_argument("--name", help="--module: its name in records (default: the factory's)")
    command.add_argument(
        "--classifier",
        help="--module: the classifier inside it (attribute path)",
    )
    command.add_argument("--attack", default="pgd-eot", help="attack name (atop_core.attacks)")
    command.add_argument("--steps", type=int, help="attack steps (default: the profile's)")
    command.add_argument("--eot", type=int, help="transform draws per attack gradient")
    command.add_argument("--eps", type=float, help="budget (default: the attack's own)")
    command.add_argument("--protocol", default="whole-model", choices=list(PROTOCOLS))
    command.add_argument("--n", type=int, help="images (default: the profile's n_eval)")
    command.add_argument(
        "--draws", type=int, help="defense draws per image when judging (worst-of-N, vote)"
    )
    command.add_argument(
        "--randomness",
        default="fresh",
        choices=list(RANDOMNESS),
        help="frozen: one transform draw per image, shared by the attack and the judge",
    )
    sharding = command.add_mutually_exclusive_group()
    sharding.add_argument("--shard", help="i/k: evaluate shard i of k (merge them after)")
    sharding.add_argument(
        "--shards", type=int, help="run k shards as one job array (--executor) and merge them"
    )
    command.add_argument(
        "--executor", default="local", choices=EXECUTORS, help="where --shards run (submitit)"
    )
    command.add_argument("--slurm-partition", help="Slurm partition for --executor slurm")
    command.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per shard job on Slurm")
    command.add_argument("--timeout-min", type=int, default=120, help="time limit per shard job")
    command.add_argument(
        "--retries", type=int, default=2, help="resubmissions of a failed or pre-empted shard"
    )
    command.add_argument("--seed", type=int, default=0, help="defense seed (attack: seed+1)")
    command.add_argument("--no-sanity", action="store_true", help="skip the sanity checks")


def build_parser() -> CommandLine:
    parser = CommandLine(prog="python -m atop_core", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stages = {
        "prepare-data": ("decode and cache the datasets, fix the evaluation images", "datasets"),
        "ready-datasets": ("print the datasets loadable here (for run_all.sh)", "datasets"),
        "train": ("train (or reuse) every stage of the chain", "datasets", "compute"),
        "evaluate": ("attack and judge defenses into records", "compute"),
        "merge": ("merge complete groups of shard records",),
    }
    for name, (summary, *groups) in stages.items():
        data = ["data"] if name != "merge" else []
        parents = _options("profile", *data, *groups)
        command = commands.add_parser(name, parents=parents, help=summary, description=summary)
        if name == "evaluate":
            _evaluate_options(command)
        if name == "train":
            command.add_argument(
                "--classifier-arch",
                help="the frozen classifier for 32 px datasets, e.g. robustbench:Standard "
                "(RobustBench's weights, not trained; default: the profile's)",
            )
            command.add_argument(
                "--baselines",
                nargs="+",
                help="adversarially trained baselines: fgsm-rs, pgd, robustbench:<model>",
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_malloc()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data_dir = getattr(args, "data_dir", None)
    with overridden(data_dir=Path(data_dir) if data_dir else None, amp=getattr(args, "amp", None)):
        return run(parser, args)


def _profile(args: argparse.Namespace) -> Profile:
    """The named profile with the fields the options override (validated)."""
    profile = get_profile(args.profile)
    changes: dict = {}
    if getattr(args, "datasets", None):
        changes["datasets"] = tuple(args.datasets)
    if getattr(args, "classifier_arch", None):
        changes["classifier"] = with_fields(profile.classifier, arch=args.classifier_arch)
    if getattr(args, "baselines", None):
        changes["baselines"] = tuple(args.baselines)
    return with_fields(profile, **changes)


def run(parser: CommandLine, args: argparse.Namespace) -> int:
    """The parsed command, under the settings its options chose."""
    try:
        profile = _profile(args)
    except ValueError as bad:
        parser.exit(2, f"{parser.prog} {args.command}: error: {bad}\n")
    if args.command == "evaluate" and args.module:
        try:
            return _evaluate_module(args, profile)
        except ValueError as bad:
            parser.exit(2, f"{parser.prog} evaluate: error: {bad}\n")
    if args.command == "evaluate":
        try:
            inputs = _evaluation_inputs(args, profile)
        except ValueError as bad:
            parser.exit(2, f"{parser.prog} evaluate: error: {bad}\n")
        return _evaluate(args, profile, inputs)
    if args.command == "merge":
        return _merge(profile)
    if args.command == "ready-datasets":  # for run_all.sh: the datasets loadable here
        print(" ".join(n for n, e in prepare_data(profile).items() if e["status"] == "ready"))
        return 0
    if args.command == "prepare-data":
        status, show = prepare_data(profile), _print_status
    else:
        status, show = train(profile, args.device), _print_training
        if status is None:  # another rank under torchrun: rank 0 writes and prints the status
            return 0
    path = settings().results_dir / profile.name / f"{args.command}_status.json"
    write_json(path, status)
    print(f"{args.command} ({profile.name}):")
    show(status)
    print(f"  status written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
