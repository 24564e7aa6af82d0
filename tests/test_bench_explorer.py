"""bench/explorer.py on a tiny defense: the benchmark itself runs outside the suite."""

import torch

from bench.explorer import run
from bench.workloads import BenchConfig
from tests.conftest import save_tiny_defense


def test_the_explorer_benchmark_times_a_redraw_and_an_attack_per_defense(tmp_path):
    path = save_tiny_defense(tmp_path / "defense-ae-rt2-atop.pt")
    cfg = BenchConfig(defenses=(str(path),), repeats=1, budget_s=1.0)
    (row,) = run(cfg, torch.device("cpu"))["rows"]
    assert row["defense"] == str(path) and row["transform"] == "rt2"
    assert 0 < row["redraw_s"] and 0 < row["attack_s"]
