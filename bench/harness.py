"""What every benchmark shares: the machine's description, interleaved timing, FLOP counting,
tables and result files.

Rates come from the fastest of several repeats (timeit's convention: on a shared machine a slower
repeat measures other processes, not ours; medians are recorded too), and variants that are
compared with each other are timed in interleaved rounds (A, B, A, B, ...), so a change in the
load falls on all of them alike instead of on whichever ran last.
"""

import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from atop_core.allocator import tune_malloc
from atop_core.io import write_json
from atop_core.provenance import git_commit

RESULTS_DIR = Path(__file__).resolve().parent / "results"
GIB = 2**30


@dataclass(frozen=True)
class Timed:
    """Seconds of each repeat of one variant, of its warm-up (compilation included), and the load
    average around them."""

    seconds: tuple[float, ...]
    warmup_s: float
    load_before: float
    load_after: float

    @property
    def median_s(self) -> float:
        return median(self.seconds)

    @property
    def best_s(self) -> float:
        return min(self.seconds)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall time measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> float:
    """The 1-minute load average: how busy the (shared) machine was."""
    return round(os.getloadavg()[0], 2)


def time_interleaved(
    variants: dict[str, Callable[[], object]],
    device: torch.device,
    repeats: int,
    budget_s: float,
    warmups: dict[str, Callable[[], object]] | None = None,
    min_rounds: int = 1,
) -> dict[str, Timed]:
    """Time each variant `repeats` times in interleaved rounds, after one warm-up call each
    (`warmups` may give a cheaper call with the same shapes). Rounds stop early, after at least
    `min_rounds`, once `budget_s` seconds have gone by."""
    warmups = warmups or {}
    load_before, warm = load_average(), {}
    for name, fn in variants.items():
        t0 = time.perf_counter()
        warmups.get(name, fn)()
        sync(device)
        warm[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in variants}
    start = time.perf_counter()
    for done in range(1, repeats + 1):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
        if done >= min_rounds and time.perf_counter() - start > budget_s:
            break
    load_after = load_average()
    return {k: Timed(tuple(v), warm[k], load_before, load_after) for k, v in times.items()}


class FlopCount(TorchDispatchMode):
    """FLOPs of the matrix products and convolutions run inside it, forward and backward, by
    PyTorch's own formulas (`flop_registry`, FlopCounterMode's; element-wise work is not counted,
    as on a roofline's compute axis). FlopCounterMode itself also tracks modules, and its hooks
    refuse autograd.grad on a leaf fed straight to a module, which FGSM does."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCount() as counter:
        fn()
    return counter.total


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: platform.processor() below is the best we have
    return platform.processor() or "unknown"


def machine(device: torch.device) -> dict:
    """Where and with what a result was measured."""
    info = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "malloc_tuned": tune_malloc(),  # large buffers kept off mmap (allocator.py; idempotent)
        "device": str(device),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "git_commit": git_commit(),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_result(name: str, result: dict, out_dir: Path = RESULTS_DIR) -> Path:
    """`<out_dir>/<name>.json`, written whole or not at all."""
    path = Path(out_dir) / f"{name}.json"
    write_json(path, result)
    return path


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return "-" if value is None else str(value)


def format_table(rows: Sequence[dict], columns: Sequence[str], title: str) -> str:
    """A plain-text table of `columns` from `rows` (missing cells shown as '-')."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([title, line, "-" * len(line), *body, ""])
