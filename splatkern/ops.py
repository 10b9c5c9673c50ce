"""The public op: argument checks, backend choice, and its torch.library registrations.

``splat_render`` checks what can be checked from shapes, dtypes and devices (static, so
``torch.compile`` keeps it), flattens the batch, and hands contiguous float32/float64 tensors to
one backend. Value checks (finite inputs, sigmas > 0) run inside the backend's op, where
``torch.compile`` cannot drop them. The math itself is stated once, in ``reference.py``.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from splatkern import _extension
from splatkern.checks import NO_DOUBLE_BACKWARD, check_values
from splatkern.reference import splat_render_reference

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")
# "auto" takes the first available backend for the tensors' device. On CUDA, measured on an H100
# (bench/results/NVIDIA-H100-80GB-HBM3/gpu): `cuda` is 1.5-3.5x faster than `triton` at every size measured.
AUTO_ORDER = {"cpu": ("cpu", "reference"), "cuda": ("cuda", "triton", "reference")}


# Read once at import: TRITON_INTERPRET only works when set before triton is imported anyway.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_TRITON_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _triton_usable(device_type: str) -> bool:
    if not _TRITON_INSTALLED:
        return False
    if device_type == "cuda":
        return torch.cuda.is_available()
    # The Triton interpreter runs kernels on CPU tensors: how the Triton code is tested without a GPU.
    return _TRITON_INTERPRETED


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """The backends that can run on `device` in this installation, in "auto"'s order of preference."""
    return list(_available_backends(torch.device(device).type))


# Fixed for the process: the extension, triton and TRITON_INTERPRET are read at import.
_AVAILABLE: dict[str, tuple[str, ...]] = {}


# A constant to torch.compile: traced, a cached function warns the user (functools.cache) or adds
# guards on the cache (a dict).
@torch.compiler.assume_constant_result
def _available_backends(device_type: str) -> tuple[str, ...]:
    if device_type not in _AVAILABLE:
        usable = {
            "reference": True,
            "cpu": device_type == "cpu" and "CPU" in _extension.KERNEL_KEYS,
            "cuda": device_type == "cuda" and "CUDA" in _extension.KERNEL_KEYS,
            "triton": _triton_usable(device_type),
        }
        order = AUTO_ORDER.get(device_type, ("reference",))
        # Triton on CPU tensors (interpreter) is selectable by name, never "auto"'s choice.
        _AVAILABLE[device_type] = tuple(name for name in dict.fromkeys((*order, "triton")) if usable[name])
    return _AVAILABLE[device_type]


# --- torch.library registrations: one forward/backward op pair per fused backend ------------------


def _fake_forward(means, sigmas, amps, height, width, deterministic):
    torch._check(means.dim() == 3 and means.shape[2] == 2, lambda: "splat_forward: means must be [B, N, 2]")
    torch._check(sigmas.shape == means.shape[:2], lambda: "splat_forward: sigmas must be [B, N]")
    torch._check(amps.shape == sigmas.shape, lambda: "splat_forward: amps must be [B, N]")
    batch = means.shape[0]
    return means.new_empty(batch, height, width), means.new_empty(batch, height, width, dtype=torch.int32)


def _fake_backward(grad_image, means, sigmas, amps, index, deterministic):
    torch._check(index.shape == grad_image.shape, lambda: "splat_backward: index must match grad_image")
    return torch.empty_like(means), torch.empty_like(sigmas), torch.empty_like(amps)


def _register_fakes(forward_op: str, backward_op: str) -> None:
    torch.library.register_fake(forward_op)(_fake_forward)
    torch.library.register_fake(backward_op)(_fake_backward)


# The autograd rule of a fused forward, once for both ways the Triton ops are called (the C++ ops have
# the same rule in C++, csrc/splat_autograd.cpp): the image's gradient goes through the analytic
# backward op, which has no derivative itself.


def _setup_context(ctx, inputs, output) -> None:
    means, sigmas, amps, _height, _width, deterministic = inputs
    _image, index = output
    ctx.save_for_backward(means, sigmas, amps, index)
    ctx.deterministic = deterministic
    ctx.mark_non_differentiable(index)
    # Otherwise autograd zero-fills a [B, H, W] int32 gradient for `index` on every backward.
    ctx.set_materialize_grads(False)


def _forward_gradients(ctx, grad_image, backward_op) -> tuple:
    if grad_image is None:  # grads are not materialised; the image took no part in the loss
        return None, None, None, None, None, None
    means, sigmas, amps, index = ctx.saved_tensors
    grads = backward_op(grad_image.contiguous(), means, sigmas, amps, index, ctx.deterministic)
    return (*grads, None, None, None)


def _no_double_backward(ctx, *grads):
    raise NotImplementedError(NO_DOUBLE_BACKWARD)


def _register_autograd(forward_op: str, backward_op) -> None:
    torch.library.register_autograd(
        forward_op, lambda ctx, grad_image, _grad_index: _forward_gradients(ctx, grad_image, backward_op),
        setup_context=_setup_context,
    )  # fmt: skip
    # Without it a double backward would run and be silently wrong, with only a warning.
    torch.library.register_autograd(backward_op, _no_double_backward, setup_context=lambda ctx, inputs, output: None)


