"""Atomic writes: a failed write leaves the previous file intact."""

import json

import pytest
import torch

from atop_core.io import read_json, save_torch, sha256_file, write_json


def test_write_json_round_trips_sorted(tmp_path):
    path = tmp_path / "a" / "r.json"
    write_json(path, {"b": 1, "a": [1, 2]})
    assert read_json(path) == {"a": [1, 2], "b": 1}
    assert path.read_text().index('"a"') < path.read_text().index('"b"')


def test_failed_json_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "r.json"
    write_json(path, {"ok": True})
    with pytest.raises(TypeError):
        write_json(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": True}


def test_save_torch_returns_the_file_sha256(tmp_path):
    path = tmp_path / "t.pt"
    digest = save_torch(path, {"x": torch.arange(3)})
    assert digest == sha256_file(path)
    assert torch.equal(torch.load(path)["x"], torch.arange(3))
    assert not list(tmp_path.glob(".*.tmp"))
