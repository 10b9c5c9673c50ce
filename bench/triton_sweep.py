"""Time the Triton kernels' block sizes on a GPU, to choose the table in splatkern/triton_kernels.py.

    python bench/triton_sweep.py [--out DIR] [--budget-s SECONDS] [--composite MODE [--temperature T]]
    python bench/triton_sweep.py --report DIR    # (no GPU) DIR/triton_sweep.md from DIR/triton_sweep.json

For each size below, every candidate forward block and every candidate backward block runs the
kernel launcher (``triton_kernels.forward`` / ``backward`` with an explicit ``config``) captured in a
CUDA graph, so the time is the kernels' alone (no per-call host work, no value-check sync; the
harness of bench/run.py: median per call over samples). Each candidate's output is compared with
the table's own (the one the tests check against the reference): the forward's image and winner map
must be identical, the backward's gradients equal within float32 summation-order rounding.
``--composite softor|over|smoothmax`` sweeps that mode's soft kernels instead (the default, max, the
kernels above): both take the forward's 4-D tiles, so the forward's candidates serve both.

Writes triton_sweep.json and triton_sweep.md to DIR (default bench/results/<device>/triton_sweep/, or
triton_sweep_<mode>/ for a soft mode)
after every size, so a run cut short keeps what it measured. bench/gpu_check.sh brings back only the
JSON (the device tool returns at most 8 files); ``--report`` renders the Markdown from it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as `python bench/triton_sweep.py`
    sys.path.append(str(REPO))

import torch  # noqa: E402

from bench import results_folder_name  # noqa: E402
from bench.cases import Point, captured_in_cuda_graph, make_inputs  # noqa: E402
from bench.harness import time_calls  # noqa: E402

# The two GPU headline sizes first, then the large ones.
SIZES = [Point(1024, 64, 28, 28), Point(256, 256, 128, 128), Point(4096, 256, 64, 64), Point(1024, 256, 256, 256)]

# Forward: (num_warps, ROW_REPEATS, COL_REPEATS); a warp's lanes cover 4 rows x 8 columns, warps
# stacked, so the tile is (ROW_REPEATS * 4 * num_warps) x (COL_REPEATS * 8) pixels, and each thread
# computes ROW_REPEATS + COL_REPEATS exponentials per marker for ROW_REPEATS x COL_REPEATS pixels.
FORWARD_SHAPES = [(1, 8, 4), (2, 4, 4), (4, 2, 4), (1, 4, 4), (1, 8, 8), (2, 8, 4), (4, 4, 4), (2, 4, 8)]
# Backward: pixels per program and warps. 64 and 128 are candidates because at 28 x 28 they waste
# fewer of a program's slots (784 pixels: 4 x 256 or 7 x 128).
BACKWARD_PIXELS = [64, 128, 256, 512, 1024, 2048]
BACKWARD_WARPS = [1, 2, 4, 8, 16]
MAX_PIXELS_PER_THREAD = 16


def forward_configs() -> list[dict]:
    return [dict(ROW_REPEATS=rows, COL_REPEATS=cols, ROW_SPAN=4 * warps, COL_SPAN=8, num_warps=warps)
            for warps, rows, cols in FORWARD_SHAPES]


def backward_configs() -> list[dict]:
    return [dict(BLOCK_PIX=pixels, num_warps=warps) for pixels, warps in itertools.product(BACKWARD_PIXELS, BACKWARD_WARPS)
            if 32 * warps <= pixels and pixels // (32 * warps) <= MAX_PIXELS_PER_THREAD]


def _label(config: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in config.items())


def _time(call, device) -> dict:
    # (On CPU tensors, under the interpreter, only the smoke test calls this: no graph there.)
    timing = time_calls(captured_in_cuda_graph(call) if device.type == "cuda" else call, device,
                        min_sample_s=0.02, samples=7, max_total_s=0.6)
    return dict(median_s=timing.median_s, best_s=timing.best_s, iqr_s=timing.iqr_s)


def sweep_point(point: Point, device: torch.device, composite: str = "max", temperature: float = 1.0) -> dict:
    """`composite` other than "max": the soft kernels, whose backward takes the forward's tiles."""
    from splatkern import triton_kernels  # noqa: PLC0415

    mode = dict(composite=composite, temperature=temperature)
    means, sigmas, amps = make_inputs(point, device)  # amps in [0.5, 1]: every mode takes them
    height, width = point.height, point.width
    upstream = torch.randn(point.batch, height, width, generator=torch.Generator().manual_seed(1)).to(device)
    image, index = triton_kernels.forward(means, sigmas, amps, height, width, **mode)
    grads = triton_kernels.backward(upstream, means, sigmas, amps, index, False, **mode)
    rows = []
    for config in forward_configs():
        row = dict(kernel="forward", config=config)
        try:
            got_image, got_index = triton_kernels.forward(means, sigmas, amps, height, width, config, **mode)
            row["image_equal"] = bool(torch.equal(got_image, image))
            if composite == "max":
                row["index_mismatches"] = int((got_index != index).sum())
            row.update(_time(lambda c=config: triton_kernels.forward(means, sigmas, amps, height, width, c, **mode),
                             device))
        except Exception as error:  # noqa: BLE001 - a config that does not build is a result too
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        rows.append(row)
    for config in backward_configs() if composite == "max" else forward_configs():
        row = dict(kernel="backward", config=config)
        try:
            got = triton_kernels.backward(upstream, means, sigmas, amps, index, False, config, **mode)
            row["grads_max_rel_diff"] = max(
                float((g - want).abs().max() / want.abs().max().clamp_min(1e-30)) for g, want in zip(got, grads)
            )
            row.update(_time(
                lambda c=config: triton_kernels.backward(upstream, means, sigmas, amps, index, False, c, **mode), device
            ))  # fmt: skip
        except Exception as error:  # noqa: BLE001
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        rows.append(row)
    if composite == "max":
        table = dict(forward=triton_kernels._forward_config(height, width, means.dtype),
                     backward=triton_kernels._backward_config(height, width))
    else:
        table = dict(forward=triton_kernels._soft_forward_config(height, width, means.dtype, composite),
                     backward=triton_kernels._soft_backward_config(height, width, means.dtype, composite))
    return dict(point=point.label(), batch=point.batch, markers=point.markers, height=height, width=width,
                table=table, rows=rows, **({} if composite == "max" else mode))