if _extension.LOAD_ERROR is None:
    _register_fakes("splatkern::splat_forward", "splatkern::splat_backward")


# The fused kernels as callables (means, sigmas, amps, height, width, deterministic) -> (image, index)
# and (grad_image, means, sigmas, amps, index, deterministic) -> grads, without autograd.


def _triton_forward_kernels(means, sigmas, amps, height, width, deterministic):
    from splatkern import triton_kernels  # noqa: PLC0415 - imports triton only when used

    return triton_kernels.forward(means, sigmas, amps, height, width)


def _triton_backward_kernels(grad_image, means, sigmas, amps, index, deterministic):
    from splatkern import triton_kernels  # noqa: PLC0415

    return triton_kernels.backward(grad_image, means, sigmas, amps, index, deterministic)


@dataclass(frozen=True)
class _Kernels:
    forward: Callable
    backward: Callable


_TRITON_KERNELS = _Kernels(_triton_forward_kernels, _triton_backward_kernels)
# Looked up per call: the ops exist only when the extension loaded.
_CPP_KERNELS = _Kernels(lambda *args: torch.ops.splatkern.splat_forward(*args),
                        lambda *args: torch.ops.splatkern.splat_backward(*args))  # fmt: skip


# The Triton kernels as custom ops: what torch.compile sees (an opaque op with a fake kernel, so the
# value checks' host sync stays inside it).


