"""The data layer: local trees and zips, the torchvision fallback, the cache, fixed subsets."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import atop_core.io as atop_io
from atop_core import data as data_module
from atop_core.data import (
    DATASETS,
    DataFormatError,
    DataNotFoundError,
    ImageTensorDataset,
    eval_indices,
    indices_sha256,
    load_dataset,
    shrink,
    unavailable_reason,
)
from tests.conftest import write_tree, zip_tree

# --- names and splits ---------------------------------------------------------------------------


def test_unknown_dataset_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match="cifar10, cifar100, imagenette"):
        load_dataset("cifar11", "test", root=tmp_path)


def test_unknown_split_lists_known_splits(tmp_path):
    with pytest.raises(ValueError, match="'val'.*train, test"):
        load_dataset("cifar10", "val", root=tmp_path)


# --- local folders and zips ---------------------------------------------------------------------


def test_folder_tree_gives_unit_range_images_and_folder_labels(tmp_path):
    write_tree(tmp_path, "cifar10", per_class=3)
    ds = load_dataset("cifar10", "test", root=tmp_path)
    assert len(ds) == 30
    assert ds.classes == DATASETS.get_entry("cifar10").classes
    x, y = ds[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y == 2  # sorted by class, then file: item 7 is the third class's second image
    assert torch.bincount(ds.labels).tolist() == [3] * 10


def test_zip_and_folder_give_identical_tensors(tmp_path):
    folder = write_tree(tmp_path / "f", "cifar10")
    zipped = zip_tree(folder, tmp_path / "cifar10.zip")
    from_folder = load_dataset("cifar10", "train", root=tmp_path / "f")
    from_zip = load_dataset("cifar10", "train", root=zipped)
    assert torch.equal(from_folder.images, from_zip.images)
    assert torch.equal(from_folder.labels, from_zip.labels)


def test_data_dir_from_environment_is_used(tmp_path, monkeypatch):
    write_tree(tmp_path, "cifar10", per_class=1)
    monkeypatch.setenv("ATOP_DATA_DIR", str(tmp_path))
    assert len(load_dataset("cifar10", "test")) == 10


def test_imagenette_test_split_reads_the_val_folder(tmp_path):
    write_tree(tmp_path, "imagenette", per_class=1, size=128, splits=("val",))
    ds = load_dataset("imagenette", "test", root=tmp_path)
    assert len(ds) == 10 and ds.images.shape[-1] == 128


def test_figures_name_imagenette_classes_in_words_and_keep_other_names(tmp_path):
    write_tree(tmp_path, "imagenette", per_class=1, size=128, splits=("val",))
    names = load_dataset("imagenette", "test", root=tmp_path).class_names
    assert names[0] == "tench" and names[-1] == "parachute" and len(set(names)) == 10
    write_tree(tmp_path, "cifar10", per_class=1, splits=("test",))
    cifar = load_dataset("cifar10", "test", root=tmp_path)
    assert cifar.class_names == cifar.classes


def test_cifar100_local_tree_has_100_classes_in_torchvision_order(tmp_path):
    write_tree(tmp_path, "cifar100", per_class=1, splits=("test",))
    ds = load_dataset("cifar100", "test", root=tmp_path)
    assert len(ds.classes) == 100 and ds.classes[:3] == ("apple", "aquarium_fish", "baby")
    assert ds.labels.tolist() == list(range(100))


def test_subset_keeps_classes_and_picks_rows(tmp_path):
    write_tree(tmp_path, "cifar10", per_class=2)
    ds = load_dataset("cifar10", "test", root=tmp_path)
    sub = ds.subset([0, 5, 19])
    assert sub.labels.tolist() == [0, 2, 9] and sub.classes == ds.classes


# --- errors name the file at fault and the fix ---------------------------------------------------


def test_missing_data_names_every_place_looked_and_the_fix(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_dataset("cifar10", "test", root=tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "cifar10.zip") in message and str(tmp_path / "cifar10") in message
    assert "torchvision" in message and "ATOP_DATA_DIR" in message and "download=True" in message


def test_corrupt_zip_is_reported_with_its_path(tmp_path):
    (tmp_path / "cifar10.zip").write_bytes(b"not a zip at all" * 100)
    with pytest.raises(DataFormatError, match="cifar10.zip"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_truncated_zip_is_reported_with_its_path(tmp_path):
    zipped = zip_tree(write_tree(tmp_path / "f", "cifar10"), tmp_path / "cifar10.zip")
    zipped.write_bytes(zipped.read_bytes()[: zipped.stat().st_size // 2])
    with pytest.raises(DataFormatError, match="cifar10.zip"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_undecodable_image_is_reported_by_name(tmp_path):
    folder = write_tree(tmp_path, "cifar10", per_class=1)
    (folder / "test" / "cat" / "0000.png").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="cat/0000.png"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_wrong_class_count_is_refused(tmp_path):
    classes = DATASETS.get_entry("cifar10").classes[:9]
    write_tree(tmp_path, "cifar10", per_class=1, classes=classes)
    with pytest.raises(DataFormatError, match="9 class folders.*missing: \\['truck'\\]"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_wrong_image_size_is_reported_with_the_file(tmp_path):
    write_tree(tmp_path, "cifar10", per_class=1, size=16)
    with pytest.raises(DataFormatError, match="airplane/0000.png is 16x16, expected 32x32"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_empty_split_folder_is_refused(tmp_path):
    write_tree(tmp_path, "cifar10", per_class=1, splits=("train",))
    with pytest.raises(DataFormatError, match="no images under 'test/"):
        load_dataset("cifar10", "test", root=tmp_path)


# --- the decoded cache ----------------------------------------------------------------------------


def _forbid_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(data_module, "_decode_image", refuse)


def test_second_load_reads_the_cache_instead_of_decoding(tmp_path, monkeypatch):
    write_tree(tmp_path, "cifar10", per_class=1)
    first = load_dataset("cifar10", "test", root=tmp_path)
    _forbid_decoding(monkeypatch)
    second = load_dataset("cifar10", "test", root=tmp_path)
    assert torch.equal(first.images, second.images)


def test_changed_source_is_decoded_anew(tmp_path, monkeypatch):
    folder = write_tree(tmp_path, "cifar10", per_class=1)
    load_dataset("cifar10", "test", root=tmp_path)
    write_tree(tmp_path, "cifar10", per_class=2, seed=1)  # adds files: a new checksum
    assert len(load_dataset("cifar10", "test", root=tmp_path)) == 20
    assert folder.exists()


def test_cache_interrupted_mid_write_is_never_used(tmp_path, monkeypatch):
    write_tree(tmp_path, "cifar10", per_class=1)
    real_replace = atop_io.os.replace

    def killed_before_rename(src, dst):  # the temp file is written; the process dies here
        raise KeyboardInterrupt

    monkeypatch.setattr(atop_io.os, "replace", killed_before_rename)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("cifar10", "test", root=tmp_path)
    monkeypatch.setattr(atop_io.os, "replace", real_replace)
    decoded = Path(os.environ["ATOP_CACHE_DIR"]) / "decoded"
    assert not list(decoded.glob("*.pt"))  # only the temp file, never the final name
    assert len(load_dataset("cifar10", "test", root=tmp_path)) == 10


# --- the torchvision fallback ---------------------------------------------------------------------


class _FakeTorchvision:
    """Stands in for torchvision's dataset classes: fails unless `available`."""

    def __init__(self, available_after_download: bool):
        self.calls: list[bool] = []
        self.available_after_download = available_after_download

    def __call__(self, root, split, download):
        self.calls.append(download)
        if not download:
            raise RuntimeError("Dataset not found or corrupted.")
        if not self.available_after_download:
            raise OSError("network is unreachable")
        return [(torch.full((3, 32, 32), 7, dtype=torch.uint8), i % 100) for i in range(4)]


