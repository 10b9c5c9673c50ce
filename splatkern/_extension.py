"""Loads the compiled extension once; a missing or broken build leaves the pure-Python backends."""

from __future__ import annotations

import torch

try:
    from splatkern import _C  # noqa: F401  (importing it registers torch.ops.splatkern.*)

    LOAD_ERROR: str | None = None
except ImportError as error:  # not built, or built against another torch / Python
    LOAD_ERROR = f"{type(error).__name__}: {error}"

# Dispatch keys ("CPU", "CUDA") with a compiled splat_forward kernel. Computed once, here, so that
# code traced by torch.compile only reads a constant.
KERNEL_KEYS: frozenset[str] = frozenset(
    key
    for key in ("CPU", "CUDA")
    if LOAD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("splatkern::splat_forward", key)
)
