"""Measuring one callable: its time per call (median and interquartile range) and its peak memory.

Peak memory is the memory the call adds on top of what existed before it: on CUDA what torch's
caching allocator hands out (``max_memory_allocated``); on CPU the rise of the process's resident
set high-water mark (``VmHWM``), which sees every allocation the call touches, including
``std::vector`` scratch inside C++ kernels that torch's CPU allocator never reports. bench/README.md
explains why the CPU measure is set up as it is.
"""

from __future__ import annotations

import ctypes
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work: without it a CUDA call's time is only its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    median_s: float  # per call
    iqr_s: float  # 75th minus 25th percentile of the per-call times of the samples
    best_s: float  # the fastest sample's per-call time: the limit is a best case too (bench/README.md)
    samples: int  # how many samples the statistics are over
    calls_per_sample: int  # each sample times this many back-to-back calls, so it lasts >= min_sample_s


def time_calls(
    fn: Callable[[], object],
    device: torch.device,
    *,
    min_sample_s: float,
    samples: int,
    max_total_s: float,
    warmup: int = 2,
) -> Timing:
    """Time `fn` after `warmup` calls: `samples` samples (fewer, but at least 3, if they would take
    longer than `max_total_s`), each of enough calls to last `min_sample_s`."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    one_call = _time_sample(fn, device, 1)
    calls = max(1, math.ceil(min_sample_s / max(one_call, 1e-9)))
    samples = max(3, min(samples, math.floor(max_total_s / max(one_call * calls, 1e-9))))
    per_call = [_time_sample(fn, device, calls) / calls for _ in range(samples)]
    return Timing(statistics.median(per_call), interquartile_range(per_call), min(per_call), samples, calls)


def interquartile_range(values: list[float]) -> float:
    """75th minus 25th percentile (linear interpolation between the sorted values)."""
    if len(values) < 2:
        return 0.0
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return quartiles[2] - quartiles[0]


def _time_sample(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int | None:
    """Bytes one call of `fn` needs beyond what was allocated before it (None: no way to measure here)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type == "cpu":
        return _cpu_peak_bytes(fn)
    return None


# --- CPU: resident-set high-water mark, with glibc malloc made to hand memory back at once ---------

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers from glibc's malloc.h
# While measuring: every block of 64 KiB or more gets its own mmap and is unmapped when freed, so the
# resident set follows the live allocations instead of keeping freed blocks for reuse.
_MEASURE_MMAP_THRESHOLD = 64 << 10
# Afterwards: the state glibc's dynamic threshold reaches once a large block has been freed (its
# DEFAULT_MMAP_THRESHOLD_MAX and twice that for trimming), so timings run under the usual policy.
_RUN_MMAP_THRESHOLD, _RUN_TRIM_THRESHOLD = 32 << 20, 64 << 20
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


_LIBC = _glibc()


def cpu_memory_method() -> str | None:
    """Why CPU peak memory cannot be measured here, or None when it can."""
    if _LIBC is None:
        return "needs glibc (mallopt, malloc_trim)"
    if not (_STATUS.exists() and _CLEAR_REFS.exists()):
        return "needs Linux /proc/self/status and /proc/self/clear_refs"
    return None


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError(f"{field} missing from {_STATUS}")


def _cpu_peak_bytes(fn: Callable[[], object]) -> int | None:
    if cpu_memory_method() is not None:
        return None
    _LIBC.mallopt(_M_MMAP_THRESHOLD, _MEASURE_MMAP_THRESHOLD)
    _LIBC.mallopt(_M_TRIM_THRESHOLD, _MEASURE_MMAP_THRESHOLD)
    try:
        _LIBC.malloc_trim(0)  # return freed heap pages, so reusing them shows up as growth again
        before = _status_bytes("VmRSS")
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current resident set (Linux >= 4.0)
        fn()
        return max(0, _status_bytes("VmHWM") - before)
    finally:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, _RUN_MMAP_THRESHOLD)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, _RUN_TRIM_THRESHOLD)
