"""Data-parallel training under `torchrun`: the process group and the few collectives training uses.

`torchrun --nproc_per_node=N -m atop_core train ...` starts N processes with `WORLD_SIZE`, `RANK`
and `LOCAL_RANK` set; `process_group` joins them (NCCL on GPUs, each rank on cuda:LOCAL_RANK; gloo
on CPUs). Without torchrun (no `WORLD_SIZE`, or 1) there is no process group: `world_size()` is 1,
`rank()` 0, and every helper here does nothing or calls its function as it is, so a single process
computes exactly what it did before data parallelism existed.

Training splits each global batch into N contiguous slices (rank r trains on slice r) and wraps the
trained networks in DistributedDataParallel (`data_parallel`), which averages their gradients; rank
0 alone evaluates and writes files (`on_main`), and the others wait for what it returns.
"""

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from atop_core.config import resolve_device
from atop_core.nets.purifiers import Purifier

T = TypeVar("T")


def active() -> bool:
    """A process group of more than one process is running (under torchrun)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """This process writes checkpoints, logs and status files (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def launched_world_size() -> int:
    """The number of processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


@contextmanager
def process_group(device_name: str = "auto") -> Iterator[torch.device]:
    """The device this process trains on, inside the process group torchrun's environment names
    (destroyed on exit). Without torchrun: `resolve_device(device_name)` and no process group."""
    device = resolve_device(device_name)
    if launched_world_size() == 1 or active():  # no torchrun, or a caller already joined one
        yield device
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """Where tensors sent through the process group must live (NCCL: this rank's GPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (every rank must pass the same keys); as it is in a
    single process."""
    if not active():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return {k: v / world_size() for k, v in zip(keys, t.tolist(), strict=True)}


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` run on rank 0 alone and its (picklable) result sent to every rank: evaluation and
    file writes, which the other ranks wait for. In a single process, just `fn()`."""
    if not active():
        return fn()
    out = [fn() if is_main() else None]
    dist.broadcast_object_list(out, src=0, device=_collective_device())
    return out[0]


def broadcast_state(module: nn.Module) -> None:
    """Rank 0's parameters and buffers copied into every rank's `module` (BatchNorm's running
    statistics drift apart after the last forward, each rank having seen its own slice)."""
    if not active():
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.device.type == _collective_device().type:
                dist.broadcast(t, src=0)
            else:  # e.g. a CPU buffer of a CUDA model under NCCL
                moved = t.to(_collective_device())
                dist.broadcast(moved, src=0)
                t.copy_(moved)


class StagesView(nn.Module):
    """A purifier whose forward returns every stage's output (`purifier.stages`): DDP hooks only
    `forward`, and L_df needs all stages. Holds the purifier itself, so no weights are copied."""

    def __init__(self, purifier: nn.Module):
        super().__init__()
        self.purifier = purifier

    def forward(self, x: Tensor, keep: Tensor) -> list[Tensor]:
        return self.purifier.stages(x, keep)


def data_parallel(models: dict[str, nn.Module], device: torch.device) -> dict[str, nn.Module]:
    """DDP wrappers of the networks a stage trains (those with trainable parameters), keyed as
    `models`; a purifier is wrapped through its `StagesView`. Empty in a
    single process. DDP copies rank 0's weights and buffers to every rank when it wraps them."""
    if not active():
        return {}
    ids = [device.index] if device.type == "cuda" else None
    return {
        k: DistributedDataParallel(StagesView(m) if isinstance(m, Purifier) else m, device_ids=ids)
        for k, m in models.items()
        if any(p.requires_grad for p in m.parameters())
    }


def batch_slice(idx: Tensor) -> Tensor:
    """This rank's contiguous slice of a global batch of indices (all of it in one process).
    A batch size that is a multiple of the world size splits evenly; otherwise the first slices
    are one larger, and DDP's mean of the ranks' gradients weighs their images slightly less."""
    if not active():
        return idx
    if len(idx) < world_size():
        raise ValueError(
            f"a batch of {len(idx)} cannot be split over {world_size()} processes: use a batch "
            "size of at least the number of processes (a multiple of it splits evenly)"
        )
    return idx.tensor_split(world_size())[rank()]
