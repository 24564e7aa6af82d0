"""Sharded evaluation as submitit jobs (its local executor): retried, merged as if unsharded."""

import os
from pathlib import Path

import pytest
import torch

from atop_core import cluster, evaluation
from atop_core.cluster import ClusterConfig, evaluate_sharded
from tests.test_evaluation import ATTACK, _run, _stable

pytest.importorskip("submitit")
KW = {"protocol": "whole-model", "device": torch.device("cpu"), "n": 10, "draws": 3}


def preempted_once(path, profile, attack, shard, kw) -> str:
    """Shard 1's first job is pre-empted after saving its first batch; its rerun resumes."""
    marker = Path(os.environ["ATOP_HOME"]) / f"preempted-{shard[0]}"
    if shard[0] == 1 and not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        save = evaluation.save_progress

        def save_then_die(*args):
            save(*args)
            raise RuntimeError("pre-empted")

        evaluation.save_progress = save_then_die
    return cluster._run_shard(path, profile, attack, shard, kw)


@pytest.mark.slow  # two rounds of local jobs, each importing torch
def test_shards_run_as_jobs_are_retried_and_merge_into_the_unsharded_record(defense_path, tmp_path):
    from atop_core.config import get_profile

    whole, _ = _run(defense_path, sanity=True)
    config = ClusterConfig(shards=2, executor="local", folder=tmp_path / "jobs", timeout_min=10)
    merged, out = evaluate_sharded(
        defense_path,
        get_profile("smoke"),
        ATTACK,
        config,
        run_shard=preempted_once,
        sanity=True,
        **KW,
    )
    assert (Path(os.environ["ATOP_HOME"]) / "preempted-1").exists()  # the failure happened
    assert merged["shards"] == 2 and merged["complete"] and out.exists()
    assert merged["per_sample"] == whole["per_sample"]
    assert _stable(merged) == _stable(whole)


def test_a_bad_cluster_configuration_is_refused():
    with pytest.raises(ValueError, match="unknown executor 'pbs'; known: local, slurm"):
        ClusterConfig(executor="pbs")
    with pytest.raises(ValueError, match="need shards >= 1"):
        ClusterConfig(shards=0)
