"""The command line: datasets that cannot be loaded are reported as not run, the rest go on."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from atop_core.__main__ import main
from atop_core.data import DATASETS
from tests.conftest import save_tiny_defense, write_tree


def _offline(root, split, download):
    raise RuntimeError("Dataset not found or corrupted.") if not download else OSError("offline")


def test_prepare_data_reports_an_unavailable_dataset_as_not_run(tmp_path, monkeypatch, capsys):
    write_tree(tmp_path, "cifar10", per_class=2)
    spec = dataclasses.replace(DATASETS.get_entry("cifar100"), torchvision_loader=_offline)
    monkeypatch.setitem(DATASETS, "cifar100", spec)
    args = [
        "prepare-data",
        "--profile",
        "smoke",
        "--data-dir",
        str(tmp_path),
        "--datasets",
        "cifar10",
        "cifar100",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cifar10     ready: 20 train / 20 test images" in out
    assert "cifar100    NOT RUN: no copy of cifar100/train found" in out
    path = Path(os.environ["ATOP_HOME"]) / "results" / "smoke" / "prepare-data_status.json"
    status = json.loads(path.read_text())
    assert status["cifar100"]["status"] == "not run" and "offline" in status["cifar100"]["reason"]
    assert status["cifar10"]["n_eval"] == 16


def test_evaluate_writes_a_record_with_its_protocol(tmp_path, monkeypatch, capsys):
    write_tree(tmp_path, "cifar10", per_class=1)
    monkeypatch.setenv("ATOP_DATA_DIR", str(tmp_path))
    path = save_tiny_defense(tmp_path / "defense-ae-rt2-atop.pt")
    args = [
        "evaluate",
        "--profile",
        "smoke",
        "--defense",
        str(path),
        "--attack",
        "pgd-eot",
        "--steps",
        "1",
        "--eot",
        "2",
        "--n",
        "4",
        "--draws",
        "3",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    assert "pgd-eot-1-eot2 (whole-model): single" in capsys.readouterr().out
    out = (
        Path(os.environ["ATOP_HOME"])
        / "results"
        / "smoke"
        / "cifar10"
        / "defense-ae-rt2-atop__pgd-eot-1-eot2__whole-model__n4.json"
    )
    record = json.loads(out.read_text())
    assert record["protocol"] == "whole-model" and record["n"] == 4 and record["draws"] == 3
    assert record["attack"]["eot"] == 2 and record["defense"]["atop"] is True
    assert len(record["per_sample"]["correct_draws"]) == 4 and record["indices"]["sha256"]
    # the same attack on another number of images is another record, beside the first
    assert main([*args[:-6], "--n", "2", *args[-4:]]) == 0
    assert json.loads(out.with_name(out.name.replace("__n4", "__n2")).read_text())["n"] == 2
    assert json.loads(out.read_text())["n"] == 4
    # without budgets on the command line, the profile's apply (smoke: 2 steps, EOT 2, 3 draws)
    assert main(["evaluate", "--profile", "smoke", "--defense", str(path), "--n", "2"]) == 0
    out = out.with_name("defense-ae-rt2-atop__pgd-eot-2-eot2__whole-model__n2.json")
    assert json.loads(out.read_text())["draws"] == 3
    # a defense by name, in shards of a Slurm-style array, merged into one record
    home_ckpt = Path(os.environ["ATOP_HOME"]) / "checkpoints" / "smoke" / "cifar10"
    home_ckpt.mkdir(parents=True)
    for suffix in (".pt", ".json"):
        (home_ckpt / f"defense-ae-rt2-atop{suffix}").write_bytes(
            path.with_suffix(suffix).read_bytes()
        )
    shard = ["evaluate", "--profile", "smoke", "--defense", "defense-ae-rt2-atop"]
    shard += ["--dataset", "cifar10", "--attack", "fgsm", "--n", "10", "--no-sanity"]
    for i in range(2):
        assert main([*shard, "--shard", f"{i}/2"]) == 0
    assert main(["merge", "--profile", "smoke"]) == 0
    merged = json.loads(
        out.with_name("defense-ae-rt2-atop__fgsm-eot2__whole-model__n10.json").read_text()
    )
    assert merged["n"] == 10 and merged["shards"] == 2 and merged["complete"] is True
    # frozen randomness: its own record, one draw per image shared by the attack and the judge
    assert main([*shard[:-1], "--randomness", "frozen", "--draws", "4"]) == 0
    frozen = out.with_name("defense-ae-rt2-atop__fgsm-eot2__whole-model__frozen__n10.json")
    record = json.loads(frozen.read_text())
    assert record["randomness"] == "frozen" and record["draws"] == 4
    assert set(record["per_sample"]["correct_draws"]) <= {0, 4}


BAD_INPUTS = [  # arguments, what the one line must say
    (["evaluate", "--attack", "pgdx"], "unknown attack 'pgdx'; known: apgd"),
    (["evaluate", "--eps", "-1"], "eps must be >= 0, got -1.0"),
    (["evaluate", "--shard", "5/4"], "--shard '5/4': need 0 <= i < k"),
    (["evaluate", "--dataset", "cifar11"], "invalid choice: 'cifar11'"),
    (["train", "--datasets", "cifar11"], "invalid choice: 'cifar11'"),
    (["evaluate", "--defense", "missing.pt"], "no defense checkpoint at missing.pt"),
    (["evaluate", "--defense", "defense-gan-rt2-atop"], "is a name, not a file: add --dataset"),
    (["merge", "--attack", "pgd"], "unrecognized arguments: --attack pgd"),
    (["evaluate", "--randomness", "thawed"], "invalid choice: 'thawed'"),
    (["evaluate", "--module", "nosuch.mod:make", "--dataset", "cifar10"], "cannot import"),
    (["evaluate", "--shards", "0"], "need shards >= 1"),
    (["evaluate", "--shards", "2", "--shard", "0/2"], "not allowed with argument"),
    (["evaluate", "--module", "nosuch", "--dataset", "cifar10"], "must look like pkg.mod:factory"),
    (["evaluate", "--module", "nosuch.mod:make"], "--module needs --dataset"),
]


@pytest.mark.slow  # a process per case, each importing torch
@pytest.mark.parametrize(
    ("args", "says"), BAD_INPUTS, ids=lambda a: " ".join(a) if isinstance(a, list) else ""
)
def test_a_bad_input_is_one_line_naming_it_and_exit_status_2(tmp_path, args, says):
    defense = save_tiny_defense(tmp_path / "defense-ae-rt2-atop.pt")
    if not {"--defense", "--module"} & set(args) and args[0] == "evaluate":
        args = [*args, "--defense", str(defense)]
    done = subprocess.run(
        [sys.executable, "-m", "atop_core", *args, "--profile", "smoke"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "error:" in done.stderr and says in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
