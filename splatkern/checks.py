"""The checks splat_render's Python code runs, each written once: the layout checks that the wrapper,
the fake kernels and the Triton launchers share, and the value checks' errors (their texts are in
splatkern/facts.py, which the C++ kernels share).

Layout checks read shapes, dtypes and devices only, so ``torch.compile`` keeps them.

The kernels check values where they read them and report a word of flaw bits (``facts.FLAW_BIT``),
so a call costs one host sync for its checks and no extra pass over the inputs; the reference
backend computes the same bits with torch ops.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import math

from splatkern.facts import (
    BAD_INDEX,
    BAD_TEMPERATURE,
    COMPOSITES,
    FLAW_BIT,
    FLAW_MESSAGES,
    INDEX_NEEDS_MAX,
    SOFT_STATE_PLANES,
    UNIT_AMP_COMPOSITES,
    UNKNOWN_COMPOSITE,
)

__all__ = [
    "check_backward_layout",
    "check_canvas",
    "check_composite",
    "check_markers",
    "check_values",
    "compute_dtype",
    "raise_bad_index",
    "raise_marker_flaws",
]

# The dtypes the kernels compute in; float16 and bfloat16 inputs are computed in float32 (the contract).
KERNEL_DTYPES = (torch.float32, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a floating input of ``dtype`` is computed in."""
    return dtype if dtype in KERNEL_DTYPES else torch.float32


def _refuse(cond, error: type[Exception], text: str, got: Callable[[], object]) -> None:
    """For a check whose ``cond`` is not plainly True: raises ``error(f"{text}, got {got()}")`` for
    False. A symbolic ``cond`` (sizes under torch.compile) becomes an assertion checked when the graph
    runs, with ``text`` alone: a branch on it would add a guard, and torch.compile takes only
    constants into the message. Callers test ``cond is not True`` first, so that passing checks
    build no message."""
    if cond is False:
        raise error(f"{text}, got {got()}")
    torch._check_with(error, cond, lambda: text)


