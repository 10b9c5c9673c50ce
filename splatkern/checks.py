"""The value checks' errors, stated once for the Python side. csrc/splat.cpp raises the same texts
(C++ raises them without calling into Python); tests/test_backends.py holds every backend to them word for word.

The kernels check values where they read them and report a word of flaw bits (``MarkerFlaw`` in
csrc/splat.h: bit k is ``FLAW_MESSAGES[k]``), so a call costs one host sync for its checks and no
extra pass over the inputs; the reference backend computes the same bits with torch ops.
"""

from __future__ import annotations

import torch

# In the order they are reported when several hold.
FLAW_MESSAGES = (
    "splat_render: means must be finite (found NaN or inf)",
    "splat_render: sigmas must be finite (found NaN or inf)",
    "splat_render: sigmas must be > 0 (found a value <= 0)",
    "splat_render: amps must be finite (found NaN or inf)",
)


# csrc/splat_autograd.cpp raises the same for the C++ backends.
NO_DOUBLE_BACKWARD = (
    "splat_render: double backward is not supported by the fused backends (their backward has no derivative); "
    'use backend="reference" for second derivatives'
)


def raise_marker_flaws(flaws: int) -> None:
    """Raise the ValueError of the first flaw bit set in ``flaws``; 0 passes."""
    for bit, message in enumerate(FLAW_MESSAGES):
        if flaws >> bit & 1:
            raise ValueError(message)


def check_values(means: torch.Tensor, sigmas: torch.Tensor, amps: torch.Tensor) -> None:
    """The reference backend's value checks: torch reductions read back with one host sync."""
    found = torch.stack([
        ~torch.isfinite(means).all(), ~torch.isfinite(sigmas).all(), ~(sigmas > 0).all(), ~torch.isfinite(amps).all()
    ])  # fmt: skip
    raise_marker_flaws(sum(1 << bit for bit, flag in enumerate(found.tolist()) if flag))


def raise_bad_index(found: bool, n_markers: int) -> None:
    """The backward gathers markers by the winner map: a value outside [0, N) is an error."""
    if found:
        raise ValueError(f"splat_backward: index holds values outside [0, {n_markers})")
