"""Loads the compiled extension once; a missing or broken build leaves the pure-Python backends.

This module is the one place that knows why a backend is missing: ``LOAD_ERROR`` says why the
extension did not load, :func:`missing_reason` why a backend cannot run on a device.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import torch

try:  # written by setup.py beside the extension it builds
    from splatkern import _build_info as BUILD_INFO
except ImportError:  # a source tree that was never built
    BUILD_INFO = None

REBUILD = (
    "rebuild it against the installed torch: pip install --no-build-isolation --no-cache-dir --force-reinstall "
    "--no-deps splatkern (in a source tree: pip install --no-build-isolation .)"
)


def _minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("+")[0].split(".")[:2])


def _build_mismatch() -> str | None:
    """Why the recorded build cannot work with this torch, before loading it: a C++ extension built
    for another torch minor version may import and then crash, or fail with an unreadable symbol."""
    if BUILD_INFO is None:
        return None
    if _minor(BUILD_INFO.TORCH_VERSION) != _minor(torch.__version__):
        return (f"splatkern._C was built for torch {BUILD_INFO.TORCH_VERSION} but torch {torch.__version__} "
                f"is installed; {REBUILD}")
    if BUILD_INFO.CUDA_VERSION is not None and torch.version.cuda is None:
        return (f"splatkern._C was built with CUDA {BUILD_INFO.CUDA_VERSION} kernels but torch {torch.__version__} "
                f"is a CPU-only build; {REBUILD}")
    return None


def _load() -> str | None:
    mismatch = _build_mismatch()
    if mismatch:
        return mismatch
    try:
        from splatkern import _C  # noqa: F401, PLC0415  (importing it registers torch.ops.splatkern.*)
    except (ImportError, OSError) as error:  # not built, or built against another torch / Python
        return f"splatkern._C did not load ({type(error).__name__}: {error}); {REBUILD}"
    return None


LOAD_ERROR: str | None = _load()

# Dispatch keys ("CPU", "CUDA") with a compiled splat_forward kernel. Computed once, here, so that
# code traced by torch.compile only reads a constant.
KERNEL_KEYS: frozenset[str] = frozenset(
    key
    for key in ("CPU", "CUDA")
    if LOAD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("splatkern::splat_forward", key)
)


def missing_reason(backend: str, device_type: str) -> str | None:
    """Why ``backend`` cannot run on ``device_type`` tensors here, or None when it can (then
    ``splatkern.available_backends(device_type)`` lists it)."""
    if backend == "reference":
        return None
    if backend in ("cpu", "cuda"):
        if device_type != backend:
            return f"the {backend} backend runs on {backend} tensors only"
        if LOAD_ERROR is not None:
            return LOAD_ERROR
        if backend.upper() not in KERNEL_KEYS:
            return (f"splatkern._C was built without {backend.upper()} kernels (CUDA kernels need a CUDA build of "
                    "torch and the CUDA toolkit at build time; SPLATKERN_CUDA=1 makes their absence a build error)")
        return None
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
        if device_type == "cuda":
            return None if torch.cuda.is_available() else "no CUDA device is available"
        if device_type == "cpu":
            if os.environ.get("TRITON_INTERPRET") == "1":
                return None
            return ("on cpu tensors Triton runs only in its interpreter: set TRITON_INTERPRET=1 before importing "
                    "splatkern")
        return f"triton runs on cuda tensors only, not {device_type}"
    return f"unknown backend {backend!r}"


_warned_fallback = False


def warn_fallback(chosen: str) -> None:
    """Warns once a process that ``backend="auto"`` runs ``chosen`` because the extension did not load."""
    global _warned_fallback
    if LOAD_ERROR is None or _warned_fallback:
        return
    _warned_fallback = True
    # stacklevel: this function, ops._pick_backend, ops.splat_render, then the caller's line
    warnings.warn(f"splat_render: backend='auto' falls back to {chosen!r}: {LOAD_ERROR}", RuntimeWarning,
                  stacklevel=4)
