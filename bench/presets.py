"""Which sizes each preset measures, and how hard it times them.

Sweeps vary one of batch, markers and resolution around a base point (not the full cartesian
product); a size that appears in several sweeps is measured once and carries every sweep's tag.
"key" points are the ones the speed-up plot and the performance summary are about.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.cases import Point
from splatkern.facts import COMPOSITES

SWEEP_TAGS = ("batch", "markers", "resolution")
# The sizes the performance summary reports: two on CPU, two on GPU.
HEADLINE = (Point(256, 64, 28, 28), Point(64, 256, 64, 64))
GPU_TARGETS = (Point(1024, 64, 28, 28), Point(256, 256, 128, 128))


@dataclass(frozen=True)
class Preset:
    description: str
    points: dict[Point, tuple[str, ...]]  # each size and its tags
    min_sample_s: float  # one timing sample runs enough calls to last this long
    samples: int  # samples per case (median and IQR are over these)
    max_case_s: float  # fewer samples (at least 3) for cases slower than this in total
    training_steps: int  # timed training steps per (backend, batch size); 0: no training section
    training_batches: tuple[int, ...] = (16, 256)
    devices: tuple[str, ...] = ("cpu", "cuda")
    composites: tuple[str, ...] = ("max",)  # the compositing modes measured ...
    composite_points: tuple[Point, ...] | None = None  # ... at these sizes (None: all); the others in max only

    def composites_at(self, point: Point) -> tuple[str, ...]:
        return self.composites if self.composite_points is None or point in self.composite_points else ("max",)


def sweep(base: Point, batch=(), markers=(), resolution=(), tag_base: tuple[str, ...] = ()) -> dict:
    points: dict[Point, tuple[str, ...]] = {}

    def add(point: Point, tag: str) -> None:
        points[point] = tuple(dict.fromkeys((*points.get(point, ()), tag)))

    for b in batch:
        add(Point(b, base.markers, base.height, base.width), "batch")
    for n in markers:
        add(Point(base.batch, n, base.height, base.width), "markers")
    for r in resolution:
        add(Point(base.batch, base.markers, r, r), "resolution")
    for tag in tag_base:
        add(base, tag)
    return points


def merge(*groups: dict) -> dict[Point, tuple[str, ...]]:
    merged: dict[Point, tuple[str, ...]] = {}
    for group in groups:
        for point, tags in group.items():
            merged[point] = tuple(dict.fromkeys((*merged.get(point, ()), *tags)))
    return merged


def tagged(points, *tags: str) -> dict:
    return {point: tags for point in points}


PRESETS = {
    "quick": Preset(
        "CI smoke test: tiny sizes, a few samples; numbers are not meaningful",
        sweep(Point(4, 10, 16, 16), markers=(10, 25), resolution=(16, 28), tag_base=("key",)),
        min_sample_s=0.002, samples=3, max_case_s=0.5, training_steps=3, training_batches=(16,),
    ),
    "headline": Preset(
        "the two CPU headline sizes only: B=256, N=64, 28x28 and B=64, N=256, 64x64",
        tagged(HEADLINE, "key"),
        min_sample_s=0.05, samples=15, max_case_s=30.0, training_steps=0,
    ),
    "full": Preset(
        "one-at-a-time sweeps around B=64, N=64, 64x64: B in {1, 64, 1024}, N in {10, 25, 64, 256}, "
        "resolution in {28, 64, 128, 256}; plus the two CPU headline sizes",
        merge(sweep(Point(64, 64, 64, 64), batch=(1, 64, 1024), markers=(10, 25, 64, 256),
                    resolution=(28, 64, 128, 256)), tagged(HEADLINE, "key")),
        min_sample_s=0.05, samples=15, max_case_s=30.0, training_steps=50,
    ),
    "composites": Preset(
        "every composite mode (max, softor, over, smoothmax at temperature 1) at the CPU headline size "
        "B=256, N=64, 28x28 and at B=16, N=256, 128x128",
        tagged((HEADLINE[0], Point(16, 256, 128, 128)), "key"),
        min_sample_s=0.05, samples=9, max_case_s=20.0, training_steps=0, composites=COMPOSITES,
    ),
    "training": Preset(
        "the training-throughput section alone (as in full): no kernel sizes",
        {}, min_sample_s=0.05, samples=15, max_case_s=30.0, training_steps=50,
    ),
    "gpu": Preset(
        "the two GPU headline sizes and large sizes: B in {1, 64, 256, 1024, 4096} at N=64, 28x28; "
        "N in {10, 25, 64, 256} at B=256, 128x128; resolution in {28, 64, 128, 256} at B=256, N=64; "
        "B=4096, N=256, 64x64 and B=1024, N=256, 256x256 (the reference is skipped where it does not fit); "
        "the two headline sizes in every composite mode too",
        merge(sweep(Point(1024, 64, 28, 28), batch=(1, 64, 256, 1024, 4096)),
              sweep(Point(256, 64, 128, 128), markers=(10, 25, 64, 256), resolution=(28, 64, 128, 256)),
              tagged(GPU_TARGETS, "key"), tagged((Point(4096, 256, 64, 64), Point(1024, 256, 256, 256)), "large")),
        min_sample_s=0.01, samples=7, max_case_s=2.0, training_steps=50, devices=("cuda",),
        composites=COMPOSITES, composite_points=GPU_TARGETS,
    ),
}
