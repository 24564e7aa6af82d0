"""Atomic file writes: a killed run leaves the old file or the new one, never half of one."""

import hashlib
import io
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
    """torch.save, atomically; returns the file's SHA-256. Serialized in memory (so the archive
    is not named after a temp file and equal objects give equal bytes), and an identical file
    already on disk is left untouched, so its hash, and records naming it, stay valid."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    if not (Path(path).exists() and sha256_file(path) == digest):
        write_bytes_atomic(path, data)
    return digest


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
