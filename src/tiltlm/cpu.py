"""CPU process settings: intra-op threads, and glibc malloc tuned so freed tensors keep their pages.

Why the malloc tuning: PyTorch's CPU tensors come straight from ``malloc``. glibc serves a large request with a fresh
``mmap`` (above its mmap threshold) and hands freed memory at the top of the heap back to the kernel (above its trim
threshold), so the next tensor of the same size touches new pages and takes a page fault per 4 KiB. A training step
allocates and frees the same few-MiB activations again and again: measured on the workloads of benchmarks/vs_trl.py
(Xeon with AMX, 2 threads), about 2,000 minor faults per forward + backward on (a) and 6,000-10,000 on (b), down to
20-150 with the settings below, and in some processes a 974x512 elementwise op right after a matmul took 1.3 ms
instead of 0.4 ms (942 faults per call). Freed memory stays in the process (up to ``TRIM_BYTES``), so resident memory
can sit near its peak instead of dropping between steps; the peak itself does not grow.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import torch

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_BYTES = 32 << 20  # requests below this come from the heap (32 MiB is glibc's ceiling on 64-bit)
TRIM_BYTES = 1 << 30  # free memory at the heap's top is returned to the kernel only above this
TOP_PAD_BYTES = 16 << 20  # grow the heap in steps of at least this much


def keep_freed_memory() -> bool:
    """Tune glibc malloc as the module docstring explains; False (and nothing changed) on other C libraries."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): leave the allocator alone
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_BYTES), (_M_TRIM_THRESHOLD, TRIM_BYTES), (_M_TOP_PAD, TOP_PAD_BYTES)))


def configure(threads: int, keep_memory: bool = True) -> None:
    """Per-process CPU settings every command applies before it loads a model."""
    torch.set_num_threads(threads)
    if keep_memory:
        keep_freed_memory()
