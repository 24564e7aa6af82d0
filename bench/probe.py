"""One workload in a fresh process, for `memory`: `python -m bench.probe '<json spec>'` runs it
and prints one JSON line with the process's peak resident memory (and, for the quick profile,
each stage's own peak: /proc/self/clear_refs resets the high-water mark between stages)."""

import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import torch

from atop_core.allocator import tune_malloc
from bench.harness import GIB, peak_rss_bytes
from bench.workloads import (
    AUTHORS_SIZE,
    arch,
    attack_runner,
    build_defense,
    ours,
    synthetic_images,
    theirs,
)

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
RESET_PEAK = "5"  # Linux: reset the peak RSS (VmHWM) to the current RSS


def _gib(n: float) -> float:
    return round(n / GIB, 3)


def _current_peak_gib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent across fork and exec, so a probe started by a big process would report its size."""
    try:
        match = re.search(r"VmHWM:\s+(\d+) kB", STATUS.read_text())
    except OSError:
        match = None  # not Linux: ru_maxrss is the best there is
    return _gib(int(match.group(1)) * 1024) if match else _gib(peak_rss_bytes())


def _reset_peak() -> bool:
    try:
        CLEAR_REFS.write_text(RESET_PEAK)
    except OSError:
        return False  # not Linux, or not allowed: stage peaks become cumulative
    return True


def attack_probe(spec: dict) -> dict:
    """One PGD-EOT step over one batch: its peak is the benchmark's (steps only repeat it)."""
    device = torch.device(spec.get("device", "cpu"))
    styles = {"ours": ours(spec["images"]), "theirs-256": theirs(AUTHORS_SIZE)}
    style = dataclasses.replace(
        styles[spec["style"]], pass_size=spec.get("pass_size", styles[spec["style"]].pass_size)
    )
    model = build_defense(arch(spec["arch"]), spec["purifier"], style, device)
    x, y = synthetic_images(spec["images"], device)
    run = attack_runner(model, style, x, y)
    before = _current_peak_gib()
    run(1, spec["eot"])
    return {"rss_before_gib": before}


def speed_probe(spec: dict) -> dict:
    """Image-draw-steps per second of PGD-EOT (quick nets, ours or the authors' structure at
    native size) with this process's threads and OpenMP settings: the fastest of `repeats`
    timed calls after a warm-up."""
    device = torch.device("cpu")
    style = {"ours": ours(spec["images"]), "theirs-native": theirs(0)}[spec["style"]]
    model = build_defense(arch("quick"), spec["purifier"], style, device)
    x, y = synthetic_images(spec["images"], device)
    run = attack_runner(model, style, x, y)
    run(1, spec["eot"])
    best = min(_seconds(lambda: run(1, spec["eot"])) for _ in range(spec["repeats"]))
    return {"image_draw_steps_per_s": round(spec["images"] * spec["eot"] / best, 2)}


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def quick_profile_probe(spec: dict) -> dict:
    """Each stage's own peak; the profile's peak is the largest of them."""
    from bench.quick_stages import quick_profile_stages

    peaks, resets = {}, True
    for name, fn in quick_profile_stages().items():
        resets = _reset_peak() and resets
        fn()
        peaks[name] = _current_peak_gib()
    return {"stage_peak_gib": peaks, "per_stage_reset": resets, "peak_rss_gib": max(peaks.values())}


def finetune_probe(spec: dict) -> dict:
    from bench.finetune import finetune_runner

    device = torch.device(spec.get("device", "cpu"))
    _, one_step, batch = finetune_runner(spec["arch"], spec["purifier"], True, device)
    before = _current_peak_gib()
    one_step()
    return {"rss_before_gib": before, "batch": batch}


PROBES = {
    "attack": attack_probe,
    "finetune": finetune_probe,
    "quick-profile": quick_profile_probe,
    "speed": speed_probe,
}


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    tune_malloc()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    out = PROBES[spec["kind"]](spec)
    out["peak_rss_gib"] = max(out.get("peak_rss_gib", 0.0), _current_peak_gib())
    if torch.cuda.is_available() and spec.get("device", "cpu").startswith("cuda"):
        out["cuda_peak_gib"] = _gib(torch.cuda.max_memory_allocated())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
