"""The malloc tuning: large tensors come from the heap once a command tunes malloc (glibc), and
importing atop_core alone changes nothing."""

import ctypes
import os
import subprocess
import sys

import pytest

from atop_core import allocator

# A 64 MiB tensor, then the bytes glibc holds in mmap'd blocks (mallinfo2, glibc >= 2.33).
PROBE = """
import ctypes, sys
import torch
import atop_core
from atop_core.allocator import tune_malloc
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
tuned = tune_malloc() if sys.argv[1] == "tune" else False
x = torch.ones(16 * 2**20)  # 64 MiB
print(tuned, libc.mallinfo2().hblkhd)
"""
BIG = 64 * 2**20

needs_glibc = pytest.mark.skipif(
    allocator.glibc_version() is None or not hasattr(ctypes.CDLL(None), "mallinfo2"),
    reason="malloc tuning applies to glibc >= 2.33 only",
)


def _probe(tuning: str, tune: str = "tune") -> tuple[bool, int]:
    env = {**os.environ, allocator.OPT_OUT: tuning}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, tune], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1])


@needs_glibc
def test_importing_atop_core_leaves_malloc_alone():
    tuned, mmapped = _probe("1", tune="import only")
    assert not tuned and mmapped >= BIG


@needs_glibc
def test_large_tensors_come_from_the_heap_once_malloc_is_tuned():
    tuned, mmapped = _probe("1")
    assert tuned and mmapped < BIG
    # the check can fail: with the tuning off, glibc maps the same tensor with mmap
    untuned, mmapped = _probe("0")
    assert not untuned and mmapped >= BIG


def test_opting_out_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv(allocator.OPT_OUT, "0")
    assert allocator.tune_malloc() is False
