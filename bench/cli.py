"""The command line behind `python -m bench [NAME ...] [options]`: run benchmarks, print a
table each, and write bench/results/<name>.json with the machine, versions and settings.
Cross-benchmark figures (ratio_vs_baseline, fraction_of_conv_peak) are filled in only from
benchmarks of the same run."""

import argparse
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from atop_core.config import resolve_device
from atop_core.registry import Registry
from bench import (
    baseline,
    cost,
    evaluation,
    explorer,
    finetune,
    flip,
    memory,
    precision,
    resolution,
    roofline,
    stages,
)
from bench.harness import GIB, RESULTS_DIR, format_table, machine, peak_rss_bytes, write_result
from bench.workloads import BenchConfig

BENCHMARKS = Registry("benchmark")
for _name, _module in (
    ("roofline", roofline),  # first: the others' fractions of peak need it
    ("eval", evaluation),
    ("baseline", baseline),
    ("finetune", finetune),
    ("memory", memory),
    ("precision", precision),  # in the default set on CUDA only (DEFAULT_CUDA_ONLY)
    ("explorer", explorer),  # on trained defenses only, like precision's fidelity
    ("cost", cost),  # FLOP counts, not timings: the paper profile's cost on GPUs
    ("stages", stages),  # one epoch of each paper-profile training stage (CUDA only by default)
    ("flip", flip),  # the flip-averaged classifier's cost to an attack (quick nets)
    ("resolution", resolution),  # ImageNette's classifier at 32/48/64 px: only when named
):
    BENCHMARKS.register(_name)(_module.run)

