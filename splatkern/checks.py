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
    "check_strokes",
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


def _check_primitives(op: str, names: tuple[str, str, str], points, sigmas, amps, *, flat: bool,
                      point_dims: str) -> None:
    """What every op takes: a coordinates tensor ``[..., *point_dims, 2]`` and sigmas and amps
    ``[..., *point_dims]``, of one floating dtype on one device; ``flat=True`` is what the fused
    kernels take: one batch dim ``B`` and float32 or float64."""
    for name, tensor in zip(names, (points, sigmas, amps), strict=True):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.dtype.is_floating_point:
            raise TypeError(f"{op}: {name} must be a floating-point tensor, got {tensor.dtype}")
    batch = "B" if flat else "..."
    n_dims = len(point_dims.split(", "))
    shape = f"[{batch}, {point_dims}"
    if (cond := (points.dim() == n_dims + 2 if flat else points.dim() >= n_dims + 1) and points.shape[-1] == 2) is not True:
        _refuse(cond, ValueError, f"{op}: {names[0]} must have shape {shape}, 2]", lambda: list(points.shape))
    if (cond := sigmas.shape == points.shape[:-1]) is not True:
        _refuse(cond, ValueError, f"{op}: sigmas must have shape {shape}] to match {names[0]}",
                lambda: f"{list(sigmas.shape)} for {names[0]} {list(points.shape)}")
    if (cond := amps.shape == sigmas.shape) is not True:
        _refuse(cond, ValueError, f"{op}: amps must have shape {shape}] to match {names[0]}",
                lambda: f"{list(amps.shape)} for sigmas {list(sigmas.shape)}")
    if not (points.dtype == sigmas.dtype == amps.dtype):
        raise TypeError(f"{op}: {names[0]}, sigmas and amps must share one dtype, got {points.dtype}, "
                        f"{sigmas.dtype}, {amps.dtype}")
    if flat and points.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{op}: the kernels take float32 or float64 {names[0]}, got {points.dtype}")
    if not (points.device == sigmas.device == amps.device):
        raise ValueError(f"{op}: {names[0]}, sigmas and amps must be on one device, got {points.device}, "
                         f"{sigmas.device}, {amps.device}")


def check_markers(means, sigmas, amps, *, flat: bool = False) -> None:
    """means ``[..., N, 2]``, sigmas and amps ``[..., N]``: tensors of one floating dtype on one device.

    ``flat=True`` checks what the fused kernels take: one batch dim (``[B, N, 2]``) and float32 or
    float64, which splat_render makes of any batch shape and floating dtype.
    """
    _check_primitives("splat_render", ("means", "sigmas", "amps"), means, sigmas, amps, flat=flat, point_dims="N")


def check_strokes(paths, sigmas, amps, *, flat: bool = False) -> None:
    """paths ``[..., S, P, 2]`` with ``P >= 1``, sigmas and amps ``[..., S, P]``, as check_markers."""
    _check_primitives("stroke_render", ("paths", "sigmas", "amps"), paths, sigmas, amps, flat=flat,
                      point_dims="S, P")
    if (cond := paths.shape[-2] >= 1) is not True:
        _refuse(cond, ValueError, "stroke_render: paths must have P >= 1 vertices per stroke",
                lambda: list(paths.shape))


def check_canvas(height, width, op: str = "splat_render") -> None:
    """height and width: ints >= 1."""
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
            raise TypeError(f"{op}: {name} must be an int, got {type(value).__name__}")
        if (cond := value >= 1) is not True:
            _refuse(cond, ValueError, f"{op}: {name} must be >= 1", lambda value=value: value)


