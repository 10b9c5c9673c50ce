"""Loads the compiled extension once; a missing or broken build leaves the pure-Python backends."""

from __future__ import annotations

import torch

try:
    from splatkern import _C  # noqa: F401  (importing it registers torch.ops.splatkern.*)

    LOAD_ERROR: str | None = None
except ImportError as error:  # not built, or built against another torch / Python
    LOAD_ERROR = f"{type(error).__name__}: {error}"


# Read once: the registrations happen when _C is imported, and torch.compile cannot trace the
# dispatcher query (fullgraph=True fails on it) but folds a constant set.
_KERNEL_KEYS = frozenset(
    key
    for key in ("CPU", "CUDA")
    if LOAD_ERROR is None and torch._C._dispatch_has_kernel_for_dispatch_key("splatkern::splat_forward", key)
)


def has_kernels(dispatch_key: str) -> bool:
    """Whether the extension loaded and registered splat_forward for `dispatch_key` ("CPU", "CUDA")."""
    return dispatch_key in _KERNEL_KEYS