def check_markers(means, sigmas, amps, *, flat: bool = False) -> None:
    """means ``[..., N, 2]``, sigmas and amps ``[..., N]``: tensors of one floating dtype on one device.

    ``flat=True`` checks what the fused kernels take: one batch dim (``[B, N, 2]``) and float32 or
    float64, which splat_render makes of any batch shape and floating dtype.
    """
    for name, tensor in (("means", means), ("sigmas", sigmas), ("amps", amps)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"splat_render: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.dtype.is_floating_point:
            raise TypeError(f"splat_render: {name} must be a floating-point tensor, got {tensor.dtype}")
    batch = "B" if flat else "..."
    if (cond := (means.dim() == 3 if flat else means.dim() >= 2) and means.shape[-1] == 2) is not True:
        _refuse(cond, ValueError, f"splat_render: means must have shape [{batch}, N, 2]", lambda: list(means.shape))
    if (cond := sigmas.shape == means.shape[:-1]) is not True:
        _refuse(cond, ValueError, f"splat_render: sigmas must have shape [{batch}, N] to match means",
                lambda: f"{list(sigmas.shape)} for means {list(means.shape)}")
    if (cond := amps.shape == sigmas.shape) is not True:
        _refuse(cond, ValueError, f"splat_render: amps must have shape [{batch}, N] to match means",
                lambda: f"{list(amps.shape)} for sigmas {list(sigmas.shape)}")
    if not (means.dtype == sigmas.dtype == amps.dtype):
        raise TypeError(
            f"splat_render: means, sigmas and amps must share one dtype, got {means.dtype}, {sigmas.dtype}, {amps.dtype}"
        )
    if flat and means.dtype not in KERNEL_DTYPES:
        raise TypeError(f"splat_render: the kernels take float32 or float64 means, got {means.dtype}")
    if not (means.device == sigmas.device == amps.device):
        raise ValueError(
            f"splat_render: means, sigmas and amps must be on one device, got {means.device}, {sigmas.device}, {amps.device}"
        )


def check_canvas(height, width) -> None:
    """height and width: ints >= 1."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
            raise TypeError(f"splat_render: {name} must be an int, got {type(value).__name__}")
        if (cond := value >= 1) is not True:
            _refuse(cond, ValueError, f"splat_render: {name} must be >= 1", lambda value=value: value)


def check_composite(composite, temperature, return_index: bool = False) -> None:
    """composite: one of ``facts.COMPOSITES``; temperature: a finite number > 0; return_index only
    with ``"max"``. Plain Python values, so these checks cost nothing under ``torch.compile``."""
    if composite not in COMPOSITES:
        raise ValueError(f"{UNKNOWN_COMPOSITE}, got {composite!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{BAD_TEMPERATURE}, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{BAD_TEMPERATURE}, got {temperature!r}")
    if return_index and composite != "max":
        raise ValueError(f"{INDEX_NEEDS_MAX}, got composite={composite!r}")


def check_backward_layout(grad_image, means, sigmas, amps, saved, composite: str = "max") -> None:
    """The backward's inputs: the forward's flat markers, grad_image ``[B, H, W]`` of their dtype and
    what the forward saved (csrc/splat.cpp): for ``"max"`` the int32 winner map ``index`` of
    grad_image's shape, for the other modes their state ``[B, SOFT_STATE_PLANES, H, W]`` of the
    markers' dtype; all on one device."""
    check_markers(means, sigmas, amps, flat=True)
    if (cond := grad_image.dim() == 3 and grad_image.shape[0] == means.shape[0]) is not True:
        _refuse(cond, ValueError, "splat_backward: grad_image must have shape [B, H, W]",
                lambda: f"{list(grad_image.shape)} for means {list(means.shape)}")
    if grad_image.dtype != means.dtype:
        raise TypeError(f"splat_backward: grad_image must have the dtype of means, got {grad_image.dtype}")
    if not (grad_image.device == saved.device == means.device):
        raise ValueError(
            f"splat_backward: grad_image and the saved {'index' if composite == 'max' else 'state'} must be on the "
            f"markers' device, got {grad_image.device}, {saved.device}, {means.device}"
        )
    if composite != "max":
        state_shape = (means.shape[0], SOFT_STATE_PLANES, *grad_image.shape[1:])
        if (cond := saved.shape == state_shape) is not True:
            _refuse(cond, ValueError, f"splat_backward: the soft state must have shape [B, {SOFT_STATE_PLANES}, H, W]",
                    lambda: f"{list(saved.shape)} for grad_image {list(grad_image.shape)}")
        if saved.dtype != means.dtype:
            raise TypeError(f"splat_backward: the soft state must have the dtype of means, got {saved.dtype}")
        return
    index = saved
    if (cond := index.shape == grad_image.shape) is not True:
        _refuse(cond, ValueError, "splat_backward: index must have the shape of grad_image",
                lambda: f"{list(index.shape)} for grad_image {list(grad_image.shape)}")
    if index.dtype != torch.int32:
        raise TypeError(f"splat_backward: index must be int32, got {index.dtype}")


def raise_marker_flaws(flaws: int) -> None:
    """Raise the ValueError of the first flaw bit set in ``flaws``; 0 passes."""
    for bit, message in enumerate(FLAW_MESSAGES):
        if flaws >> bit & 1:
            raise ValueError(message)


def check_values(means: torch.Tensor, sigmas: torch.Tensor, amps: torch.Tensor, composite: str = "max") -> None:
    """The reference backend's value checks: torch reductions read back with one host sync."""
    found = {
        "means_nonfinite": ~torch.isfinite(means).all(),
        "sigmas_nonfinite": ~torch.isfinite(sigmas).all(),
        "sigmas_nonpositive": ~(sigmas > 0).all(),
        "amps_nonfinite": ~torch.isfinite(amps).all(),
    }
    if composite in UNIT_AMP_COMPOSITES:  # NaN passes here: amps_nonfinite reports it first
        found["amps_outside_unit"] = ((amps < 0) | (amps > 1)).any()
    flags = torch.stack(list(found.values())).tolist()
    raise_marker_flaws(sum(FLAW_BIT[name] for name, flag in zip(found, flags, strict=True) if flag))


def raise_bad_index(found: bool, n_markers: int) -> None:
    """The backward gathers markers by the winner map: a value outside [0, N) is an error."""
    if found:
        raise ValueError(BAD_INDEX.format(n_markers=n_markers))
