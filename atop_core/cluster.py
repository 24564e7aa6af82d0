"""One record's shards evaluated as a job array, on Slurm or this machine, through submitit.

Each job runs `evaluate_defense` for its shard, which resumes the shard's partial record, so a
job that fails or is pre-empted is simply submitted again (up to `retries` times); when every
shard is complete they are merged into the unsharded record, sample for sample the record one
process would have written.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import submitit

from atop_core.attacks import AttackConfig
from atop_core.config import Profile, settings
from atop_core.evaluation import evaluate_defense
from atop_core.io import write_json
from atop_core.records import SHARD_RE, merge_shards

log = logging.getLogger(__name__)
EXECUTORS = ("local", "slurm")


@dataclass(frozen=True)
class ClusterConfig:
    """How the shards run: `executor` local (subprocesses here) or slurm (a job array)."""

    shards: int = 2
    executor: str = "local"
    partition: str | None = None  # Slurm partition
    timeout_min: int = 120  # per shard job
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    retries: int = 2  # resubmissions of failed or pre-empted shards
    folder: Path | None = None  # submitit's logs; default results/<profile>/submitit

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"unknown executor {self.executor!r}; known: {', '.join(EXECUTORS)}")
        if self.shards < 1 or self.retries < 0:
            raise ValueError(
                f"need shards >= 1 and retries >= 0, got {self.shards}, {self.retries}"
            )


def _executor(cluster: ClusterConfig, folder: Path) -> submitit.Executor:
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster.executor)
    params = {"timeout_min": cluster.timeout_min, "cpus_per_task": cluster.cpus_per_task}
    if cluster.executor == "slurm":
        params |= {
            "gpus_per_node": cluster.gpus_per_node,
            "slurm_array_parallelism": cluster.shards,
        }
        if cluster.partition:
            params["slurm_partition"] = cluster.partition
    executor.update_parameters(**params)
    return executor


def _run_shard(path: str, profile: Profile, attack: AttackConfig, shard: tuple, kw: dict) -> str:
    """One job: evaluate (or resume) one shard; returns its record's path."""
    return str(evaluate_defense(path, profile, attack, shard=shard, **kw)[1])


def evaluate_sharded(
    path: str | Path,
    profile: Profile,
    attack: AttackConfig,
    cluster: ClusterConfig,
    run_shard: Callable[..., str] = _run_shard,
    **kw,
) -> tuple[dict, Path]:
    """`evaluate_defense(path, profile, attack, **kw)` as `cluster.shards` jobs of `job` (one
    shard each), merged; returns the merged record and its path."""
    folder = cluster.folder or settings().results_dir / profile.name / "submitit"
    executor = _executor(cluster, folder)
    k, done = cluster.shards, {}
    pending = list(range(k))
    for attempt in range(cluster.retries + 1):
        n = len(pending)
        jobs = executor.map_array(
            run_shard, [str(path)] * n, [profile] * n, [attack] * n, [(i, k) for i in pending],
            [kw] * n,
        )  # fmt: skip
        failed = []
        for i, job in zip(pending, jobs, strict=True):
            try:
                done[i] = Path(job.result())
            except Exception as err:  # submitit's failed, pre-empted or timed-out job
                log.warning("shard %d/%d failed (try %d): %s", i, k, attempt + 1, err)
                failed.append(i)
        if not failed:
            break
        pending = failed
    else:
        raise RuntimeError(
            f"shards {pending} of {k} failed {cluster.retries + 1} times; their logs are in "
            f"{folder}. Their partial records are kept: rerun to resume them"
        )
    shards = [done[i] for i in range(k)]
    merged = merge_shards(shards)
    out = shards[0].with_name(SHARD_RE.sub(".json", shards[0].name))
    write_json(out, merged)
    return merged, out
