"""``splatkern doctor``: what this install has, and why a backend is missing. Needs no extras."""

from __future__ import annotations

import importlib.metadata
import platform
import sys

import torch

import splatkern
from splatkern import _extension
from splatkern.ops import available_backends, backend_candidates


def _triton() -> str:
    # The version from the package metadata: importing triton here would fix TRITON_INTERPRET for the process.
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _torch() -> str:
    if torch.version.cuda is None:
        return f"{torch.__version__} (CPU-only build)"
    return f"{torch.__version__} (CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s) visible)"


def _build() -> str:
    info = _extension.BUILD_INFO
    if info is None:
        return "no build record (splatkern._C was not built by this setup.py)"
    cuda = f"CUDA {info.CUDA_VERSION} kernels for sm {info.CUDA_ARCH_LIST}" if info.CUDA_VERSION else "no CUDA kernels"
    return f"built for torch {info.TORCH_VERSION}, {cuda}"


def _said_once(reason: str) -> str:
    return "splatkern._C did not load (above)" if reason == _extension.LOAD_ERROR else reason


def report() -> str:
    """The doctor's lines: versions, the extension's build and load state, the backends of each device."""
    lines = [
        f"splatkern {splatkern.__version__} ({splatkern.__path__[0]})",
        f"Python {platform.python_version()} ({sys.executable})",
        f"torch {_torch()}",
        f"triton {_triton()}",
        f"extension: {_build()}; " + ("loaded" if _extension.LOAD_ERROR is None else "NOT LOADED"),
    ]
    if _extension.LOAD_ERROR is not None:
        lines.append(f"  {_extension.LOAD_ERROR}")
    for device in ("cpu", "cuda"):
        lines.append(f"backends for {device} tensors: {', '.join(available_backends(device))}")
        lines += [f"  no {backend}: {_said_once(_extension.missing_reason(backend, device))}"
                  for backend in backend_candidates(device) if backend not in available_backends(device)]
    lines.append("To check the kernels against the reference on this machine: splatkern check")
    return "\n".join(lines)
