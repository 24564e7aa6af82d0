"""Atomic file writes: a killed run leaves the old file or the new one, never half of one."""

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_bytes_atomic(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_torch(path: Path, obj: Any) -> str:
    """torch.save through a temp file and a rename; returns the file's SHA-256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    torch.save(obj, tmp)
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    return digest


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
