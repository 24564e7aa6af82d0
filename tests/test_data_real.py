"""The real offline copies (docs/data.md), run when ATOP_DATA_DIR points at them."""

import os
from pathlib import Path

import pytest
import torch

from atop_core.data import load_dataset

DATA_DIR = os.environ.get("ATOP_DATA_DIR")
pytestmark = pytest.mark.skipif(
    not DATA_DIR or not Path(DATA_DIR, "cifar10.zip").exists(),
    reason="ATOP_DATA_DIR is unset or holds no cifar10.zip: real-data tests need the local copies",
)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One decode per test session: the per-test cache would decode 60,000 images each time."""
    return tmp_path_factory.mktemp("real-cache")


def _load(name, split, cache, monkeypatch):
    monkeypatch.setenv("ATOP_CACHE_DIR", str(cache))
    return load_dataset(name, split, root=DATA_DIR, download=False)


def test_cifar10_test_has_1000_images_per_class(shared_cache, monkeypatch):
    ds = _load("cifar10", "test", shared_cache, monkeypatch)
    assert len(ds) == 10_000 and ds.images.shape[1:] == (3, 32, 32)
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    # channel means of the JPEG copies match the canonical CIFAR-10 test means (data README)
    means = ds.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor([0.4942, 0.4851, 0.4504]), atol=2e-3)


@pytest.mark.slow
def test_cifar10_train_has_50000_images(shared_cache, monkeypatch):
    ds = _load("cifar10", "train", shared_cache, monkeypatch)
    assert len(ds) == 50_000 and torch.bincount(ds.labels).tolist() == [5000] * 10


def test_imagenette_val_is_the_test_split(shared_cache, monkeypatch):
    ds = _load("imagenette", "test", shared_cache, monkeypatch)
    assert len(ds) == 3_925 and ds.images.shape[1:] == (3, 128, 128)
    assert ds.classes[0] == "n01440764" and len(ds.classes) == 10
