"""stroke_render, forward+backward: the fused kernels against the reference and torch.compile of
the reference, at the gesture model's size (one stroke of 25 vertices, 28x28) and a sketch size (16
strokes of 8 vertices, 128x128); segment-pixel pairs per second, the share of pairs outside every
segment's culling box and the memory each implementation's calls take. On the CPU: the `cpu`
kernel, also with culling off (SPLATKERN_CPU_SUPPORTS=0), memory as the process's peak RSS above its
RSS once the inputs exist. On a GPU: the `cuda` kernel (also deterministic) and `triton`, memory as
the peak of torch's allocations above the inputs'. Each measurement runs in its own process (the
culling setting is read once per process; peak memory is the process's).

    python bench/strokes.py [--device cpu|cuda] [--out DIR] [--quick]

Writes results.json and results.md to DIR (default bench/results/<device>/strokes/).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as `python bench/strokes.py`: make `bench` importable
    sys.path.append(str(REPO))

import torch  # noqa: E402

from bench.harness import time_calls  # noqa: E402
from bench.study import describe, run_child, run_meta, write_results  # noqa: E402
from splatkern import stroke_render, stroke_render_reference  # noqa: E402
from splatkern.facts import FLUSH_EXPONENT  # noqa: E402

# (label, batch, strokes, vertices, size, step px, sigma range px)
CASES = (("gesture", 256, 1, 25, 28, 1.5, (0.7, 2.0)), ("sketch", 64, 16, 8, 128, 10.0, (1.0, 3.0)))
QUICK_CASES = (("gesture", 16, 1, 25, 28, 1.5, (0.7, 2.0)), ("sketch", 2, 4, 8, 64, 10.0, (1.0, 3.0)))
IMPLEMENTATIONS = {"cpu": ("cpu", "cpu, no culling", "reference", "compiled reference"),
                   "cuda": ("cuda", "cuda, deterministic", "triton", "reference", "compiled reference")}


def pen_paths(batch, strokes, vertices, size, step, sigma_range):
    """Random walks from a point over the canvas: a pen's path."""
    gen = torch.Generator().manual_seed(0)
    start = torch.rand(batch, strokes, 1, 2, generator=gen) * size
    paths = torch.cat([start, start + (torch.randn(batch, strokes, vertices - 1, 2, generator=gen) * step).cumsum(2)], 2)
    lo, hi = sigma_range
    sigmas = lo + (hi - lo) * torch.rand(batch, strokes, vertices, generator=gen)
    amps = 0.3 + 0.7 * torch.rand(batch, strokes, vertices, generator=gen)
    return paths, sigmas, amps


def culled_share(paths, sigmas, size) -> float:
    """The share of segment-pixel pairs outside every segment's box, the rule of csrc/stroke_cpu.cpp."""
    reach = math.sqrt(2 * FLUSH_EXPONENT["float32"]) * torch.maximum(sigmas[..., :-1], sigmas[..., 1:]) + 1
    lo = torch.minimum(paths[..., :-1, :], paths[..., 1:, :]) - reach[..., None]
    hi = torch.maximum(paths[..., :-1, :], paths[..., 1:, :]) + reach[..., None]
    inside = ((hi.floor().clamp(-1, size - 1) - lo.ceil().clamp(0, size) + 1).clamp(min=0)).prod(-1)
    return 1 - float(inside.sum()) / (inside.numel() * size * size)


def measure(implementation: str, case: tuple, device: torch.device) -> dict:
    label, batch, strokes, vertices, size, step, sigma_range = case
    inputs = pen_paths(batch, strokes, vertices, size, step, sigma_range)
    paths, sigmas, amps = (t.to(device).requires_grad_() for t in inputs)
    upstream = torch.randn(batch, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    backend = implementation.split(",")[0]
    if backend in ("cpu", "cuda", "triton"):
        deterministic = implementation.endswith("deterministic")

        def render():
            return stroke_render(paths, sigmas, amps, height=size, width=size, backend=backend,
                                 deterministic=deterministic)
    else:
        def reference(p, s, a):
            return stroke_render_reference(p, s, a, size, size)[0]
        render_fn = torch.compile(reference) if implementation == "compiled reference" else reference

        def render():
            return render_fn(paths, sigmas, amps)

    def step_call():
        render().backward(upstream)

    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
        inputs_bytes = torch.cuda.memory_allocated(device)
    else:
        inputs_rss = current_rss_kib()
    step_call()  # warm-up (compiles)
    # Nine samples where they fit in a minute: the references' times swing by 2x between calls
    # (their allocations), which three samples did not average out.
    timing = time_calls(step_call, device, min_sample_s=0.05, samples=9, max_total_s=60.0)
    pairs = batch * strokes * max(vertices - 1, 1) * size * size
    if on_gpu:
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        work_mib = peak_mib - inputs_bytes / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        work_mib = max(peak_mib - inputs_rss / 1024, 0)
    return {"median_s": timing.median_s, "iqr_s": timing.iqr_s, "pairs_per_s": pairs / timing.median_s,
            "work_memory_mib": work_mib, "peak_memory_mib": peak_mib,
            "culled": culled_share(paths.detach().cpu(), sigmas.detach().cpu(), size)}


def current_rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = QUICK_CASES if args.quick else CASES
    device = torch.device(args.device)
    if args.child:
        implementation, label = args.child
        print(json.dumps(measure(implementation, next(c for c in cases if c[0] == label), device)))
        return
    implementations = IMPLEMENTATIONS[device.type]
    results: dict[str, dict[str, dict]] = {}
    for case in cases:
        for implementation in implementations:
            culling = {"SPLATKERN_CPU_SUPPORTS": "0" if implementation == "cpu, no culling" else "1"}
            arguments = [implementation, case[0], "--device", args.device, *(["--quick"] if args.quick else [])]
            results.setdefault(case[0], {})[implementation] = run_child(__file__, arguments, culling)
    meta = {**run_meta(device), "quick": args.quick}
    memory = ("the process's peak RSS above its RSS once the inputs exist" if device.type == "cpu"
              else "the peak of torch's allocations above the inputs'")
    lines = [f"# stroke_render, {device.type.upper()} forward+backward — {meta['device_name']}", "",
             f"{describe(meta)} float32, composite max, median time per call; memory: {memory}",
             "(compilation included for the compiled reference).", "",
             "| case | implementation | ms | pairs/s | vs reference | vs compiled | memory MiB | memory vs reference |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for label, batch, strokes, vertices, size, _, (lo, hi) in cases:
        row = results[label]
        name = f"{label}: B={batch} S={strokes} P={vertices} {size}x{size}, sigma {lo}-{hi}"
        for implementation in implementations:
            r = row[implementation]
            memory_share = r["work_memory_mib"] / max(row["reference"]["work_memory_mib"], 1e-9)
            lines.append(f"| {name} | {implementation} | {r['median_s'] * 1e3:.2f} | {r['pairs_per_s']:.3g} | "
                         f"{row['reference']['median_s'] / r['median_s']:.1f}x | "
                         f"{row['compiled reference']['median_s'] / r['median_s']:.1f}x | "
                         f"{r['work_memory_mib']:.1f} | {memory_share:.3f} |")
        lines.append(f"| {name} | pairs outside every segment's box | {row['reference']['culled']:.0%} | | | | | |")
    write_results(args.out, "strokes", meta, {"cases": results}, lines)


if __name__ == "__main__":
    main()
