"""Data-parallel training under torchrun: 2 CPU processes (gloo) against one, on a tiny dataset.

Every run is a subprocess, `python -m torch.distributed.run --nproc_per_node=2 -m
tests.test_distributed train --profile smoke` (or the same module without torchrun): this module's
`__main__` installs the tiny profile below as "smoke" and calls `python -m atop_core`'s `main`, so
the command line, the process group and every stage (classifier, adversarial-training baseline,
GAN pretraining with its discriminator, AToP) are the ones `torchrun -m atop_core train` runs.
Under test a stage checkpoints after every step, and `DIST_TEST_KILL=<stage>:<n>` SIGKILLs the last
rank before its n-th step of that stage, as a pre-empted job dies.
"""

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from atop_core import config, distributed, pipeline, train
from atop_core.config import DataConfig, get_profile, with_fields
from atop_core.data import DATASETS

ROOT = Path(__file__).resolve().parents[1]
KILL = "DIST_TEST_KILL"
SMOKE = get_profile("smoke")
# 160 training images; each purifier pretrains for 3 epochs of 6 batches of 16 (8 per rank)
TINY = get_profile(
    "smoke",
    data=DataConfig(n_eval=8),
    datasets=("cifar10",),
    purifiers=("gan", "ae"),
    transforms=("rt2",),
    baselines=("fgsm-rs",),
    classifier=with_fields(SMOKE.classifier, width=0.25, batch_size=16, train_subset=0),
    purifier=with_fields(SMOKE.purifier, width=4, batch_size=16, epochs=3, train_subset=96),
    finetune=with_fields(SMOKE.finetune, batch_size=16, train_subset=32),
)
# The AE's pretraining (no BatchNorm) is the stage compared: its per-epoch ℓ1 at 2 processes was
# within 0.6% of one process's (0.2758/0.2665/0.2345 vs 0.2744/0.2651/0.2339), as close as two
# single-process runs that differ only in their random draws (0.4%); the test allows 2%.
LOSS_RTOL = 0.02


def write_learnable_tree(root: Path, per_class: int, test_per_class: int, seed: int = 0) -> None:
    """CIFAR-10's local layout with images a tiny network learns from: each class its own colour
    under smooth noise (a purifier, too, can learn to fill them in)."""
    spec = DATASETS.get_entry("cifar10")
    rng = np.random.default_rng(seed)
    counts = {"train": per_class, "test": test_per_class}
    for split, folder_name in spec.local_splits.items():
        for c, name in enumerate(spec.classes):
            folder = root / "cifar10" / folder_name / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([(c * 37) % 256, (c * 91) % 256, (c * 53) % 256]) / 255
            for i in range(counts[split]):
                coarse = torch.tensor(rng.uniform(-0.25, 0.25, (1, 3, 4, 4)), dtype=torch.float32)
                smooth = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear")[0]
                pixels = (smooth.permute(1, 2, 0).numpy() + colour).clip(0, 1)
                Image.fromarray((pixels * 255).astype(np.uint8)).save(folder / f"{i:04d}.png")


