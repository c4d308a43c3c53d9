r"""Keep freed CPU memory in the process, so that a training step does not page-fault it back.

A DiffFlow step with backpropagation keeps every step's activations (about 1.2 GB for the paper's
2D configuration at N = 30) and frees them all at the end of the backward pass. PyTorch's CPU
tensors come from the C library's ``malloc``. glibc's ``malloc`` then hands the freed top of its
heap back to the operating system, so the next step faults every page in again, zero-filled. On
a 2-core virtual machine that was about 300,000 page faults and 0.3 s of a 1.1 s step
(``benchmarks/train_step.py``). Whether it happens depends on what else sits at the top of the
heap, so the same run is fast or slow from one start to the next.

:func:`retain_freed_memory` sets glibc's ``M_TRIM_THRESHOLD`` (return memory to the system only
when more than that is free at the top of the heap) and ``M_MMAP_THRESHOLD`` (serve blocks under 32
MiB from the heap, and stop glibc from adjusting the threshold itself). Threads other than the main
one allocate from their own arenas, made of 64 MiB heaps, and glibc unmaps such a heap whenever it
falls empty, whatever the trim threshold: with :class:`~sdeflow.gradients.Sharded` that was
80,000-285,000 page faults per step and 1.06-2.4 s instead of 0.75-0.81 s (N = 30). ``M_TOP_PAD``,
the free space a trim must leave, is therefore set above two heaps' worth (256 MiB), which keeps
every heap mapped; it only reserves address space, which stays out of the resident set until it is
used. The process then keeps what its peak needed. It changes the whole process, so the library
never calls it on its own: the ``sdeflow toy`` command and the benchmarks do. Elsewhere it does
nothing and returns ``False``. Preloading jemalloc or tcmalloc (``LD_PRELOAD``), as PyTorch's CPU
performance guide suggests, solves the same problem.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's largest allowed M_MMAP_THRESHOLD on 64-bit systems
# > 2 x 64 MiB thread-arena heaps: glibc's heap_trim then never deletes a heap (it keeps the pad)
_TOP_PAD = 256 * 2**20
_INT_MAX = 2**31 - 1


def retain_freed_memory(trim_threshold: int = _INT_MAX) -> bool:
    r"""Make glibc's ``malloc`` keep freed memory for reuse instead of returning it to the OS.

    Arguments:
        trim_threshold: Return memory to the OS only when more than this many bytes are free at
            the top of the heap (glibc's ``M_TRIM_THRESHOLD``; at most ``2**31 - 1``).

    Returns:
        Whether the settings were applied (``False`` on systems without glibc).

    Example:
        >>> retain_freed_memory() in (True, False)
        True
    """
    if isinstance(trim_threshold, bool) or not isinstance(trim_threshold, int) or not (
            0 < trim_threshold <= _INT_MAX):
        raise ValueError(f"trim_threshold must be an int in 1 .. 2**31 - 1, got "
                         f"{trim_threshold!r}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                and mallopt(_M_TRIM_THRESHOLD, trim_threshold)
                and mallopt(_M_TOP_PAD, _TOP_PAD))
