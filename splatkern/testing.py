"""Checking a backend of ``splat_render`` against the reference on this machine, as ``torch.testing``
serves torch users. ``check_backend("cuda", "cuda")`` checks one backend on one device, ``check_all()``
every fused backend this install has; ``splatkern check`` prints their reports::

    report = splatkern.testing.check_backend("triton", "cuda")
    print(report.summary())  # "triton on cuda: OK (45 cases, 3.2 s)", or each failed case

The oracle is ``splat_render_reference`` in float64 on the very (dtype-rounded) inputs the backend
saw. Fused kernels round differently from it and flush tiny factors to zero (the contract), so the
winner map and the gradients are compared on the pixels whose winner is certain (``clear_pixels``),
the image everywhere, each within its dtype's tolerance (``TOLERANCES``). A mismatch is reported in
the returned ``CheckReport``, never raised. The project's own tests use the same functions.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.autograd.gradcheck import GradcheckError

from splatkern.checks import KERNEL_DTYPES, compute_dtype
from splatkern.facts import COMPOSITES, FLUSH_EXPONENT, UNIT_AMP_COMPOSITES
from splatkern.ops import BACKENDS, available_backends, splat_render
from splatkern.reference import splat_render_reference

__all__ = [
    "SHAPES",
    "TOLERANCES",
    "CaseResult",
    "CheckReport",
    "Measure",
    "check_all",
    "check_backend",
    "clear_pixels",
    "compare_with_reference",
    "make_markers",
]

# Backends whose backward has a separate deterministic path (atomic additions otherwise). The CPU
# kernel is always deterministic; the reference is autograd of torch.max.
WITH_ATOMIC_BACKWARD = ("cuda", "triton")
HALF_DTYPES = (torch.float16, torch.bfloat16)
DTYPES = (*KERNEL_DTYPES, *HALF_DTYPES)
SOFT_COMPOSITES = tuple(c for c in COMPOSITES if c != "max")
# The temperature the checks give smoothmax: low enough that the weights differ strongly across
# markers, high enough that float32's rounding of v / t stays within the tolerances.
CHECK_TEMPERATURE = 0.25


def backward_modes(backend: str) -> tuple[bool, ...]:
    """The `deterministic` values that select different backward code in `backend`."""
    return (False, True) if backend in WITH_ATOMIC_BACKWARD else (False,)


def is_interpreted(device: str | torch.device, backend: str) -> bool:
    """Triton's interpreter costs milliseconds per kernel loop step and program: such cases get small shapes."""
    return torch.device(device).type == "cpu" and backend == "triton"


# --- inputs ---------------------------------------------------------------------------------------


class Shape(NamedTuple):
    batch: tuple[int, ...]
    n_markers: int
    height: int
    width: int
    interpreted: bool  # small enough for Triton's interpreter

    def __str__(self) -> str:
        return f"{'x'.join(map(str, self.batch)) or 'nobatch'}-N{self.n_markers}-{self.height}x{self.width}"


# Odd sizes that fit no block evenly. Together: N = 0, 1, 7, 64, 300; no, one and two leading dims;
# H != W. The quick check takes the first QUICK of them.
SHAPES = [
    Shape((), 7, 9, 41, True),  # no leading dims; N = 7 cuts Triton's marker blocks (forward 4, backward 8)
    Shape((2, 3), 1, 9, 20, True),  # two leading dims; one marker
    Shape((2,), 64, 13, 7, True),  # N = one CUDA marker block; H > W
    Shape((4,), 0, 9, 41, True),  # no markers: zero image, index -1
    Shape((1,), 21, 40, 36, True),  # Triton: backward marker blocks (16 / 8) cut; 2 x 2 forward tiles; 2 pixel runs
    Shape((3,), 9, 1, 33, True),  # a single row
    # Too slow for the interpreter:
    Shape((1,), 300, 9, 41, False),  # several CUDA marker blocks (64), the last one cut
    Shape((16,), 4, 28, 28, False),  # CPU: batch >= 16, one tile per image; the MNIST size
    Shape((1,), 12, 70, 90, False),  # CPU: row tiles of 45 + 25 rows; CUDA: several backward tiles (2048 px)
]
QUICK = 4
# The same spread in fewer pixels, for Triton's interpreter: its backward costs milliseconds a pixel.
TINY_SHAPES = [
    Shape((), 7, 5, 9, True),
    Shape((2, 1), 1, 3, 4, True),
    Shape((1,), 64, 7, 5, True),
    Shape((2,), 0, 3, 5, True),
    Shape((3,), 9, 1, 7, True),
]


