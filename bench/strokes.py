"""stroke_render, forward+backward on the CPU: the fused kernel against the reference and
torch.compile of the reference, at the gesture model's size (one stroke of 25 vertices, 28x28) and
a sketch size (16 strokes of 8 vertices, 128x128); segment-pixel pairs per second, the share of
pairs outside every segment's culling box, the kernel's time with culling off
(SPLATKERN_CPU_SUPPORTS=0) and each implementation's peak memory. Each measurement runs in its own
process (the setting is read once per process; peak memory is the process's).

    python bench/strokes.py [--out DIR] [--quick]

Writes results.json and results.md to DIR (default bench/results/cpu <model>/strokes/).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as `python bench/strokes.py`: make `bench` importable
    sys.path.append(str(REPO))

import torch  # noqa: E402

from bench import results_folder_name  # noqa: E402
from bench.harness import time_calls  # noqa: E402
from bench.run import device_name, git_commit  # noqa: E402
from splatkern import stroke_render, stroke_render_reference  # noqa: E402
from splatkern.facts import FLUSH_EXPONENT  # noqa: E402

# (label, batch, strokes, vertices, size, step px, sigma range px)
CASES = (("gesture", 256, 1, 25, 28, 1.5, (0.7, 2.0)), ("sketch", 64, 16, 8, 128, 10.0, (1.0, 3.0)))
QUICK_CASES = (("gesture", 16, 1, 25, 28, 1.5, (0.7, 2.0)), ("sketch", 2, 4, 8, 64, 10.0, (1.0, 3.0)))
IMPLEMENTATIONS = ("cpu", "cpu, no culling", "reference", "compiled reference")


def make_strokes(batch, strokes, vertices, size, step, sigma_range):
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


def measure(implementation: str, case: tuple) -> dict:
    label, batch, strokes, vertices, size, step, sigma_range = case
    paths, sigmas, amps = (t.requires_grad_() for t in make_strokes(batch, strokes, vertices, size, step, sigma_range))
    upstream = torch.randn(batch, size, size, generator=torch.Generator().manual_seed(1))
    if implementation.startswith("cpu"):
        def render():
            return stroke_render(paths, sigmas, amps, height=size, width=size, backend="cpu")
    else:
        def reference(p, s, a):
            return stroke_render_reference(p, s, a, size, size)[0]
        render_fn = torch.compile(reference) if implementation == "compiled reference" else reference

        def render():
            return render_fn(paths, sigmas, amps)

    def step_call():
        render().backward(upstream)

    step_call()  # warm-up (compiles)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    slow = implementation.endswith("reference")
    timing = time_calls(step_call, torch.device("cpu"), min_sample_s=0.0 if slow else 0.05, samples=3 if slow else 9,
                        max_total_s=60.0)
    pairs = batch * strokes * max(vertices - 1, 1) * size * size
    return {"median_s": timing.median_s, "pairs_per_s": pairs / timing.median_s,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_timing_mib": rss_before / 1024, "culled": culled_share(paths.detach(), sigmas.detach(), size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = QUICK_CASES if args.quick else CASES
    if args.child:
        implementation, label = args.child
        print(json.dumps(measure(implementation, next(c for c in cases if c[0] == label))))
        return
    results: dict[str, dict[str, dict]] = {}
    for case in cases:
        for implementation in IMPLEMENTATIONS:
            env = {**os.environ, "SPLATKERN_CPU_SUPPORTS": "0" if implementation == "cpu, no culling" else "1"}
            command = [sys.executable, __file__, "--child", implementation, case[0], *(["--quick"] if args.quick else [])]
            child = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            results.setdefault(case[0], {})[implementation] = json.loads(child.stdout)
    commit, dirty = git_commit()
    cpu = device_name(torch.device("cpu"))
    meta = {"device_name": cpu, "threads": torch.get_num_threads(), "torch": torch.__version__, "git_commit": commit,
            "git_dirty": dirty, "quick": args.quick}
    lines = [f"# stroke_render, CPU forward+backward — {cpu}", "",
             f"torch {meta['torch']}, {meta['threads']} threads, splatkern at {commit}"
             f"{' (uncommitted changes)' if dirty else ''}. float32, composite max, median time per call;",
             "peak memory is the measuring process's peak RSS (inputs and torch included).", "",
             "| case | implementation | ms | pairs/s | vs reference | vs compiled | peak RSS MiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for label, batch, strokes, vertices, size, _, (lo, hi) in cases:
        row = results[label]
        name = f"{label}: B={batch} S={strokes} P={vertices} {size}x{size}, sigma {lo}-{hi}"
        for implementation in IMPLEMENTATIONS:
            r = row[implementation]
            lines.append(f"| {name} | {implementation} | {r['median_s'] * 1e3:.2f} | {r['pairs_per_s']:.3g} | "
                         f"{row['reference']['median_s'] / r['median_s']:.1f}x | "
                         f"{row['compiled reference']['median_s'] / r['median_s']:.1f}x | {r['peak_rss_mib']:.0f} |")
        lines.append(f"| {name} | pairs outside every segment's box | {row['cpu']['culled']:.0%} | | | | |")
    out = args.out or REPO / "bench" / "results" / results_folder_name(f"cpu {cpu}") / "strokes"
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"meta": meta, "cases": results}, indent=2) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