def markdown(results: dict) -> str:
    lines = [f"# Triton block sweep — {results['device']}", "",
             f"torch {results['torch']}, triton {results['triton']}, splatkern at {results['commit']}. "
             "Times: CUDA-graph replays of one launcher call, median per call. "
             "`python bench/triton_sweep.py`; bench/triton_sweep.py says what is compared.", ""]
    for point in results["points"]:
        mode = f" — composite {point['composite']}" if "composite" in point else ""
        mode += f", temperature {point['temperature']}" if point.get("composite") == "smoothmax" else ""
        lines += [f"## {point['point']}{mode}", "", f"Table's choice: forward {_label(point['table']['forward'])}; "
                  f"backward {_label(point['table']['backward'])}.", ""]
        for kernel in ("forward", "backward"):
            rows = [r for r in point["rows"] if r["kernel"] == kernel]
            rows.sort(key=lambda r: r.get("median_s", float("inf")))
            lines += [f"| {kernel} config | median µs | best µs | check |", "|---|---:|---:|---|"]
            for r in rows:
                if "error" in r:
                    lines.append(f"| {_label(r['config'])} | — | — | {r['error'][:80]} |")
                    continue
                check = (f"image equal: {r['image_equal']}" + (f", index mismatches: {r['index_mismatches']}"
                                                                if "index_mismatches" in r else "")
                         if kernel == "forward" else f"max rel. diff {r['grads_max_rel_diff']:.1e}")
                lines.append(f"| {_label(r['config'])} | {r['median_s'] * 1e6:.1f} | {r['best_s'] * 1e6:.1f} | {check} |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--budget-s", type=float, default=240.0, help="stop starting new sizes after this long")
    parser.add_argument("--report", type=Path, metavar="DIR", help="only write DIR/triton_sweep.md from its JSON")
    parser.add_argument("--composite", default="max", choices=["max", "softor", "over", "smoothmax"],
                        help="the mode whose kernels to sweep (default: max)")
    parser.add_argument("--temperature", type=float, default=1.0, help="smoothmax's temperature")
    args = parser.parse_args(argv)
    if args.report:
        results = json.loads((args.report / "triton_sweep.json").read_text())
        (args.report / "triton_sweep.md").write_text(markdown(results))
        return 0
    if not torch.cuda.is_available():
        print("bench/triton_sweep.py needs a CUDA device", file=sys.stderr)
        return 2
    import triton  # noqa: PLC0415

    from bench.run import git_commit  # noqa: PLC0415 - the runner's commit reading (SPLATKERN_GIT_COMMIT without .git)

    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    folder = "triton_sweep" if args.composite == "max" else f"triton_sweep_{args.composite}"
    out = args.out or REPO / "bench" / "results" / results_folder_name(name) / folder
    out.mkdir(parents=True, exist_ok=True)
    head, dirty = git_commit()
    commit = f"{head or 'unknown'}{' (uncommitted changes)' if dirty else ''}"
    results = dict(device=name, torch=torch.__version__, triton=triton.__version__, commit=commit, points=[])
    start = time.perf_counter()
    for point in SIZES:
        if time.perf_counter() - start > args.budget_s:
            print(f"budget spent: {point.label()} and later sizes skipped", flush=True)
            break
        results["points"].append(sweep_point(point, device, args.composite, args.temperature))
        torch.cuda.empty_cache()
        (out / "triton_sweep.json").write_text(json.dumps(results, indent=1))
        (out / "triton_sweep.md").write_text(markdown(results))
        best = {k: min((r for r in results["points"][-1]["rows"] if r["kernel"] == k and "median_s" in r),
                       key=lambda r: r["median_s"], default=None) for k in ("forward", "backward")}
        print(f"{point.label()} ({time.perf_counter() - start:.0f} s): " + "; ".join(
            f"{k} best {r['median_s'] * 1e6:.1f} us with {_label(r['config'])}" for k, r in best.items() if r), flush=True)
    print(f"wrote {out}/triton_sweep.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