@torch.library.custom_op("splatkern::splat_forward_triton", mutates_args=())
def _triton_forward(
    means: torch.Tensor, sigmas: torch.Tensor, amps: torch.Tensor, height: int, width: int, deterministic: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    return _triton_forward_kernels(means, sigmas, amps, height, width, deterministic)


@torch.library.custom_op("splatkern::splat_backward_triton", mutates_args=())
def _triton_backward(
    grad_image: torch.Tensor,
    means: torch.Tensor,
    sigmas: torch.Tensor,
    amps: torch.Tensor,
    index: torch.Tensor,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _triton_backward_kernels(grad_image, means, sigmas, amps, index, deterministic)


_register_fakes("splatkern::splat_forward_triton", "splatkern::splat_backward_triton")
_register_autograd("splatkern::splat_forward_triton", _triton_backward)


# The same rule as Python autograd.Functions, in two forms.
#
# Eager Triton calls take the ctx form below: torch.library's per-call dispatch of the custom ops
# cost ~65 us of host time per forward+backward on this project's CPU (150 against 85 us with the
# kernels stubbed), and the setup_context form another ~90 us (Function.apply binds its arguments
# with inspect.signature on every call when setup_context is defined).
class _TritonBackwardEager(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grad_image, means, sigmas, amps, index, deterministic):
        return _triton_backward_kernels(grad_image, means, sigmas, amps, index, deterministic)

    backward = staticmethod(_no_double_backward)


class _TritonRenderEager(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, sigmas, amps, height, width, deterministic):
        output = _triton_forward_kernels(means, sigmas, amps, height, width, deterministic)
        _setup_context(ctx, (means, sigmas, amps, height, width, deterministic), output)
        return output

    @staticmethod
    def backward(ctx, grad_image, _grad_index):
        return _forward_gradients(ctx, grad_image, _TritonBackwardEager.apply)


# Under torch.func transforms every fused backend takes the setup_context form, the one they accept:
# the C++ ops' own autograd (csrc/splat_autograd.cpp) is invisible to them.
class _FusedBackward(torch.autograd.Function):
    @staticmethod
    def forward(grad_image, means, sigmas, amps, index, deterministic, kernels):
        return kernels.backward(grad_image, means, sigmas, amps, index, deterministic)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    backward = staticmethod(_no_double_backward)


class _FusedRender(torch.autograd.Function):
    @staticmethod
    def forward(means, sigmas, amps, height, width, deterministic, kernels):
        return kernels.forward(means, sigmas, amps, height, width, deterministic)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs[:-1], output)
        ctx.kernels = inputs[-1]

    @staticmethod
    def backward(ctx, grad_image, _grad_index):
        grads = _forward_gradients(ctx, grad_image, lambda *args: _FusedBackward.apply(*args, ctx.kernels))
        return (*grads, None)


def _fused_forward(backend: str) -> Callable:
    """How splat_render calls a fused backend's forward: (means, sigmas, amps, height, width,
    deterministic) -> (image, index), differentiable. torch.compile sees the ops themselves."""
    if torch.compiler.is_compiling():
        return _triton_forward if backend == "triton" else torch.ops.splatkern.splat_forward
    if torch._C._are_functorch_transforms_active():
        kernels = _TRITON_KERNELS if backend == "triton" else _CPP_KERNELS
        return lambda *args: _FusedRender.apply(*args, kernels)
    return _TritonRenderEager.apply if backend == "triton" else torch.ops.splatkern.splat_forward


# --- the public entry -----------------------------------------------------------------------------


def _check_size(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"splat_render: {name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"splat_render: {name} must be >= 1, got {value}")


def _check_arguments(means, sigmas, amps, height, width, backend) -> None:
    for name, tensor in (("means", means), ("sigmas", sigmas), ("amps", amps)):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"splat_render: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.dtype.is_floating_point:
            raise TypeError(f"splat_render: {name} must be a floating-point tensor, got {tensor.dtype}")
    if means.dim() < 2 or means.shape[-1] != 2:
        raise ValueError(f"splat_render: means must have shape [..., N, 2], got {list(means.shape)}")
    if sigmas.shape != means.shape[:-1]:
        raise ValueError(
            f"splat_render: sigmas must have shape [..., N] = {list(means.shape[:-1])} to match means, "
            f"got {list(sigmas.shape)}"
        )
    if amps.shape != sigmas.shape:
        raise ValueError(
            f"splat_render: amps must have shape [..., N] = {list(sigmas.shape)} to match means, got {list(amps.shape)}"
        )
    if not (means.dtype == sigmas.dtype == amps.dtype):
        raise TypeError(
            f"splat_render: means, sigmas and amps must share one dtype, got {means.dtype}, {sigmas.dtype}, {amps.dtype}"
        )
    if not (means.device == sigmas.device == amps.device):
        raise ValueError(
            f"splat_render: means, sigmas and amps must be on one device, got {means.device}, {sigmas.device}, {amps.device}"
        )
    _check_size("height", height)
    _check_size("width", width)
    if backend not in BACKENDS:
        raise ValueError(f"splat_render: unknown backend {backend!r}; choose one of {BACKENDS}")


def _pick_backend(backend: str, device: torch.device) -> str:
    available = _available_backends(device.type)
    if backend == "auto":
        return available[0]
    if backend not in available:
        raise ValueError(
            f"splat_render: backend {backend!r} is not available for {device.type} tensors here; "
            f"available: {list(available)}" + (f" (extension: {_extension.LOAD_ERROR})" if _extension.LOAD_ERROR else "")
        )
    return backend


def splat_render(
    means: torch.Tensor,
    sigmas: torch.Tensor,
    amps: torch.Tensor | None = None,
    *,
    height: int,
    width: int,
    backend: str = "auto",
    return_index: bool = False,
    deterministic: bool | None = None,
):
    """Draw Gaussian markers and composite them with a max: the contract is
    :func:`splatkern.reference.splat_render_reference`'s docstring.

    Args:
        means: ``[..., N, 2]`` marker centres ``(x, y)`` in pixels (pixel ``(i, j)`` is at ``x=j, y=i``).
        sigmas: ``[..., N]`` standard deviations in pixels, ``> 0``.
        amps: ``[..., N]`` intensities; ``None`` means 1.
        height, width: the canvas size in pixels.
        backend: ``"auto"`` (the fastest available for the device), ``"reference"``, ``"cpu"``,
            ``"cuda"`` or ``"triton"``; :func:`available_backends` lists what this install has.
        return_index: also return the int32 winner map ``[..., H, W]`` (``-1`` where N = 0).
        deterministic: bit-reproducible backward on GPU backends; ``None`` follows
            ``torch.are_deterministic_algorithms_enabled()``. The CPU kernel is always deterministic.

    float32 and float64 are computed natively; float16 and bfloat16 in float32, returned in the
    input dtype. Bad input raises ``TypeError`` / ``ValueError`` naming the argument.
    """
    if amps is None and isinstance(sigmas, torch.Tensor):
        amps = torch.ones_like(sigmas)
    _check_arguments(means, sigmas, amps, height, width, backend)
    chosen = _pick_backend(backend, means.device)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()

    dtype, batch_shape = means.dtype, means.shape[:-2]
    if len(batch_shape) != 1:  # else as is: each reshape would add a view and an autograd node (~3 us)
        batch, n_markers = math.prod(batch_shape), means.shape[-2]
        means = means.reshape(batch, n_markers, 2)
        sigmas, amps = sigmas.reshape(batch, n_markers), amps.reshape(batch, n_markers)
    compute_dtype = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    # (`.to` even to the same dtype costs ~1 us of dispatch a tensor: skipped where it would do nothing)
    flat_means, flat_sigmas, flat_amps = (
        (t if t.dtype == compute_dtype else t.to(compute_dtype)).contiguous() for t in (means, sigmas, amps)
    )

    if chosen == "reference":
        if not torch.compiler.is_compiling():  # data-dependent: compiled code skips it (README)
            check_values(flat_means, flat_sigmas, flat_amps)
        image, index = splat_render_reference(flat_means, flat_sigmas, flat_amps, height, width)
    else:
        image, index = _fused_forward(chosen)(flat_means, flat_sigmas, flat_amps, height, width, deterministic)

    if len(batch_shape) != 1:
        image, index = image.reshape(*batch_shape, height, width), index.reshape(*batch_shape, height, width)
    if image.dtype != dtype:
        image = image.to(dtype)
    return (image, index) if return_index else image
