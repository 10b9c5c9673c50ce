"""The public ops: argument checks, backend choice, and their torch.library registrations.

``splat_render`` and ``stroke_render`` check what can be checked from shapes, dtypes and devices
(static, so ``torch.compile`` keeps it), flatten the batch, and hand contiguous float32/float64
tensors to one backend. Value checks (finite inputs, sigmas > 0) run inside the backend's op, where
``torch.compile`` cannot drop them. The math itself is stated once per op, in ``reference.py`` and
``stroke_reference.py``. Both ops' fused kernels share one signature (coordinates, sigmas, amps,
height, width, deterministic, composite, temperature), so one autograd rule serves both.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from splatkern import _extension
from splatkern.checks import (
    check_backward_layout,
    check_canvas,
    check_composite,
    check_markers,
    check_strokes,
    check_values,
    compute_dtype,
)
from splatkern.facts import NO_DOUBLE_BACKWARD, SOFT_STATE_PLANES, STROKE_FLAW_MESSAGES
from splatkern.reference import splat_render_reference
from splatkern.stroke_reference import stroke_render_reference

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
# "auto" takes the first available backend for the tensors' device: the fastest in the benchmarks
# (docs/performance.md).
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


def backend_candidates(device_type: str) -> tuple[str, ...]:
    """The backends that may run on ``device_type`` tensors, in "auto"'s order, triton last: Triton on
    CPU tensors (its interpreter) is selectable by name, never "auto"'s choice."""
    return tuple(dict.fromkeys((*AUTO_ORDER.get(device_type, ("reference",)), "triton")))


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """The backends that can run on `device` in this installation, in "auto"'s order of preference."""
    return list(_available_backends(torch.device(device).type))


# Fixed for the process: the extension loads once, and TRITON_INTERPRET works only when set before
# triton is imported.
_AVAILABLE: dict[str, tuple[str, ...]] = {}


# A constant to torch.compile: traced, a cached function warns the user (functools.cache) or adds
# guards on the cache (a dict).
@torch.compiler.assume_constant_result
def _available_backends(device_type: str) -> tuple[str, ...]:
    if device_type not in _AVAILABLE:
        _AVAILABLE[device_type] = tuple(name for name in backend_candidates(device_type)
                                        if _extension.missing_reason(name, device_type) is None)
    return _AVAILABLE[device_type]


# --- torch.library registrations: one forward/backward op pair per fused backend ------------------


def _fakes(check_primitives, op: str) -> tuple[Callable, Callable]:
    """The fake (meta) forward and backward of an op whose primitives ``check_primitives`` checks."""

    def fake_forward(points, sigmas, amps, height, width, deterministic, composite="max", temperature=1.0):
        check_primitives(points, sigmas, amps, flat=True)
        check_canvas(height, width, op)
        check_composite(composite, temperature, op=op)
        batch = points.shape[0]
        if composite == "max":  # the winner map
            return points.new_empty(batch, height, width), points.new_empty(batch, height, width, dtype=torch.int32)
        return points.new_empty(batch, height, width), points.new_empty(batch, SOFT_STATE_PLANES, height, width)

    def fake_backward(grad_image, points, sigmas, amps, saved, deterministic, composite="max", temperature=1.0):
        check_backward_layout(grad_image, points, sigmas, amps, saved, composite, strokes=op == "stroke_render")
        return torch.empty_like(points), torch.empty_like(sigmas), torch.empty_like(amps)

    return fake_forward, fake_backward


_MARKER_FAKES = _fakes(check_markers, "splat_render")
_STROKE_FAKES = _fakes(check_strokes, "stroke_render")


def _register_fakes(forward_op: str, backward_op: str, fakes: tuple[Callable, Callable] = _MARKER_FAKES) -> None:
    torch.library.register_fake(forward_op)(fakes[0])
    torch.library.register_fake(backward_op)(fakes[1])


