"""Shared fixtures: small image trees in the local-copy layout, and an isolated environment."""

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atop_core.allocator import tune_malloc
from atop_core.data import DATASETS

tune_malloc()  # the test run is a command like any other: large buffers off mmap (allocator.py)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Every test gets its own cache and home, so no test reads another's artifacts."""
    monkeypatch.setenv("ATOP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ATOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ATOP_AMP", "auto")  # the default, whatever the caller's shell set


def write_tree(
    root: Path,
    name: str,
    per_class: int = 2,
    size: int | None = None,
    classes: tuple[str, ...] | None = None,
    splits: tuple[str, ...] | None = None,
    seed: int = 0,
) -> Path:
    """Write `<root>/<name>/<split>/<class>/<i>.png` images and return the dataset folder."""
    spec = DATASETS.get_entry(name)
    size = spec.image_size if size is None else size
    classes = spec.classes if classes is None else classes
    splits = tuple(spec.local_splits.values()) if splits is None else splits
    rng = np.random.default_rng(seed)
    for split in splits:
        for c in classes:
            folder = root / name / split / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root / name


def zip_tree(folder: Path, zip_path: Path) -> Path:
    """Zip a dataset folder's contents (stored, like the shared archives)."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())
    return zip_path


def save_tiny_defense(path: Path) -> Path:
    """A random AE-purified RT2 + AToP defense on a 0.25-width small classifier, for CIFAR-10."""
    import torch

    from atop_core.config import ClassifierConfig, PurifierConfig, TransformConfig
    from atop_core.defense import save_defense
    from atop_core.nets.classifiers import build_classifier
    from atop_core.nets.purifiers import build_purifier

    torch.manual_seed(0)
    save_defense(
        path,
        build_classifier("small", 10, 32, width=0.25),
        build_purifier("ae", width=4, image_size=32),
        dataset="cifar10",
        num_classes=10,
        image_size=32,
        classifier_cfg=ClassifierConfig(width=0.25),
        purifier_cfg=PurifierConfig(kind="ae", width=4),
        transform_cfg=TransformConfig(),
        atop=True,
    )
    return path


@pytest.fixture()
def defense_path(tmp_path, monkeypatch):
    """A tiny saved defense and the 10 CIFAR-10 test images it is evaluated on."""
    write_tree(tmp_path, "cifar10", per_class=1)
    monkeypatch.setenv("ATOP_DATA_DIR", str(tmp_path))
    return save_tiny_defense(tmp_path / "defense-ae-rt2-atop.pt")