def make_markers(batch_shape, n_markers, height, width, *, dtype=torch.float32, device="cpu", seed=0,
                 sigma_range=(0.3, 6.0), margin=4.0, unit_amps=False):
    """Random markers: centres over the image and up to `margin` px outside it, log-uniform sigmas,
    amplitudes in [-0.2, 1.2] (a few negative) or, with `unit_amps`, those clamped to [0, 1] (what
    softor and over take: about one in seven is exactly 0 and one in seven exactly 1, and for N > 3
    marker 0's is 1 and marker 3's 0 in every image), and, for
    N > 2, marker 1 so far outside, with sigma 1, that the fused kernels flush both its axis factors
    to zero in every dtype. Drawn on the CPU from a generator seeded with `seed`: every device sees
    the same numbers, the global RNG is untouched."""
    gen = torch.Generator().manual_seed(seed)
    shape = (*batch_shape, n_markers)
    xy = torch.rand(*shape, 2, generator=gen, dtype=torch.float64)
    means = xy * torch.tensor([width - 1 + 2 * margin, height - 1 + 2 * margin], dtype=torch.float64) - margin
    lo, hi = torch.log(torch.tensor(sigma_range, dtype=torch.float64))
    sigmas = torch.exp(lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64))
    amps = 1.4 * torch.rand(*shape, generator=gen, dtype=torch.float64) - 0.2
    if unit_amps:
        amps = amps.clamp(0.0, 1.0)
        if n_markers > 3:  # the edges of [0, 1] in every image
            amps[..., 0], amps[..., 3] = 1.0, 0.0
    if n_markers > 2:
        means[..., 1, :] = torch.tensor([-40.0, height + 40.0], dtype=torch.float64)
        sigmas[..., 1] = 1.0
    return tuple(t.to(device, dtype) for t in (means, sigmas, amps))


def make_strokes(batch_shape, n_strokes, n_vertices, height, width, *, dtype=torch.float32, device="cpu", seed=0,
                 sigma_range=(0.4, 3.0), margin=3.0, unit_amps=False):
    """Random strokes: random walks that start over the image or up to `margin` px outside it, with
    steps of about a sixth of the image, log-uniform vertex sigmas and amplitudes as make_markers
    draws them ([-0.2, 1.2], or with `unit_amps` clamped to [0, 1]: some exactly 0 and 1); for
    P > 2, vertex 2 of every stroke repeats vertex 1 (a segment with a = b), and for S > 2 stroke 1
    lies so far outside the image that the fused kernels flush it everywhere. Drawn on the CPU from a
    generator seeded with `seed`, as make_markers."""
    gen = torch.Generator().manual_seed(seed)
    shape = (*batch_shape, n_strokes, n_vertices)
    size = torch.tensor([width - 1 + 2 * margin, height - 1 + 2 * margin], dtype=torch.float64)
    start = torch.rand(*shape[:-1], 1, 2, generator=gen, dtype=torch.float64) * size - margin
    steps = torch.randn(*shape[:-1], n_vertices - 1, 2, generator=gen, dtype=torch.float64) * (size / 6)
    paths = torch.cat([start, start + steps.cumsum(dim=-2)], dim=-2)
    lo, hi = torch.log(torch.tensor(sigma_range, dtype=torch.float64))
    sigmas = torch.exp(lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64))
    amps = 1.4 * torch.rand(*shape, generator=gen, dtype=torch.float64) - 0.2
    if unit_amps:
        amps = amps.clamp(0.0, 1.0)
    if n_vertices > 2:
        paths[..., 2, :] = paths[..., 1, :]
    if n_strokes > 2:
        paths[..., 1, :, :] = paths[..., 1, :, :] * 0.01 + torch.tensor([-60.0, height + 60.0], dtype=torch.float64)
    return tuple(t.to(device, dtype) for t in (paths, sigmas, amps))