def check_composite(composite, temperature, return_index: bool = False, op: str = "splat_render") -> None:
    """composite: one of ``facts.COMPOSITES``; temperature: a finite number > 0; return_index only
    with ``"max"``. Plain Python values, so these checks cost nothing under ``torch.compile``."""
    if composite not in COMPOSITES:
        raise ValueError(f"{op}: {UNKNOWN_COMPOSITE}, got {composite!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise TypeError(f"{op}: {BAD_TEMPERATURE}, got {type(temperature).__name__}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"{op}: {BAD_TEMPERATURE}, got {temperature!r}")
    if return_index and composite != "max":
        raise ValueError(f"{op}: {INDEX_NEEDS_MAX}, got composite={composite!r}")


def check_backward_layout(grad_image, means, sigmas, amps, saved, composite: str = "max", *,
                          strokes: bool = False) -> None:
    """The backward's inputs: the forward's flat primitives (markers, or strokes with ``strokes=True``),
    grad_image ``[B, H, W]`` of their dtype and what the forward saved (csrc/splat.cpp): for ``"max"``
    the int32 winner map ``index`` of grad_image's shape, for the other modes their state
    ``[B, SOFT_STATE_PLANES, H, W]`` of the primitives' dtype; all on one device."""
    op = "stroke_backward" if strokes else "splat_backward"
    (check_strokes if strokes else check_markers)(means, sigmas, amps, flat=True)
    if (cond := grad_image.dim() == 3 and grad_image.shape[0] == means.shape[0]) is not True:
        _refuse(cond, ValueError, f"{op}: grad_image must have shape [B, H, W]",
                lambda: f"{list(grad_image.shape)} for {'paths' if strokes else 'means'} {list(means.shape)}")
    if grad_image.dtype != means.dtype:
        raise TypeError(f"{op}: grad_image must have the dtype of {'paths' if strokes else 'means'}, "
                        f"got {grad_image.dtype}")
    if not (grad_image.device == saved.device == means.device):
        raise ValueError(
            f"{op}: grad_image and the saved {'index' if composite == 'max' else 'state'} must be on the "
            f"primitives' device, got {grad_image.device}, {saved.device}, {means.device}"
        )
    if composite != "max":
        state_shape = (means.shape[0], SOFT_STATE_PLANES, *grad_image.shape[1:])
        if (cond := saved.shape == state_shape) is not True:
            _refuse(cond, ValueError, f"{op}: the soft state must have shape [B, {SOFT_STATE_PLANES}, H, W]",
                    lambda: f"{list(saved.shape)} for grad_image {list(grad_image.shape)}")
        if saved.dtype != means.dtype:
            raise TypeError(f"{op}: the soft state must have the dtype of the primitives, got {saved.dtype}")
        return
    index = saved
    if (cond := index.shape == grad_image.shape) is not True:
        _refuse(cond, ValueError, f"{op}: index must have the shape of grad_image",
                lambda: f"{list(index.shape)} for grad_image {list(grad_image.shape)}")
    if index.dtype != torch.int32:
        raise TypeError(f"{op}: index must be int32, got {index.dtype}")


def raise_marker_flaws(flaws: int, messages: tuple[str, ...] = FLAW_MESSAGES) -> None:
    """Raise the ValueError of the first flaw bit set in ``flaws`` (its text from ``messages``, the
    op's: ``facts.FLAW_MESSAGES`` or ``facts.STROKE_FLAW_MESSAGES``); 0 passes."""
    for bit, message in enumerate(messages):
        if flaws >> bit & 1:
            raise ValueError(message)


def check_values(means: torch.Tensor, sigmas: torch.Tensor, amps: torch.Tensor, composite: str = "max",
                 messages: tuple[str, ...] = FLAW_MESSAGES) -> None:
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
    raise_marker_flaws(sum(FLAW_BIT[name] for name, flag in zip(found, flags, strict=True) if flag), messages)


def raise_bad_index(found: bool, n_markers: int, backward: str = "splat_backward") -> None:
    """The backward gathers markers (or segments) by the winner map: a value outside [0, N) is an error,
    in the words of the ``backward`` op."""
    if found:
        raise ValueError(f"{backward}: {BAD_INDEX.format(n_markers=n_markers)}")