def _use_fake(monkeypatch, fake):
    spec = dataclasses.replace(DATASETS.get_entry("cifar100"), torchvision_loader=fake)
    monkeypatch.setitem(DATASETS, "cifar100", spec)


def test_without_local_copy_torchvision_downloads(tmp_path, monkeypatch):
    fake = _FakeTorchvision(available_after_download=True)
    _use_fake(monkeypatch, fake)
    ds = load_dataset("cifar100", "test", root=tmp_path)
    assert fake.calls == [False, True] and len(ds) == 4 and ds.source == "torchvision"
    assert ds.images.dtype == torch.uint8 and ds.labels.tolist() == [0, 1, 2, 3]


def test_download_false_never_downloads(tmp_path, monkeypatch):
    fake = _FakeTorchvision(available_after_download=True)
    _use_fake(monkeypatch, fake)
    with pytest.raises(DataNotFoundError):
        load_dataset("cifar100", "test", root=tmp_path, download=False)
    assert fake.calls == [False]


def test_offline_download_failure_explains_itself(tmp_path, monkeypatch):
    _use_fake(monkeypatch, _FakeTorchvision(available_after_download=False))
    with pytest.raises(DataNotFoundError, match="download failed: network is unreachable"):
        load_dataset("cifar100", "test", root=tmp_path)