def random_like_image(shape, *, device="cpu", seed=0):
    """A seeded upstream gradient (drawn on CPU so that every device sees the same numbers)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)


def separated_markers(device: str | torch.device) -> list[torch.Tensor]:
    """Three float64 markers on 7 x 8 that require grad, well apart, with distinct amplitudes: no
    pixel's winner changes under gradcheck's perturbations, so the max is differentiable there."""
    means = torch.tensor([[1.2, 1.7], [5.6, 2.3], [3.1, 5.4]], dtype=torch.float64, device=device)
    sigmas = torch.tensor([0.9, 1.3, 1.1], dtype=torch.float64, device=device)
    amps = torch.tensor([0.7, 1.0, 0.85], dtype=torch.float64, device=device)
    return [t.requires_grad_() for t in (means, sigmas, amps)]


def overlapping_markers(device: str | torch.device) -> list[torch.Tensor]:
    """Four float64 markers on 7 x 8 that require grad and overlap, one partly off the canvas, with
    amplitudes inside (0, 1) (gradcheck's perturbations keep them there): the soft modes' gradient
    reaches every marker at a pixel, so the cross terms between markers are checked."""
    means = torch.tensor([[2.2, 2.7], [3.6, 3.3], [3.1, 4.4], [8.3, -0.6]], dtype=torch.float64, device=device)
    sigmas = torch.tensor([1.4, 1.9, 1.1, 1.6], dtype=torch.float64, device=device)
    amps = torch.tensor([0.7, 0.45, 0.9, 0.6], dtype=torch.float64, device=device)
    return [t.requires_grad_() for t in (means, sigmas, amps)]


# --- which pixels have a certain winner -----------------------------------------------------------

# Relative gap between a pixel's two best values below which a fused kernel may rightly pick the
# other marker: separable factors round differently from the oracle (CUDA's fast __expf too, by up
# to ~50 ulp near the flush cut-off). Keyed by the dtype the kernels compute in.
NEAR_TIE = {torch.float32: 1e-4, torch.float64: 1e-9}


def clear_pixels(means, sigmas, amps, height, width):
    """True where every backend must pick the oracle's winner: the best value beats the runner-up by
    more than NEAR_TIE, relative, and is clearly above where the kernels flush an axis factor to zero.
    With fewer than two markers the winner is never in doubt."""
    dtype = compute_dtype(means.dtype)
    batch_shape, n_markers = means.shape[:-2], means.shape[-2]
    if n_markers < 2:
        return torch.ones(*batch_shape, height, width, dtype=torch.bool, device=means.device)
    # Each marker alone, in float64: the marker axis becomes a batch axis of one-marker images.
    per_marker, _ = splat_render_reference(means.detach().double().unsqueeze(-2), sigmas.detach().double()[..., None],
                                           amps.detach().double()[..., None], height, width)
    best, runner_up = per_marker.topk(2, dim=-3).values.unbind(-3)
    # A value a * fx * fy above 2 max|a| exp(-flush exponent) has both factors above the cut: none flushed.
    flush_floor = 2 * float(amps.detach().abs().max()) * math.exp(-FLUSH_EXPONENT[str(dtype).removeprefix("torch.")])
    return (best - runner_up > NEAR_TIE[dtype] * best.abs()) & (best.abs() > flush_floor)


# --- rendering ------------------------------------------------------------------------------------


def renderer(backend: str | Callable) -> Callable:
    """splat_render with `backend` given: a backend name, or already a callable with splat_render's
    signature (the project's tests render through emulated CUDA kernels that way)."""
    return backend if callable(backend) else functools.partial(splat_render, backend=backend)


def render_with_grads(backend, means, sigmas, amps, height, width, upstream, **kwargs):
    """Image, winner map (None for the soft composites, which have none), and the gradients of
    sum(image * upstream) w.r.t. means, sigmas, amps. `backend`: as renderer takes it; `kwargs` go
    to it (composite=, temperature=, deterministic=)."""
    leaves = [t.detach().clone().requires_grad_() for t in (means, sigmas, amps)]
    if kwargs.get("composite", "max") == "max":
        image, index = renderer(backend)(*leaves, height=height, width=width, return_index=True, **kwargs)
    else:
        image, index = renderer(backend)(*leaves, height=height, width=width, **kwargs), None
    if not image.requires_grad:  # the reference's image for N = 0 does not depend on the markers
        return image, index, [torch.zeros_like(t) for t in leaves]
    grads = torch.autograd.grad(image, leaves, upstream.to(image.dtype), allow_unused=True)
    return image.detach(), index, [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]


# --- measuring ------------------------------------------------------------------------------------

# (atol, rtol) per dtype. Images: against the float64 oracle (float16/bfloat16 are computed in
# float32, so their error is the final rounding); float32 leaves room for CUDA's __expf (~|x| * 6e-8
# relative per factor exp(-x), x <= 43.7). Gradients: sums over the pixels a marker wins, in float32
# by atomics on GPUs, compared with atol relative to the largest gradient of the tensor (at least 1).
TOLERANCES = {
    #                image            gradients
    torch.float32: ((2e-6, 2e-5), (1e-4, 2e-4)),
    torch.float64: ((1e-12, 1e-10), (1e-10, 1e-9)),
    torch.float16: ((1e-3, 2e-3), (2e-3, 2e-3)),
    torch.bfloat16: ((8e-3, 1e-2), (1.6e-2, 1.6e-2)),
}
GRADIENT_NAMES = ("means", "sigmas", "amps")


@dataclass(frozen=True)
class Measure:
    """How far one quantity of a case is from what it should be. Numeric measures give the largest
    absolute and relative error and the (atol, rtol) they pass within (|error| <= atol + rtol |expected|);
    the others (gradcheck, the winner map, a raised error) say in `note` what they found."""

    quantity: str
    ok: bool
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    tolerance: tuple[float, float] | None = None
    note: str = ""
    # The largest error as a fraction of what the tolerance allows there: the measure passes up to 1.
    score: float = 0.0

    def describe(self) -> str:
        if self.tolerance is None:
            return f"{self.quantity}: {self.note.splitlines()[0] if self.note else 'ok'}"
        atol, rtol = self.tolerance
        return (f"{self.quantity}: max abs error {self.max_abs_error:.2g}, rel {self.max_rel_error:.2g} "
                f"({self.score:.2g} of the tolerance atol {atol:.2g}, rtol {rtol:.2g})")


def measure_close(quantity: str, actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> Measure:
    """`actual` against `expected` element by element, as torch.testing.assert_close compares them."""
    if actual.shape != expected.shape:
        return Measure(quantity, False, note=f"shape {list(actual.shape)}, expected {list(expected.shape)}")
    if actual.numel() == 0:
        return Measure(quantity, True, 0.0, 0.0, (atol, rtol))
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    # Equal infinities are no error; NaN, or an infinity not matched, is an infinite one.
    error = torch.where(actual == expected, 0.0, (actual - expected).abs().nan_to_num(math.inf, math.inf))
    relative, score = (torch.where(error == 0, 0.0, torch.where(error == math.inf, math.inf, error / scale))
                       for scale in (expected.abs(), atol + rtol * expected.abs()))
    worst = float(score.max())
    return Measure(quantity, worst <= 1, float(error.max()), float(relative.max()), (atol, rtol), score=worst)


def measure_grads(grads, ref_grads, dtype: torch.dtype, label: str = "grad") -> list[Measure]:
    """Gradients of one backend against the reference's (either may be in any float dtype); atol is
    relative to the largest reference gradient of each tensor (at least 1)."""
    atol, rtol = TOLERANCES[dtype][1]
    measures = []
    for name, grad, ref in zip(GRADIENT_NAMES, grads, ref_grads, strict=True):
        scale = max(1.0, float(ref.abs().max())) if ref.numel() else 1.0
        measures.append(measure_close(f"{label} {name}", grad, ref, atol * scale, rtol))
    return measures


def _measure_winners(index, ref_index, clear) -> Measure:
    differ = int((index[clear] != ref_index[clear]).sum())
    total = int(clear.sum())
    return Measure("winner map", differ == 0, note=f"{differ} of {total} pixels with a certain winner differ",
                   score=0.0 if differ == 0 else math.inf)


def _measure_layout(image, index, grads, dtype, device, shape) -> Measure:
    """What the op returns besides numbers: dtypes, devices and shapes."""
    wrong = []
    if not (image.dtype == dtype and image.device == device and image.shape == shape):
        wrong.append(f"image is {image.dtype} on {image.device} with shape {list(image.shape)}")
    if index is not None and not (index.dtype == torch.int32 and index.device == device and index.shape == shape):
        wrong.append(f"winner map is {index.dtype} on {index.device} with shape {list(index.shape)}")
    wrong += [f"grad {name} is {g.dtype} on {g.device}" for name, g in zip(GRADIENT_NAMES, grads)
              if not (g.dtype == dtype and g.device == device)]
    note = "; ".join(wrong) + (f" (expected {dtype} on {device} with shape {list(shape)})" if wrong else "")
    return Measure("dtypes and shapes", not wrong, note=note, score=math.inf if wrong else 0.0)


@dataclass
class Comparison:
    """One backend's outputs on one input, and how far they are from the oracle's."""

    measures: list[Measure]
    image: torch.Tensor
    index: torch.Tensor | None  # None for the soft composites
    grads: list[torch.Tensor]
    clear: torch.Tensor  # the pixels whose winner is certain (all, for the soft composites)

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.measures)

    def describe(self) -> str:
        return "; ".join(m.describe() for m in self.measures if not m.ok)


def compare_with_reference(backend, means, sigmas, amps, height, width, *, clear=None, seed=0, composite="max",
                           temperature=1.0, **kwargs) -> Comparison:
    """The backend's image everywhere, and its winner map and gradients where the winner is clear
    (the upstream gradient is zero on other pixels, so none can send its gradient to the marker the
    oracle did not pick), against the float64 oracle. `clear` defaults to clear_pixels(...) for
    "max" and to every pixel for the soft composites, which are smooth; `kwargs` go to the renderer
    (e.g. deterministic=True)."""
    dtype, device = means.dtype, means.device
    mode = dict(composite=composite, temperature=temperature)
    if clear is None:
        clear = (clear_pixels(means, sigmas, amps, height, width) if composite == "max" else
                 torch.ones(*means.shape[:-2], height, width, dtype=torch.bool, device=device))
    # Rounded to the dtype first: exactly what the op's backward receives.
    upstream = (random_like_image(clear.shape, device=device, seed=seed + 1) * clear).to(dtype)
    image, index, grads = render_with_grads(backend, means, sigmas, amps, height, width, upstream, **mode, **kwargs)
    ref_image, ref_index, ref_grads = render_with_grads(
        "reference", *(t.double() for t in (means, sigmas, amps)), height, width, upstream.double(), **mode)

    measures = [_measure_layout(image, index, grads, dtype, device, ref_image.shape)]
    if measures[0].ok:
        measures.append(measure_close("image", image, ref_image, *TOLERANCES[dtype][0]))
        if composite == "max":
            measures.append(_measure_winners(index, ref_index, clear))
        measures += measure_grads(grads, ref_grads, dtype)
    return Comparison(measures, image, index, grads, clear)


def gradcheck(backend, device, *, deterministic: bool = False, composite: str = "max",
              temperature: float = CHECK_TEMPERATURE) -> Measure:
    """torch.autograd.gradcheck of the backend in float64: on three well-separated markers for "max"
    (no winner changes), on four overlapping ones for the soft composites."""

    def render(m, s, a):
        return renderer(backend)(m, s, a, height=7, width=8, deterministic=deterministic, composite=composite,
                                 temperature=temperature)

    markers = separated_markers(device) if composite == "max" else overlapping_markers(device)

    # An atomic backward may add in any order: rounding-level differences between runs are allowed.
    nondet_tol = 1e-12 if backend in WITH_ATOMIC_BACKWARD and not deterministic else 0.0
    try:
        # Under the interpreter a backward call costs tens of ms: one random projection of the
        # Jacobian (fast mode, from gradcheck's own generator) instead of one backward per pixel.
        torch.autograd.gradcheck(render, markers, eps=1e-6, atol=1e-7, nondet_tol=nondet_tol,
                                 fast_mode=is_interpreted(device, backend))
    except GradcheckError as error:
        return Measure("gradcheck", False, note=str(error), score=math.inf)
    return Measure("gradcheck", True)


def repeatability(backend, device, shape: Shape | None = None, *, composite: str = "max",
                  temperature: float = CHECK_TEMPERATURE) -> list[Measure]:
    """deterministic=True three times: bit-identical image, winner map and gradients; and the atomic
    backward's gradients against the deterministic ones, up to the order of additions. The default
    shape gives a GPU many pixels per marker, so that the atomic backward sees contention."""
    if shape is None:
        on_gpu = torch.device(device).type == "cuda"
        shape = Shape((8,), 64, 64, 64, False) if on_gpu else Shape((3,), 20, 28, 28, False)
    batch, n_markers, height, width, _ = shape
    means, sigmas, amps = make_markers(batch, n_markers, height, width, device=device, seed=8,
                                       unit_amps=composite in UNIT_AMP_COMPOSITES)
    upstream = random_like_image((*batch, height, width), device=device, seed=9).float()
    mode = dict(composite=composite, temperature=temperature)
    runs = [render_with_grads(backend, means, sigmas, amps, height, width, upstream, deterministic=True, **mode)
            for _ in range(3)]
    first = [runs[0][0], runs[0][1], *runs[0][2]]
    differ = [name for image, index, grads in runs[1:]
              for name, a, b in zip(("image", "winner map", *GRADIENT_NAMES), [image, index, *grads], first)
              if not (a is None and b is None or torch.equal(a, b))]
    repeat = Measure("deterministic repeat", not differ, note=f"runs differ in {sorted(set(differ))}" if differ else "",
                     score=math.inf if differ else 0.0)
    atomic = render_with_grads(backend, means, sigmas, amps, height, width, upstream, deterministic=False, **mode)[2]
    return [repeat, *measure_grads(atomic, runs[0][2], torch.float32, label="atomic vs deterministic grad")]


# --- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    """One case of a check: its name and its measures. `max_abs_error`, `max_rel_error`,
    `tolerance` are those of its worst measure (the one furthest past, or nearest to, its tolerance);
    `note` says what failed."""

    name: str
    measures: tuple[Measure, ...]

    @property
    def ok(self) -> bool:
        return all(m.ok for m in self.measures)

    @property
    def worst(self) -> Measure:
        return max(self.measures, key=lambda m: (not m.ok, m.score))

    @property
    def max_abs_error(self) -> float | None:
        return self.worst.max_abs_error

    @property
    def max_rel_error(self) -> float | None:
        return self.worst.max_rel_error

    @property
    def tolerance(self) -> tuple[float, float] | None:
        return self.worst.tolerance

    @property
    def note(self) -> str:
        return "; ".join(m.describe() for m in self.measures if not m.ok)


@dataclass(frozen=True)
class CheckReport:
    """What check_backend found: `ok` when every case passed."""

    backend: str
    device: str
    cases: tuple[CaseResult, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return all(case.ok for case in self.cases)

    def summary(self) -> str:
        """A header line, a line per failed case, and the worst error of each numeric quantity."""
        lines = [f"{self.backend} on {self.device}: {'OK' if self.ok else 'FAILED'} "
                 f"({len(self.cases)} cases, {self.seconds:.1f} s)"]
        lines += [f"  FAILED {case.name}: {case.note}" for case in self.cases if not case.ok]
        worst: dict[str, tuple[Measure, str]] = {}
        for case in self.cases:
            for m in case.measures:
                if m.tolerance is not None and (m.quantity not in worst or m.score > worst[m.quantity][0].score):
                    worst[m.quantity] = (m, case.name)
        lines += [f"  worst {m.describe()} in {name}" for m, name in worst.values()]
        return "\n".join(lines)


# --- the checks -----------------------------------------------------------------------------------

KNOWN_BACKENDS = tuple(b for b in BACKENDS if b != "auto")


def _checked_device(device) -> torch.device:
    try:
        checked = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"splatkern.testing: device {device!r} is not a torch device ({error})") from None
    if checked.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"splatkern.testing: device {device!r} is not available: "
                             "torch.cuda.is_available() is False")
        if checked.index is not None and checked.index >= torch.cuda.device_count():
            raise ValueError(f"splatkern.testing: device {device!r} is not available: "
                             f"this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif checked.type != "cpu":
        raise ValueError(f"splatkern.testing: device {device!r}: splat_render runs on cpu and cuda devices only")
    return checked


def _require_backend(backend, devices: list[torch.device]) -> None:
    """ValueError unless `backend` is known and available on one of `devices`."""
    if backend not in KNOWN_BACKENDS:
        raise ValueError(f"splatkern.testing: unknown backend {backend!r}; choose one of {KNOWN_BACKENDS}")
    if not any(backend in available_backends(device) for device in devices):
        available = "; ".join(f"{d.type}: {available_backends(d)}" for d in devices)
        raise ValueError(f"splatkern.testing: backend {backend!r} is not available for "
                         f"{' or '.join(d.type for d in devices)} tensors here (available: {available}; "
                         "`splatkern doctor` says why)")


def _cases(backend: str, device: torch.device, quick: bool) -> list[tuple[str, Callable[[], list[Measure]]]]:
    """(name, run) of every case of one backend on one device: run returns the case's measures."""
    interpreted = is_interpreted(device, backend)
    shapes = (TINY_SHAPES if interpreted else SHAPES)[:QUICK if quick else None]
    modes = backward_modes(backend)
    # (composite, dtype, shape, deterministic). float16 and bfloat16 run the float32 kernels: the quick
    # check and the interpreter check the casts around them on one shape; the quick check takes one
    # shape for the deterministic backward too.
    compared = []
    for composite in COMPOSITES:
        compared += [(composite, dtype, shape, False) for dtype in KERNEL_DTYPES for shape in shapes]
        compared += [(composite, dtype, shape, False) for dtype in HALF_DTYPES
                     for shape in shapes[:1 if quick or interpreted else None]]
        compared += [(composite, dtype, shape, True) for dtype in KERNEL_DTYPES
                     for shape in shapes[:1 if quick else None] if backend in WITH_ATOMIC_BACKWARD]
    cases = [(f"{composite} {str(dtype).removeprefix('torch.')} {shape}" + (" deterministic" if deterministic else ""),
              functools.partial(_compare_case, backend, device, composite, dtype, shape, deterministic))
             for composite, dtype, shape, deterministic in compared]
    for composite in COMPOSITES:
        for deterministic in modes[:1] if quick else modes:
            cases.append((f"{composite} gradcheck float64" + (" deterministic" if deterministic else ""),
                          functools.partial(_gradcheck_case, backend, device, composite, deterministic)))
        if backend in WITH_ATOMIC_BACKWARD and not quick:
            shape = TINY_SHAPES[0] if interpreted else None
            cases.append((f"{composite} deterministic repeat float32",
                          functools.partial(repeatability, backend, device, shape, composite=composite)))
    return cases


def _gradcheck_case(backend, device, composite, deterministic: bool) -> list[Measure]:
    return [gradcheck(backend, device, deterministic=deterministic, composite=composite)]


def _compare_case(backend, device, composite, dtype, shape: Shape, deterministic: bool) -> list[Measure]:
    inputs = make_markers(shape.batch, shape.n_markers, shape.height, shape.width, dtype=dtype, device=device,
                          seed=shape.n_markers, unit_amps=composite in UNIT_AMP_COMPOSITES)
    return compare_with_reference(backend, *inputs, shape.height, shape.width, composite=composite,
                                  temperature=CHECK_TEMPERATURE, deterministic=deterministic).measures


def check_backend(backend: str, device: str | torch.device = "cpu", *, quick: bool = False) -> CheckReport:
    """Check one backend on one device against the float64 reference, in every composite mode: image,
    winner map ("max") and gradients on a spread of shapes (N = 0, 1, 7, 64, 300; no, one and two
    leading dims; odd sizes, H != W; markers outside the canvas; amps exactly 0 and 1 for softor and
    over) in every dtype of the contract, torch.autograd.gradcheck in float64, and bit-identical
    repeats of the deterministic backward where the backend has one.
    `quick` checks four shapes (a few seconds on a CPU). Mismatches are reported, not raised; an
    unknown or unavailable backend or device raises ValueError."""
    checked = _checked_device(device)
    _require_backend(backend, [checked])
    started = time.perf_counter()
    results = []
    for name, run in _cases(backend, checked, quick):
        try:
            measures = run()
        except Exception as error:  # noqa: BLE001 - a backend that raises on valid input fails its case
            measures = [Measure("error", False, note=f"raised {type(error).__name__}: {error}", score=math.inf)]
        results.append(CaseResult(name, tuple(measures)))
    return CheckReport(backend, str(checked), tuple(results), time.perf_counter() - started)


def check_all(device: str | torch.device | None = None, backends: Sequence[str] | None = None, *,
              quick: bool = False) -> list[CheckReport]:
    """check_backend for each fused backend available on `device` (None: the CPU, and CUDA where
    there is a device), or for the named `backends`; a named backend unavailable on every device
    checked raises ValueError."""
    devices = [_checked_device(device)] if device is not None else [
        torch.device(d) for d in ("cpu", "cuda") if d == "cpu" or torch.cuda.is_available()]
    for name in backends or ():
        _require_backend(name, devices)
    pairs = [(b, d) for d in devices for b in available_backends(d)
             if (b in backends if backends is not None else b != "reference")]
    return [check_backend(b, d, quick=quick) for b, d in pairs]
