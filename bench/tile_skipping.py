"""What the CPU kernels of the soft composites save by visiting each marker only on its support
(the rows and column vectors of a tile where its value can be nonzero): forward+backward of every
soft mode with and without it (SPLATKERN_CPU_SUPPORTS=1 / 0, read once per process, so each
setting runs in its own process).

    python bench/tile_skipping.py [--out DIR]

Writes results.json and results.md to DIR (default bench/results/cpu <model>/tile_skipping/).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as `python bench/tile_skipping.py`: make `bench` importable
    sys.path.append(str(REPO))

import torch  # noqa: E402

from bench.harness import time_calls  # noqa: E402
from bench.study import describe, run_child, run_meta, write_results  # noqa: E402
from splatkern import splat_render  # noqa: E402
from splatkern.testing import SOFT_COMPOSITES  # noqa: E402

# (label, batch, markers, size, sigma range in px): the sparse case and the CPU headline size
# with the article's marker sizes.
CASES = (("sparse", 16, 256, 128, (1.0, 3.0)), ("headline", 256, 64, 28, (0.2, 2.0)))
SETTINGS = {"supports": "1", "every pixel": "0"}


def time_case(composite: str, batch: int, markers: int, size: int, sigma_range) -> float:
    """Median seconds of one forward+backward on the CPU backend."""
    gen = torch.Generator().manual_seed(0)
    means = (torch.rand(batch, markers, 2, generator=gen) * size).requires_grad_()
    lo, hi = sigma_range
    sigmas = (lo + (hi - lo) * torch.rand(batch, markers, generator=gen)).requires_grad_()
    amps = torch.rand(batch, markers, generator=gen).requires_grad_()
    upstream = torch.randn(batch, size, size, generator=gen)

    def step():
        splat_render(means, sigmas, amps, height=size, width=size, composite=composite, backend="cpu").backward(upstream)

    return time_calls(step, torch.device("cpu"), min_sample_s=0.05, samples=9, max_total_s=20.0).median_s


def measure_here() -> dict:
    return {f"{label} {composite}": time_case(composite, *case) for label, *case in CASES
            for composite in SOFT_COMPOSITES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_here()))
        return
    times = {name: run_child(__file__, [], {"SPLATKERN_CPU_SUPPORTS": value}) for name, value in SETTINGS.items()}
    meta = run_meta(torch.device("cpu"))
    lines = [f"# Support skipping of the soft composites, CPU forward+backward — {meta['device_name']}", "",
             describe(meta), "float32, median time per call; markers uniform over the canvas.", "",
             "| case | composite | supports ms | every pixel ms | saved |", "|---|---|---:|---:|---:|"]
    for label, batch, markers, size, (lo, hi) in CASES:
        for composite in SOFT_COMPOSITES:
            key = f"{label} {composite}"
            with_, without = times["supports"][key], times["every pixel"][key]
            lines.append(f"| B={batch} N={markers} {size}x{size}, sigma {lo}-{hi} px | {composite} | "
                         f"{with_ * 1e3:.2f} | {without * 1e3:.2f} | {1 - with_ / without:.0%} |")
    write_results(args.out, "tile_skipping", meta, {"seconds": times}, lines)


if __name__ == "__main__":
    main()