def _run(home: Path, env: dict, processes: int, kill: str | None = None):
    entry = ["-m", "tests.test_distributed", "train", "--profile", "smoke"]
    launch = ["-m", "torch.distributed.run", "--nproc_per_node=2"] if processes == 2 else []
    run_env = {**env, "ATOP_HOME": str(home), "OMP_NUM_THREADS": "1", "ATOP_PROGRESS": "text"}
    run_env.pop(KILL, None)
    if kill:
        run_env[KILL] = kill
    return subprocess.run(
        [sys.executable, *launch, *entry],
        cwd=ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _folder(home: Path) -> Path:
    return home / "checkpoints" / "smoke" / "cifar10"


def _checkpoints(home: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(_folder(home).glob("*.pt"))}


def _log(home: Path, prefix: str) -> list[dict]:
    (path,) = _folder(home).glob(f"{prefix}*.log.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    write_learnable_tree(data, per_class=16, test_per_class=1)
    base = tmp_path_factory.mktemp("base")
    return {
        **os.environ,
        "ATOP_DATA_DIR": str(data),
        "ATOP_CACHE_DIR": str(base / "cache"),
        "ATOP_AMP": "auto",
    }


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """The whole tiny chain run once in one process and once in two."""
    homes = {n: tmp_path_factory.mktemp(f"home{n}") for n in (1, 2)}
    for n, home in homes.items():
        done = _run(home, env, n)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return homes


def test_without_torchrun_every_helper_leaves_the_single_process_run_as_it_was(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (distributed.world_size(), distributed.rank(), distributed.is_main()) == (1, 0, True)
    with distributed.process_group("cpu") as device:
        assert device == torch.device("cpu") and not distributed.active()
        batch = torch.arange(8)
        assert distributed.batch_slice(batch) is batch
        metrics = {"loss": 0.5}
        assert distributed.all_reduce_mean(metrics) is metrics
        assert distributed.on_main(lambda: 3) == 3
        net = torch.nn.Linear(2, 2)
        assert distributed.data_parallel({"net": net}, device) == {}
        distributed.barrier()
    draws = train.step_generator(1, 2, 3), train._generator(1, 2, 3)
    assert torch.equal(*(torch.rand(4, generator=g) for g in draws))  # the step's, unchanged


def _stage_checkpoints(home: Path) -> list[Path]:
    return sorted(p for p in _folder(home).glob("*.pt") if not p.name.startswith("defense-"))


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(runs):
    one, two = _checkpoints(runs[1]), _checkpoints(runs[2])
    assert len(one) == 12 and sorted(one) == sorted(two)  # 6 stages, 6 defenses
    for path in _stage_checkpoints(runs[2]):  # bare state dicts, no DDP `module.` prefix
        state = torch.load(path, weights_only=False)
        reference = torch.load(_folder(runs[1]) / path.name, weights_only=False)
        assert {k: list(m) for k, m in state["models"].items()} == {
            k: list(m) for k, m in reference["models"].items()
        }
    index = json.loads((_folder(runs[2]) / "defenses.json").read_text())
    assert sorted(e["file"] for e in index) == sorted(n for n in one if n.startswith("defense-"))
    status = {
        n: json.loads((h / "results/smoke/train_status.json").read_text()) for n, h in runs.items()
    }
    assert "processes" not in status[1]["cifar10"] and status[2]["cifar10"]["processes"] == 2
    assert json.loads((runs[2] / "ranks.json").read_text()) == {"same_weights": True}


@pytest.mark.slow
def test_at_equal_global_batch_the_losses_follow_the_single_process_run(runs):
    one, two = (_log(runs[n], "purifier-ae-rt2-pretrain-") for n in (1, 2))
    assert [e["epoch"] for e in one] == [e["epoch"] for e in two] == [1, 2, 3]
    pairs = [(a["l1"], b["l1"]) for a, b in zip(one, two, strict=True)]
    assert pairs[-1][0] < 0.9 * pairs[0][0]  # it learns, so there is a curve to follow
    assert all(abs(b - a) <= LOSS_RTOL * a for a, b in pairs), pairs
    assert one != two  # the ranks drew their own transforms: not a copy of one process's run


@pytest.mark.slow
def test_a_killed_run_resumes_at_either_world_size(env, runs, tmp_path):
    """Killed mid-pretraining in one process (a checkpoint mid-epoch), resumed in two and killed
    again in the last stage, finished in one: the files of an uninterrupted run."""
    killed = _run(tmp_path, env, 1, kill="pretrain gan:2")
    assert killed.returncode == -signal.SIGKILL
    (pre,) = _folder(tmp_path).glob("purifier-gan-rt2-pretrain-*.pt")
    blob = torch.load(pre, weights_only=False)
    assert (blob["epoch"], blob["step"]) == (0, 2)  # 2 of its 18 batches, at world size 1
    killed = _run(tmp_path, env, 2, kill="atop ae:1")
    assert killed.returncode != 0
    assert json.loads(pre.with_suffix(".json").read_text())["epochs_done"] == 3  # at 2
    done = _run(tmp_path, env, 1)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    resumed, reference = _checkpoints(tmp_path), _checkpoints(runs[1])
    assert sorted(resumed) == sorted(reference)
    trained_first = [n for n in reference if n.startswith("classifier-")]
    assert all(resumed[n] == reference[n] for n in trained_first)  # one process, like those


def _digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for t in module.state_dict().values():
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _install_test_hooks() -> None:
    """The tiny profile as "smoke"; a checkpoint after every step; `DIST_TEST_KILL`; and, at the
    chain's end, whether every rank holds the same weights, in $ATOP_HOME/ranks.json."""
    config.PROFILES["smoke"] = TINY
    stage, _, at = os.environ.get(KILL, "").partition(":")
    real_fit, real_chain = pipeline.fit, pipeline.train_chain
    trained: list[torch.nn.Module] = []

    def fit(name, state, step_fn, *args, **kwargs):
        trained.extend(state.models.values())
        if stage and name.startswith(stage):
            calls, inner = itertools.count(), step_fn

            def step_fn(*step_args):
                last_rank = distributed.rank() == distributed.world_size() - 1
                if next(calls) == int(at) and last_rank:
                    os.kill(os.getpid(), signal.SIGKILL)
                return inner(*step_args)

        return real_fit(name, state, step_fn, *args, **{**kwargs, "save_every_s": 0.0})

    def train_chain(*args, **kwargs):
        saved = real_chain(*args, **kwargs)
        digests = [_digest(m) for m in trained]
        gathered = [digests] * distributed.world_size()
        if distributed.active():
            torch.distributed.all_gather_object(gathered, digests)
        if distributed.is_main():
            same = all(d == gathered[0] for d in gathered)
            (config.settings().home / "ranks.json").write_text(json.dumps({"same_weights": same}))
        return saved

    pipeline.fit, pipeline.train_chain = fit, train_chain


if __name__ == "__main__":
    from atop_core import __main__ as cli

    _install_test_hooks()
    cli.train_chain = pipeline.train_chain  # the command imported it by name
    sys.exit(cli.main(sys.argv[1:]))
