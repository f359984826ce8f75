"""glibc malloc settings that stop XLA:CPU from page-faulting its buffers in on every step.

XLA:CPU allocates each execution's temporaries and outputs with malloc. glibc serves large
blocks with fresh mmap()s and returns freed heap tops to the kernel, so every train step
touches tens of MB of new pages: measured on nano_tiny (4x64 tokens) 12-16 K minor page faults
and ~20 ms of kernel time per step, pro_tiny 30-40 K faults and 50-70 ms. With mmap off, no
trimming, a padded heap top and one arena (XLA's worker threads otherwise get their own
64 MiB heaps, which glibc shrinks with madvise on free: pro_tiny kept 17-25 K faults per
step without it), freed blocks are reused: 0-200 faults, < 1 ms.

`tune()` must run before the large allocations (at program start). Linux/glibc only; elsewhere
it does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def tune(top_pad_bytes: int = 256 << 20) -> str:
  """Sets M_MMAP_MAX=0, M_TRIM_THRESHOLD=max, M_TOP_PAD=top_pad_bytes, M_ARENA_MAX=1;
  returns a one-line description of what was set (for the program's log)."""
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
  except (OSError, AttributeError, TypeError):
    return f"malloc: left as is (no glibc mallopt in {name!r})"
  ok = [mallopt(_M_MMAP_MAX, 0), mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1),
        mallopt(_M_TOP_PAD, int(top_pad_bytes)), mallopt(_M_ARENA_MAX, 1)]
  if not all(ok):
    return f"malloc: mallopt refused some settings ({ok})"
  return (f"malloc: glibc mmap off, no trim, top pad {top_pad_bytes >> 20} MiB, one arena "
          "(freed buffers reused, no per-step page faults)")