RATE = ["arch", "purifier", "style", "layout", "eot_pass", "work_size", "batch", "images_per_s"]
RATE += ["image_draw_steps_per_s", "gflop_per_s", "fraction_of_conv_peak"]
COLUMNS = {
    "roofline": ["case", "gflop", "gflop_per_s"],
    "eval": [*RATE, "equal_work", "equal_resolution"],
    "eval/ablation": ["variant", "image_draw_steps_per_s", "gflop_per_s", "fraction_of_conv_peak"],
    "baseline": RATE,
    "baseline/effects": ["arch", "purifier", "resolution", "engineering", "total"],
    "finetune": ["arch", "purifier", "layout", "batch", "images_per_s", "gflop_per_s"]
    + ["fraction_of_conv_peak"],
    "memory": ["kind", "arch", "purifier", "style", "images", "eot", "pass_size", "peak_rss_gib"],
    "precision": ["arch", "purifier", "images", "images_per_s_float32", "images_per_s_bf16"]
    + ["bf16_speedup"],
    "explorer": ["defense", "transform", "redraw_s", "attack_s", "attack"],
    "cost": ["dataset", "kind", "stage", "images", "pflop", "h100_hours", "h100x8_hours"],
    "flip": ["purifier", "flip_average", "image_draw_steps_per_s", "classifier_share"]
    + ["slowdown"],
    "resolution": ["size", "pixels_vs_32", "epochs", "train_images", "train_s", "accuracy"],
    "stages": ["stage", "batch", "images_per_s", "epoch_s", "gflop_per_s"]
    + ["fraction_of_h100_peak"],
    "precision/fidelity": ["defense", "bf16_cosine", "bf16_sign_agreement", "draws_cosine"]
    + ["draws_sign_agreement"],
}
QUICK = {"archs": ("quick",), "repeats": 2, "budget_s": 5.0, "steps": 1}
# bf16 runs emulated on a CPU without it (AVX2): many minutes for numbers of no use there
DEFAULT_CUDA_ONLY = ("precision", "stages")
ONLY_WHEN_NAMED = ("resolution",)  # trains three classifiers: minutes whatever the device


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument(
        "names",
        nargs="*",
        help=f"benchmarks to run (default: {list(BENCHMARKS)}, {DEFAULT_CUDA_ONLY} on CUDA only)",
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--archs", nargs="+", default=None, help="profiles whose nets to use")
    ap.add_argument("--purifiers", nargs="+", default=None, choices=("gan", "ae"))
    ap.add_argument("--steps", type=int, default=None, help="PGD steps per image")
    ap.add_argument("--eot", type=int, default=None, help="EOT draws per gradient")
    ap.add_argument("--batch", type=int, default=None, help="our attack batch size")
    ap.add_argument("--images-quick", type=int, default=None, help="images timed, quick nets")
    ap.add_argument("--images-paper", type=int, default=None, help="images timed, paper nets")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--budget-s", type=float, default=None, help="stop repeating after this")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd nets")
    ap.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (default: on for cuda, off for cpu)",
    )
    ap.add_argument(
        "--defenses",
        nargs="+",
        help="trained defense files for `precision` and `explorer` (default: quick's)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    ap.add_argument("--quick", action="store_true", help=f"a fast look: {QUICK}")
    ap.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    ap.add_argument("--tag", default="", help="write <name>-<tag>.json, keeping the default files")
    return ap.parse_args(argv)


def make_config(args: argparse.Namespace, device: torch.device) -> BenchConfig:
    fields = dict(QUICK) if args.quick else {}
    images = dict(BenchConfig().images)
    for a, n in (("quick", args.images_quick), ("paper", args.images_paper)):
        images[a] = n or images[a]
    fields["images"] = images
    for name in ("archs", "purifiers", "steps", "eot", "batch", "repeats", "budget_s", "defenses"):
        value = getattr(args, name)
        if value is not None:
            fields[name] = tuple(value) if isinstance(value, list) else value
    amp = device.type == "cuda" if args.amp is None else args.amp
    return BenchConfig(device=str(device), compile=args.compile, amp=amp, **fields)


def tables(name: str, result: dict) -> str:
    rows = [{**r, **(r.get("ratio_vs_baseline") or {})} for r in result.get("rows", [])]
    out = format_table(rows, COLUMNS[name], f"== {name} ==")
    if name == "eval":
        ab = result["ablation"]
        out += format_table(ab["rows"], COLUMNS["eval/ablation"], f"-- ablation, EOT {ab['eot']}")
        out += f"speed-ups: {ab['speedups']}\njudge: {result['judge']}\n"
        out += f"threads: {result['threads']}\n"
    if name == "baseline":
        out += format_table(result["effects"], COLUMNS["baseline/effects"], "-- effects")
    if name == "precision":
        title = "-- gradient fidelity (trained defenses)"
        out += format_table(result["fidelity"], COLUMNS["precision/fidelity"], title)
        if not result["fidelity"]:
            out += "no trained defense found: pass --defenses, or run_all.sh first\n"
    if name == "explorer" and not result["rows"]:
        out += "no trained defense found: pass --defenses, or run_all.sh first\n"
    if name == "roofline":
        out += f"peaks (GFLOP/s, {result['dtype']}): {result['peak_gflop_per_s']}\n"
    if name == "cost":
        out += f"totals: {result['totals']}; assumptions: {result['assumptions']}\n"
    return out


def link(results: dict[str, dict]) -> None:
    """Figures that need two benchmarks of this run."""
    if "eval" in results and "baseline" in results:
        baseline.link(results["eval"], results["baseline"])
    if "roofline" in results:
        roofline.link(results["roofline"], results)


def _file(name: str, tag: str) -> str:
    return f"{name}-{tag}" if tag else name


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    names = args.names or [
        n for n in BENCHMARKS if n not in ONLY_WHEN_NAMED and (cuda or n not in DEFAULT_CUDA_ONLY)
    ]
    for name in names:
        BENCHMARKS.get_entry(name)  # refuses unknown names before anything runs
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = make_config(args, device)
    results = {}
    for name in [n for n in BENCHMARKS if n in names]:
        start, where = time.perf_counter(), machine(device)
        payload = BENCHMARKS.build(name, cfg, device)
        results[name] = {
            "benchmark": name,
            "machine": where,
            "settings": {**dataclasses.asdict(cfg), "tag": args.tag},
            "wall_s": round(time.perf_counter() - start, 1),
            "process_peak_rss_gib": round(peak_rss_bytes() / GIB, 3),  # this run so far
            **payload,
        }
        write_result(_file(name, args.tag), results[name], args.out_dir)
        print(tables(name, results[name]), flush=True)
    link(results)
    if "cost" in results and args.out_dir == RESULTS_DIR and not args.tag:
        cost.update_doc(results["cost"])  # docs/performance.md shows the committed table
    for name, result in results.items():
        write_result(_file(name, args.tag), result, args.out_dir)
    if len(results) > 1:
        print("\n".join(tables(n, r) for n, r in results.items() if n in ("eval", "baseline")))
    return 0
