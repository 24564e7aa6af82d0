"""The command line: datasets that cannot be loaded are reported as not run, the rest go on."""

import dataclasses
import json
import os
from pathlib import Path

from atop_core.__main__ import main
from atop_core.data import DATASETS
from tests.conftest import write_tree


def _offline(root, split, download):
    raise RuntimeError("Dataset not found or corrupted.") if not download else OSError("offline")


def test_prepare_data_reports_an_unavailable_dataset_as_not_run(tmp_path, monkeypatch, capsys):
    write_tree(tmp_path, "cifar10", per_class=2)
    spec = dataclasses.replace(DATASETS.get_entry("cifar100"), torchvision_loader=_offline)
    monkeypatch.setitem(DATASETS, "cifar100", spec)
    args = ["prepare-data", "--profile", "smoke", "--data-dir", str(tmp_path),
            "--datasets", "cifar10", "cifar100"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "cifar10     ready: 20 train / 20 test images" in out
    assert "cifar100    NOT RUN: no copy of cifar100/train found" in out
    path = Path(os.environ["ATOP_HOME"]) / "results" / "smoke" / "prepare-data_status.json"
    status = json.loads(path.read_text())
    assert status["cifar100"]["status"] == "not run" and "offline" in status["cifar100"]["reason"]
    assert status["cifar10"]["n_eval"] == 16
