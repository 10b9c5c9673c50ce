"""What is timed: one problem size (a Point), one implementation (a backend or the compiled
reference) and one mode (forward, or forward+backward), as a zero-argument callable."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

import splatkern
from splatkern.reference import splat_render_reference

COMPILED = "compile(reference)"  # torch.compile of splatkern.reference.splat_render_reference
GRAPHED = "+graph"  # suffix: the fused GPU backend's calls captured once in a CUDA graph, then replayed
DETERMINISTIC = "+deterministic"  # suffix (before GRAPHED): the backward with deterministic=True
MODES = ("forward", "forward+backward")
# The reference materialises [B, N, H, W] several times: its forward+backward peaks at about six
# such float32 tensors. Sizes that would not fit in half the free memory with this margin are
# skipped rather than run out of memory.
REFERENCE_TENSORS = 8


@dataclass(frozen=True, order=True)
class Point:
    batch: int
    markers: int
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def pairs(self) -> int:
        """Marker-pixel evaluations per call: the unit of throughput."""
        return self.batch * self.markers * self.pixels

    def label(self) -> str:
        return f"B={self.batch} N={self.markers} {self.height}x{self.width}"


def implementations(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """Every backend splat_render offers on `device`, then the compiled reference; and the backends
    left out, with the reason."""
    excluded = {}
    backends = splatkern.available_backends(device)
    if "triton" in backends and os.environ.get("TRITON_INTERPRET") == "1":
        backends.remove("triton")
        excluded["triton"] = ("TRITON_INTERPRET=1: the interpreter runs the kernel in Python on the CPU, "
                              "so its time says nothing about the Triton kernel")
    # At small sizes per-call host work, not the kernels, sets the time: replaying a CUDA graph shows
    # what the kernels alone take.
    fused_gpu = [name for name in backends if device.type == "cuda" and name in ("cuda", "triton")]
    graphed = [name + GRAPHED for name in fused_gpu]
    # What deterministic=True costs, as kernel time: the backward's other path.
    deterministic = [name + DETERMINISTIC + GRAPHED for name in fused_gpu]
    return [*backends, *graphed, *deterministic, COMPILED], excluded


def modes_of(implementation: str) -> tuple[str, ...]:
    """The modes worth timing for `implementation`: deterministic=True changes only the backward."""
    return MODES[1:] if implementation.removesuffix(GRAPHED).endswith(DETERMINISTIC) else MODES


def reference_fits(point: Point, device: torch.device) -> str | None:
    """Why the reference (plain or compiled) cannot run at `point` on `device`, or None if it can."""
    need = REFERENCE_TENSORS * point.pairs * 4
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _available_host_memory()
    if free is not None and need > free / 2:
        return (f"the reference materialises [B, N, H, W]: about {need / 2**30:.1f} GiB needed, "
                f"{free / 2**30:.1f} GiB free")
    return None


def _available_host_memory() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def make_inputs(point: Point, device: torch.device, seed: int = 0):
    """Markers spread over the canvas, sigmas that cover a few pixels at any resolution (the
    article's 0.2-2 px at 28x28, scaled), amplitudes in [0.5, 1]."""
    generator = torch.Generator().manual_seed(seed)
    size = torch.tensor([point.width, point.height], dtype=torch.float32)
    means = torch.rand(point.batch, point.markers, 2, generator=generator) * size
    scale = max(point.height, point.width) / 28
    sigmas = (0.2 + 1.8 * torch.rand(point.batch, point.markers, generator=generator)) * scale
    amps = 0.5 + 0.5 * torch.rand(point.batch, point.markers, generator=generator)
    return means.to(device), sigmas.to(device), amps.to(device)


def make_case(implementation: str, mode: str, point: Point, device: torch.device, composite: str = "max",
              temperature: float = 1.0) -> Callable[[], object]:
    """A callable running `implementation` once at `point` in `mode`, compositing by `composite`, on
    inputs made once here.

    Forward runs on inputs that need no gradient (no autograd graph is recorded); forward+backward
    clears the inputs' gradients, renders and back-propagates a fixed random upstream gradient.
    For COMPILED, call torch._dynamo.reset() between points (run.py does) so each size is compiled
    once, statically, and no recompile limit is reached.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    if implementation.endswith(GRAPHED):
        return captured_in_cuda_graph(make_case(implementation.removesuffix(GRAPHED), mode, point, device, composite,
                                                temperature))
    deterministic = implementation.endswith(DETERMINISTIC)
    implementation = implementation.removesuffix(DETERMINISTIC)
    means, sigmas, amps = make_inputs(point, device)
    height, width = point.height, point.width
    if implementation == COMPILED:
        compiled = torch.compile(splat_render_reference, dynamic=False)

        def render(m, s, a):
            return compiled(m, s, a, height, width, composite, temperature)[0]
    else:

        def render(m, s, a):
            return splatkern.splat_render(m, s, a, height=height, width=width, backend=implementation,
                                          deterministic=deterministic, composite=composite, temperature=temperature)

    if mode == "forward":
        return lambda: render(means, sigmas, amps)

    leaves = [t.requires_grad_() for t in (means, sigmas, amps)]
    upstream = torch.randn(point.batch, height, width, generator=torch.Generator().manual_seed(1)).to(device)

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        render(*leaves).backward(upstream)

    return forward_backward


def captured_in_cuda_graph(call: Callable[[], object]) -> Callable[[], None]:
    """`call` captured in a CUDA graph (warmed up twice on a side stream first, as torch.cuda.graph
    asks): the returned callable replays it on the same input tensors, into the tensors the
    capturing call returned or wrote."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call()
    return graph.replay
