"""The hardware's limit for splat_render under the separable formulation (bench/README.md, "Hardware limit").

Per marker-pixel pair the forward does one multiply, one compare and two selects; per image it
writes its output and the backward reads its upstream gradient and the winner map. A case's limit
time is what the device needs for that work at full speed:

* GPU: ``max(pairs * OPS_PER_PAIR / op_rate, bytes / hbm_bandwidth)``, from the datasheet table below.
* CPU: ``pairs / rate`` of ``multiply_max.c``, that work alone in a tight vectorised loop with every
  operand in L1, compiled here and timed in the same run on as many threads as torch uses.

``limit_fraction = limit time / measured time``: 1.0 would be a kernel that does nothing but that work.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

OPS_PER_PAIR = 4  # multiply, compare, select value, select index

# name fragment (as torch.cuda.get_device_name reports it), FP32 FLOP/s with an FMA counted as two
# operations, HBM bytes/s. Sources: NVIDIA H100 Tensor Core GPU datasheet (H100 SXM: 67 TFLOPS FP32,
# 3.35 TB/s; H100 PCIe: 51 TFLOPS, 2 TB/s; H100 NVL: 60 TFLOPS, 3.9 TB/s) and the NVIDIA H200 page
# (H200 SXM: 67 TFLOPS FP32, 4.8 TB/s; H200 NVL: 60 TFLOPS, 4.8 TB/s). First match wins.
GPU_PEAKS = (
    ("H100 PCIe", "NVIDIA H100 PCIe", 51e12, 2.0e12),
    ("H100 NVL", "NVIDIA H100 NVL", 60e12, 3.9e12),
    ("H200 NVL", "NVIDIA H200 NVL", 60e12, 4.8e12),
    ("H200", "NVIDIA H200 SXM", 67e12, 4.8e12),
    ("H100", "NVIDIA H100 SXM", 67e12, 3.35e12),
)
# The datasheet's FP32 rate counts a fused multiply-add as two operations; a multiply, a compare or a
# select is one instruction per lane and clock, so such operations issue at half that rate.
FLOPS_PER_INSTRUCTION = 2


def image_bytes(batch: int, markers: int, pixels: int, mode: str) -> int:
    """Bytes the fused op must move: marker inputs once; forward writes image and int32 winner map,
    the backward reads the upstream gradient and the winner map and writes the marker gradients."""
    marker_bytes = batch * markers * 4 * 4  # means (2), sigma, amp in float32
    forward = marker_bytes + batch * pixels * (4 + 4)
    return forward if mode == "forward" else forward + batch * pixels * (4 + 4) + 2 * marker_bytes


def gpu_peak(device_name: str) -> dict | None:
    for fragment, model, flops, bandwidth in GPU_PEAKS:
        if fragment in device_name:
            return {"model": model, "fp32_flops": flops, "op_rate": flops / FLOPS_PER_INSTRUCTION,
                    "hbm_bytes_per_s": bandwidth}
    return None


def describe_limit(device: torch.device, threads: int) -> dict:
    """What a case's limit time is computed from on `device`; {"unavailable": reason} when unknown."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak(name)
        if peak is None:
            return {"unavailable": f"no peak figures for {name!r} in bench/limits.py GPU_PEAKS"}
        return {"kind": "gpu-roofline", **peak}
    if device.type == "cpu":
        return calibrate_cpu(threads)
    return {"unavailable": f"no limit model for device type {device.type!r}"}


def limit_seconds(limit: dict, batch: int, markers: int, pixels: int, mode: str) -> float | None:
    pairs = batch * markers * pixels
    if limit.get("kind") == "gpu-roofline":
        compute = pairs * OPS_PER_PAIR / limit["op_rate"]
        return max(compute, image_bytes(batch, markers, pixels, mode) / limit["hbm_bytes_per_s"])
    if limit.get("kind") == "cpu-multiply-max":
        return pairs / limit["pairs_per_s"]
    return None


# --- CPU calibration -----------------------------------------------------------------------------

_SOURCE = Path(__file__).with_name("multiply_max.c")
# 512-bit vectors are not always faster than 256-bit ones (clock offsets); the limit is the faster.
_VECTOR_WIDTHS = (256, 512)
_CALIBRATION_SECONDS = 0.1  # per timed run; the best of _CALIBRATION_RUNS is the limit
_CALIBRATION_RUNS = 5


def _compile(width: int) -> Path:
    compiler = os.environ.get("CC", "cc")
    flags = ["-O3", "-march=native", f"-mprefer-vector-width={width}", "-fopenmp", "-shared", "-fPIC"]
    key = hashlib.sha256(_SOURCE.read_bytes() + " ".join([compiler, *flags]).encode()).hexdigest()[:16]
    library = Path(tempfile.gettempdir()) / f"splatkern-bench-multiply-max-{key}.so"
    if not library.exists():
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([compiler, *flags, str(_SOURCE), "-o", str(partial)], check=True, capture_output=True,
                       text=True)
        partial.replace(library)  # atomic: a concurrent run never loads a half-written library
    return library


def _pairs_per_second(library: Path, threads: int) -> float:
    lib = ctypes.CDLL(str(library))
    lib.multiply_max.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.multiply_max.restype = ctypes.c_double
    lib.multiply_max_pairs_per_rep.restype = ctypes.c_int64
    pairs_per_rep = lib.multiply_max_pairs_per_rep()
    reps = 1000
    while True:  # grow the run until it lasts long enough to time
        start = time.perf_counter()
        lib.multiply_max(threads, reps)
        elapsed = time.perf_counter() - start
        if elapsed >= _CALIBRATION_SECONDS / 4:
            break
        reps *= 4
    reps = max(1, int(reps * _CALIBRATION_SECONDS / elapsed))
    best = float("inf")
    for _ in range(_CALIBRATION_RUNS):
        start = time.perf_counter()
        lib.multiply_max(threads, reps)
        best = min(best, time.perf_counter() - start)
    return threads * reps * pairs_per_rep / best


def calibrate_cpu(threads: int) -> dict:
    """The CPU's pairs per second for the bare multiply-compare-select loop, on `threads` threads."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        return {"unavailable": f"no C compiler {compiler!r} to build bench/multiply_max.c (set CC)"}
    rates = {}
    for width in _VECTOR_WIDTHS:
        try:
            rates[width] = _pairs_per_second(_compile(width), threads)
        except subprocess.CalledProcessError as error:
            rates[width] = None
            reason = error.stderr.strip().splitlines()[-1] if error.stderr.strip() else str(error)
            print(f"  calibration with {width}-bit vectors failed to build: {reason}")
    usable = {width: rate for width, rate in rates.items() if rate}
    if not usable:
        return {"unavailable": "bench/multiply_max.c did not build with any vector width"}
    width = max(usable, key=usable.get)
    return {"kind": "cpu-multiply-max", "pairs_per_s": usable[width], "vector_bits": width, "threads": threads,
            "pairs_per_s_by_vector_bits": {str(w): r for w, r in rates.items()}}


def recalibrated(limit: dict, threads: int) -> dict:
    """`limit` with the CPU calibrated once more (at the end of a run): the faster of the two
    calibrations becomes the limit, so load from other work on the machine during one of them does not
    inflate every fraction of the run. Anything but a CPU limit is returned as it is."""
    if limit.get("kind") != "cpu-multiply-max":
        return limit
    again = calibrate_cpu(threads)
    rates = [limit["pairs_per_s"], again.get("pairs_per_s") or 0.0]
    best = max((limit, again), key=lambda one: one.get("pairs_per_s") or 0.0)
    return {**best, "calibrations_pairs_per_s": rates}

