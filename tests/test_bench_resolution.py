import torch

from atop_core.config import settings
from bench import resolution
from bench.workloads import BenchConfig
from tests.conftest import write_tree


def test_the_resolution_benchmark_trains_one_classifier_per_size_and_keeps_none(
    tmp_path, monkeypatch
):
    write_tree(tmp_path / "data", "imagenette", per_class=2)
    monkeypatch.setenv("ATOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(resolution, "SIZES", (16, 32))
    monkeypatch.setattr(resolution, "EPOCHS", 1)
    result = resolution.run(BenchConfig(), torch.device("cpu"))
    rows = result["rows"]
    assert [r["size"] for r in rows] == [16, 32] and [r["pixels_vs_32"] for r in rows] == [0.25, 1]
    assert all(r["train_images"] == 20 and r["eval_images"] == 20 for r in rows)
    assert all(0 <= r["accuracy"] <= 1 and r["train_s"] >= 0 for r in rows)
    assert not (settings().checkpoints_dir).exists()  # trained in a temporary home