# The autograd rule of a fused forward: the image's gradient goes through the analytic backward, which
# has no derivative itself. The rule is written once (the three functions below, and its C++ twin in
# csrc/splat_autograd.cpp) and takes four forms, each used where it alone works at full speed:
# - C++ autograd: the C++ ops, eager and compiled, with no Python on the path.
# - torch.library.register_autograd on the Triton custom ops: what torch.compile and opcheck see.
# - _FusedRender, a ctx-form autograd.Function: eager Triton calls, without the custom ops' dispatch.
# - _FusedRenderForFunc, its setup_context form: the only form torch.func transforms accept; eager
#   calls avoid it because Function.apply binds its arguments with inspect.signature on every call.


def _setup_context(ctx, inputs, output) -> None:
    means, sigmas, amps, _height, _width, deterministic, composite, temperature = inputs
    _image, saved = output
    ctx.save_for_backward(means, sigmas, amps, saved)
    ctx.deterministic, ctx.composite, ctx.temperature = deterministic, composite, temperature
    ctx.mark_non_differentiable(saved)
    # Otherwise autograd zero-fills a gradient for `saved` on every backward.
    ctx.set_materialize_grads(False)


def _forward_gradients(ctx, grad_image, backward_op) -> tuple:
    if grad_image is None:  # grads are not materialised; the image took no part in the loss
        return (None,) * 8
    means, sigmas, amps, saved = ctx.saved_tensors
    grads = backward_op(grad_image.contiguous(), means, sigmas, amps, saved, ctx.deterministic, ctx.composite,
                        ctx.temperature)
    return (*grads, None, None, None, None, None)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError(NO_DOUBLE_BACKWARD)


if _extension.LOAD_ERROR is None:
    _register_fakes("splatkern::splat_forward", "splatkern::splat_backward")
    _register_fakes("splatkern::stroke_forward", "splatkern::stroke_backward", _STROKE_FAKES)


# The fused kernels as callables, without autograd, in the argument order of the C++ schema
# (csrc/splat.cpp): (means, sigmas, amps, height, width, deterministic, composite, temperature) ->
# (image, saved) and (grad_image, means, sigmas, amps, saved, deterministic, composite, temperature)
# -> grads.


@dataclass(frozen=True)
class _Kernels:
    forward: Callable
    backward: Callable


def _triton_kernels(module: str) -> _Kernels:
    """The Triton kernels of splatkern.<module> (triton_kernels: markers; triton_strokes: strokes),
    imported on first use: only then is triton imported."""

    def forward(points, sigmas, amps, height, width, deterministic, composite, temperature):
        kernels = importlib.import_module(f"splatkern.{module}")
        return kernels.forward(points, sigmas, amps, height, width, composite=composite, temperature=temperature)

    def backward(grad_image, points, sigmas, amps, saved, deterministic, composite, temperature):
        kernels = importlib.import_module(f"splatkern.{module}")
        return kernels.backward(grad_image, points, sigmas, amps, saved, deterministic, composite=composite,
                                temperature=temperature)

    return _Kernels(forward, backward)


# Looked up per call: the ops exist only when the extension loaded.
_CPP_KERNELS = _Kernels(lambda *args: torch.ops.splatkern.splat_forward(*args),
                        lambda *args: torch.ops.splatkern.splat_backward(*args))  # fmt: skip
_CPP_STROKE_KERNELS = _Kernels(lambda *args: torch.ops.splatkern.stroke_forward(*args),
                               lambda *args: torch.ops.splatkern.stroke_backward(*args))  # fmt: skip


@dataclass(frozen=True)
class _TritonOps:
    """One op's Triton kernels (called directly by eager code) and their custom-op pair (what
    torch.compile sees: an opaque op with a fake kernel, so the value checks' host sync stays inside
    it)."""

    kernels: _Kernels
    forward: Callable
    backward: Callable