def test_unavailable_reason_is_none_for_a_copy_and_the_error_when_offline(tmp_path, monkeypatch):
    write_tree(tmp_path, "cifar10", per_class=1)
    monkeypatch.setenv("ATOP_DATA_DIR", str(tmp_path))
    _use_fake(monkeypatch, _FakeTorchvision(available_after_download=False))
    assert unavailable_reason("cifar10") is None
    reason = unavailable_reason("cifar100")
    assert reason.startswith("no copy of cifar100/train found")
    assert "network is unreachable" in reason
    brief = unavailable_reason("cifar100", brief=True)
    assert brief.startswith("no copy of cifar100 found") and str(tmp_path) not in brief


# --- fixed evaluation subsets ---------------------------------------------------------------------


def test_eval_indices_are_sorted_unique_and_repeatable(tmp_path):
    first = eval_indices("cifar10", 64, seed=3)
    assert first == sorted(set(first)) and len(first) == 64 and max(first) < 10_000
    assert eval_indices("cifar10", 64, seed=3) == first


def test_eval_indices_are_saved_with_their_sha256():
    drawn = eval_indices("imagenette", 32, seed=0)
    path = Path(os.environ["ATOP_HOME"]) / "indices" / "imagenette-test3925-n32-seed0.json"
    saved = json.loads(path.read_text())
    assert saved["indices"] == drawn and saved["sha256"] == indices_sha256(drawn)


def test_eval_indices_match_across_processes():
    here = eval_indices("cifar10", 16, seed=5)
    code = "from atop_core.data import eval_indices; print(eval_indices('cifar10', 16, seed=5))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "ATOP_HOME": os.environ["ATOP_HOME"] + "2"},
    )
    assert json.loads(out.stdout) == here


def test_distinct_seeds_give_distinct_subsets():
    assert eval_indices("cifar10", 64, seed=0) != eval_indices("cifar10", 64, seed=1)


def test_tampered_index_file_is_refused():
    eval_indices("cifar10", 8, seed=0)
    path = Path(os.environ["ATOP_HOME"]) / "indices" / "cifar10-test10000-n8-seed0.json"
    record = json.loads(path.read_text())
    record["indices"][0] += 1
    path.write_text(json.dumps(record))
    with pytest.raises(DataFormatError, match="disagrees with a fresh draw"):
        eval_indices("cifar10", 8, seed=0)


@pytest.mark.parametrize("n", [0, 10_001])
def test_eval_indices_refuse_impossible_sizes(n):
    with pytest.raises(ValueError, match=f"n must be in \\[1, 10000\\].*got {n}"):
        eval_indices("cifar10", n)


@pytest.mark.parametrize("name, count", [("cifar10", 10), ("cifar100", 100), ("imagenette", 10)])
def test_class_lists_are_complete_and_in_sorted_folder_order(name, count):
    classes = DATASETS.get_entry(name).classes
    assert len(classes) == count and list(classes) == sorted(classes)


def test_shrink_resizes_larger_images_down_and_leaves_the_rest():
    images = torch.zeros((3, 3, 128, 128), dtype=torch.uint8)
    images[:, :, :64] = 200  # top half bright: stays bright after shrinking
    ds = ImageTensorDataset(images, torch.tensor([0, 1, 2]), ("a", "b", "c"), "local:x")
    small = shrink(ds, 32)
    assert small.images.shape == (3, 3, 32, 32) and small.images.dtype == torch.uint8
    assert small.images[:, :, :15].float().mean() == 200 and small.images[:, :, 17:].max() == 0
    assert torch.equal(small.labels, ds.labels) and small.source == "local:x at 32 px"
    assert shrink(ds, 0) is ds and shrink(ds, 128) is ds
