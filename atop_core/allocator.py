"""Keep large tensor buffers on the heap (glibc), so large activations stop page-faulting.

glibc's malloc serves every block above its mmap threshold (at most 32 MiB) with fresh pages from
`mmap` and returns them with `munmap` when freed. Training and attack steps allocate and free
activations of that size many times a second, so each one page-faults on first touch. On the
2-core development machine a ReLU over a 33 MB tensor took 16 ms instead of 2.9 ms, a quick GAN
attack step (forward and backward through the defended model, 256 image-draws) 1.55-1.69 s
instead of 1.09 s, and the quick classifier's 8 epochs 773 s instead of 613 s (two from-scratch
runs). Setting `M_MMAP_MAX` to 0 serves them from the heap, and a high `M_TRIM_THRESHOLD` keeps
freed memory for the next step instead of handing it back. The price: a process's resident memory
stays near its own peak until it exits (the quick profile's stages peak at about 2 GiB).
Process-wide, so importing atop_core leaves it alone: the command line, the notebooks' setup and
the benchmarks call `tune_malloc` when they start work.

Written here because no maintained package sets these: the usual fix, jemalloc or tcmalloc, needs
LD_PRELOAD before Python starts, which notebooks opened in JupyterLab would not get.
"""

import ctypes
import os

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 2**31 - 1  # the largest int mallopt takes: ~2 GiB of free heap kept for reuse
OPT_OUT = "ATOP_MALLOC_TUNING"  # set to 0 to leave malloc as it is


def glibc_version() -> str | None:
    """'glibc 2.36' on glibc systems, None elsewhere (musl, macOS, Windows)."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION")
    except (AttributeError, ValueError, OSError):
        return None


def tune_malloc() -> bool:
    """Serve every allocation from the heap and keep freed memory for reuse. Process-wide and
    idempotent; a no-op (False) off glibc or when ATOP_MALLOC_TUNING=0. True when applied."""
    if os.environ.get(OPT_OUT, "1") == "0" or glibc_version() is None:
        return False
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