def _triton_ops(primitive: str, module: str, fakes: tuple[Callable, Callable]) -> _TritonOps:
    """Defines splatkern::<primitive>_forward_triton and _backward_triton on splatkern.<module>'s
    kernels, with their fakes and autograd."""
    kernels = _triton_kernels(module)

    def forward(
        points: torch.Tensor,
        sigmas: torch.Tensor,
        amps: torch.Tensor,
        height: int,
        width: int,
        deterministic: bool,
        composite: str = "max",
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return kernels.forward(points, sigmas, amps, height, width, deterministic, composite, temperature)

    def backward(
        grad_image: torch.Tensor,
        points: torch.Tensor,
        sigmas: torch.Tensor,
        amps: torch.Tensor,
        saved: torch.Tensor,
        deterministic: bool,
        composite: str = "max",
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return kernels.backward(grad_image, points, sigmas, amps, saved, deterministic, composite, temperature)

    forward_name, backward_name = f"splatkern::{primitive}_forward_triton", f"splatkern::{primitive}_backward_triton"
    forward_op = torch.library.custom_op(forward_name, forward, mutates_args=())
    backward_op = torch.library.custom_op(backward_name, backward, mutates_args=())
    _register_fakes(forward_name, backward_name, fakes)
    torch.library.register_autograd(
        forward_name,
        lambda ctx, grad_image, _grad_saved: _forward_gradients(ctx, grad_image, backward_op),
        setup_context=_setup_context,
    )
    # Without it a double backward would run and be silently wrong, with only a warning.
    torch.library.register_autograd(backward_name, _no_double_backward, setup_context=lambda ctx, inputs, output: None)
    return _TritonOps(kernels, forward_op, backward_op)


_TRITON = _triton_ops("splat", "triton_kernels", _MARKER_FAKES)
_TRITON_STROKES = _triton_ops("stroke", "triton_strokes", _STROKE_FAKES)


class _FusedBackward(torch.autograd.Function):
    """A fused backward as an autograd node whose own backward refuses (setup_context form, for torch.func)."""

    @staticmethod
    def forward(grad_image, means, sigmas, amps, saved, deterministic, composite, temperature, kernels):
        return kernels.backward(grad_image, means, sigmas, amps, saved, deterministic, composite, temperature)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    backward = staticmethod(_no_double_backward)


def _fused_gradients(ctx, grad_image, _grad_saved) -> tuple:
    kernels = ctx.kernels
    if torch.is_grad_enabled():  # the backward is recorded (create_graph=True; always under torch.func)
        grads = _forward_gradients(ctx, grad_image, lambda *args: _FusedBackward.apply(*args, kernels))
    else:  # nothing can differentiate it: no node needed
        grads = _forward_gradients(ctx, grad_image, kernels.backward)
    return (*grads, None)


class _FusedRender(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, sigmas, amps, height, width, deterministic, composite, temperature, kernels):
        inputs = (means, sigmas, amps, height, width, deterministic, composite, temperature)
        output = kernels.forward(*inputs)
        _setup_context(ctx, inputs, output)
        ctx.kernels = kernels
        return output

    backward = staticmethod(_fused_gradients)


class _FusedRenderForFunc(_FusedRender):
    @staticmethod
    def forward(means, sigmas, amps, height, width, deterministic, composite, temperature, kernels):
        return kernels.forward(means, sigmas, amps, height, width, deterministic, composite, temperature)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs[:-1], output)
        ctx.kernels = inputs[-1]


def _fused_forward(backend: str, strokes: bool = False) -> Callable:
    """How an op calls a fused backend's forward: (coordinates, sigmas, amps, height, width,
    deterministic, composite, temperature) -> (image, saved), differentiable; ``strokes`` picks
    stroke_render's kernels. torch.compile sees the ops themselves."""
    cpp_op = torch.ops.splatkern.stroke_forward if strokes else torch.ops.splatkern.splat_forward
    triton_ops = _TRITON_STROKES if strokes else _TRITON
    if torch.compiler.is_compiling():
        return triton_ops.forward if backend == "triton" else cpp_op
    if torch._C._are_functorch_transforms_active():
        kernels = triton_ops.kernels if backend == "triton" else _CPP_STROKE_KERNELS if strokes else _CPP_KERNELS
        return lambda *args: _FusedRenderForFunc.apply(*args, kernels)
    if backend == "triton":
        return lambda *args: _FusedRender.apply(*args, triton_ops.kernels)
    return cpp_op


# --- the public entry -----------------------------------------------------------------------------


def _check_arguments(op, height, width, composite, temperature, return_index, backend) -> None:
    check_canvas(height, width, op)
    check_composite(composite, temperature, return_index, op)
    if backend not in BACKENDS:
        raise ValueError(f"{op}: unknown backend {backend!r}; choose one of {BACKENDS}")


def _pick_backend(backend: str, device: torch.device, op: str = "splat_render") -> str:
    available = _available_backends(device.type)
    if backend == "auto":
        # Warning is eager-only: traced, it would become part of the compiled graph.
        if _extension.LOAD_ERROR is not None and not torch.compiler.is_compiling():
            _extension.warn_fallback(available[0])
        return available[0]
    if backend not in available:
        raise ValueError(
            f"{op}: backend {backend!r} is not available for {device.type} tensors here; "
            f"available: {list(available)} ({_extension.missing_reason(backend, device.type)})"
        )
    return backend


def splat_render(
    means: torch.Tensor,
    sigmas: torch.Tensor,
    amps: torch.Tensor | None = None,
    *,
    height: int,
    width: int,
    composite: str = "max",
    temperature: float = 1.0,
    backend: str = "auto",
    return_index: bool = False,
    deterministic: bool | None = None,
):
    """Draw Gaussian markers and composite them per pixel: the contract is
    :func:`splatkern.reference.splat_render_reference`'s docstring.

    Args:
        means: ``[..., N, 2]`` marker centres ``(x, y)`` in pixels (pixel ``(i, j)`` is at ``x=j, y=i``).
        sigmas: ``[..., N]`` standard deviations in pixels, ``> 0``.
        amps: ``[..., N]`` intensities; ``None`` means 1.
        height, width: the canvas size in pixels.
        composite: how a pixel's marker values ``v_n`` combine: ``"max"`` (the default), ``"softor"``
            (``1 - prod(1 - v)``), ``"over"`` (marker 0 in front) or ``"smoothmax"`` (softmax-weighted
            mean). ``"softor"`` and ``"over"`` need ``0 <= amps <= 1``.
        temperature: the softmax temperature of ``"smoothmax"``, a finite number ``> 0``.
        backend: ``"auto"`` (the fastest available for the device), ``"reference"``, ``"cpu"``,
            ``"cuda"`` or ``"triton"``; :func:`available_backends` lists what this install has.
        return_index: also return the int32 winner map ``[..., H, W]`` (``-1`` where N = 0);
            ``"max"`` only.
        deterministic: bit-reproducible backward on GPU backends; ``None`` follows
            ``torch.are_deterministic_algorithms_enabled()``. The CPU kernel is always deterministic.

    float32 and float64 are computed natively; float16 and bfloat16 in float32, returned in the
    input dtype. Bad input raises ``TypeError`` / ``ValueError`` naming the argument.
    """
    if amps is None and isinstance(sigmas, torch.Tensor):
        amps = torch.ones_like(sigmas)
    check_markers(means, sigmas, amps)
    return _render("splat_render", means, sigmas, amps, height, width, composite, temperature, backend,
                   return_index, deterministic)


def stroke_render(
    paths: torch.Tensor,
    sigmas: torch.Tensor,
    amps: torch.Tensor | None = None,
    *,
    height: int,
    width: int,
    composite: str = "max",
    temperature: float = 1.0,
    backend: str = "auto",
    return_index: bool = False,
    deterministic: bool | None = None,
):
    """Draw polyline pen strokes whose width and intensity vary along them, and composite them per
    pixel: the contract is :func:`splatkern.stroke_reference.stroke_render_reference`'s docstring.

    Args:
        paths: ``[..., S, P, 2]`` the vertices ``(x, y)`` of ``S`` strokes of ``P >= 1`` vertices, in
            pixels (pixel ``(i, j)`` is at ``x=j, y=i``); segment ``k`` joins vertices ``k`` and ``k + 1``.
        sigmas: ``[..., S, P]`` the width (a standard deviation in pixels, ``> 0``) at each vertex,
            linear along each segment.
        amps: ``[..., S, P]`` the intensity at each vertex, linear along each segment; ``None`` means 1.
        height, width: the canvas size in pixels.
        composite: how a pixel's stroke values combine, as in :func:`splatkern.splat_render` (each
            stroke playing a marker's part; ``"over"``: stroke 0 in front). A stroke's value is the max
            over its segments.
        temperature: the softmax temperature of ``"smoothmax"``, a finite number ``> 0``.
        backend: ``"auto"``, ``"reference"`` or a fused backend that draws strokes (``"cpu"``,
            ``"cuda"``, ``"triton"``).
        return_index: also return the int32 winner map ``[..., H, W]`` of ``s * max(P - 1, 1) + k``
            (stroke ``s``, its segment ``k``; ``-1`` where S = 0); ``"max"`` only.
        deterministic: as in :func:`splatkern.splat_render`.

    float32 and float64 are computed natively; float16 and bfloat16 in float32, returned in the
    input dtype. Bad input raises ``TypeError`` / ``ValueError`` naming the argument.
    """
    if amps is None and isinstance(sigmas, torch.Tensor):
        amps = torch.ones_like(sigmas)
    check_strokes(paths, sigmas, amps)
    return _render("stroke_render", paths, sigmas, amps, height, width, composite, temperature, backend,
                   return_index, deterministic)


def _render(op, points, sigmas, amps, height, width, composite, temperature, backend, return_index, deterministic):
    """Both ops past their primitives' checks: the other checks, the backend, the flat batch, the call."""
    _check_arguments(op, height, width, composite, temperature, return_index, backend)
    temperature = float(temperature)
    strokes = op == "stroke_render"
    chosen = _pick_backend(backend, points.device, op)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()

    primitive_shape = sigmas.shape[-2:] if strokes else sigmas.shape[-1:]  # (S, P) or (N,)
    dtype, batch_shape = points.dtype, sigmas.shape[: sigmas.dim() - len(primitive_shape)]
    if len(batch_shape) != 1:  # else as is: each reshape would add a view and an autograd node
        batch = math.prod(batch_shape)
        points = points.reshape(batch, *primitive_shape, 2)
        sigmas, amps = sigmas.reshape(batch, *primitive_shape), amps.reshape(batch, *primitive_shape)
    computed_in = compute_dtype(dtype)
    # (`.to` dispatches even to the same dtype: skipped where it would do nothing)
    flat_points, flat_sigmas, flat_amps = (
        (t if t.dtype == computed_in else t.to(computed_in)).contiguous() for t in (points, sigmas, amps)
    )

    if chosen == "reference":
        if not torch.compiler.is_compiling():  # data-dependent: compiled code skips it
            check_values(flat_points, flat_sigmas, flat_amps, composite,
                         *((STROKE_FLAW_MESSAGES,) if strokes else ()))
        reference = stroke_render_reference if strokes else splat_render_reference
        image, index = reference(flat_points, flat_sigmas, flat_amps, height, width, composite, temperature)
    else:
        image, index = _fused_forward(chosen, strokes)(flat_points, flat_sigmas, flat_amps, height, width,
                                                       deterministic, composite, temperature)

    if len(batch_shape) != 1:
        image = image.reshape(*batch_shape, height, width)
        if return_index:
            index = index.reshape(*batch_shape, height, width)
    if image.dtype != dtype:
        image = image.to(dtype)
    return (image, index) if return_index else image
