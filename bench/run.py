"""Benchmark splat_render: every available backend and torch.compile of the reference, forward and
forward+backward, over a preset's sizes; then the gesture model's training throughput.

    python bench/run.py --preset {quick,headline,full,gpu} [--device cpu|cuda] [--out DIR]

Writes results.json, results.md and PNG plots to DIR (default bench/results/<device>/<preset>/).
bench/README.md says what every number means.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as `python bench/run.py`: make `bench` importable
    sys.path.append(str(REPO))

import torch  # noqa: E402

from bench import report, results_folder_name, training  # noqa: E402
from bench.cases import COMPILED, GRAPHED, MODES, Point, implementations, make_case, modes_of, reference_fits  # noqa: E402
from bench.harness import cpu_memory_method, peak_memory_bytes, time_calls  # noqa: E402
from bench.limits import describe_limit, limit_seconds, recalibrated  # noqa: E402
from bench.presets import PRESETS  # noqa: E402
from splatkern import data  # noqa: E402

BASELINES = {"speedup_vs_reference": "reference", "speedup_vs_compiled": COMPILED}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick",
                        help="; ".join(f"{name}: {preset.description}" for name, preset in PRESETS.items()))
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--out", type=Path, help="output folder (default bench/results/<device>/<preset>/)")
    parser.add_argument("--backends", help="comma-separated subset of the implementations to run (default: all)")
    parser.add_argument("--data-dir", type=Path, default=data.DEFAULT_DATA_DIR,
                        help="torchvision-layout folder holding MNIST for the training section "
                             "(default: %(default)s; without MNIST there, scikit-learn's digits)")
    parser.add_argument("--no-training", action="store_true", help="skip the training-throughput section")
    return parser.parse_args(argv)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> tuple[str | None, bool]:
    """HEAD of the checkout and whether it has uncommitted changes; SPLATKERN_GIT_COMMIT where there is no .git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True, check=True)
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("SPLATKERN_GIT_COMMIT"), False


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure(implementation: str, mode: str, point: Point, device: torch.device, preset, composite: str) -> dict:
    fn = make_case(implementation, mode, point, device, composite)
    fn()  # compiles (torch.compile) and touches code pages once, outside both measurements
    peak = peak_memory_bytes(fn, device)
    timing = time_calls(fn, device, min_sample_s=preset.min_sample_s, samples=preset.samples,
                        max_total_s=preset.max_case_s)
    return {"median_s": timing.median_s, "iqr_s": timing.iqr_s, "best_s": timing.best_s, "samples": timing.samples,
            "calls_per_sample": timing.calls_per_sample, "pairs_per_s": point.pairs / timing.median_s,
            "peak_bytes": peak}


def add_ratios(rows: dict[str, dict], limit: dict, max_rows: dict[str, dict]) -> None:
    """Speed-ups and memory against the baselines measured in this run, time against the same
    implementation's with composite "max" (`max_rows`), and the fraction of the limit."""
    reference = rows.get("reference", {})
    for implementation, row in rows.items():
        if not row.get("median_s"):
            continue
        max_time = max_rows.get(implementation, {}).get("median_s")
        row["time_vs_max"] = row["median_s"] / max_time if max_time else None
        for field, baseline in BASELINES.items():
            base = rows.get(baseline, {}).get("median_s")
            row[field] = base / row["median_s"] if base else None
        peak, reference_peak = row["peak_bytes"], reference.get("peak_bytes")
        row["memory_vs_reference"] = peak / reference_peak if peak is not None and reference_peak else None
        set_limit_fraction(row, limit)


def set_limit_fraction(row: dict, limit: dict) -> None:
    if row.get("composite", "max") != "max":  # the limit is that of max's multiply-compare-select loop
        row["limit_s"] = row["limit_fraction"] = row["limit_fraction_best"] = None
        return
    row["limit_s"] = limit_seconds(limit, row["batch"], row["markers"], row["height"] * row["width"], row["mode"])
    row["limit_fraction"] = row["limit_s"] / row["median_s"] if row["limit_s"] else None
    row["limit_fraction_best"] = row["limit_s"] / row["best_s"] if row["limit_s"] else None


def describe(row: dict) -> str:
    if row.get("skipped"):
        return f"skipped: {row['skipped']}"
    text = (f"{row['median_s'] * 1e3:9.3f} ms ±{row['iqr_s'] * 1e3:7.3f} IQR, "
            f"{row['pairs_per_s'] / 1e9:8.3g} G pairs/s")
    if row["peak_bytes"] is not None:
        text += f", peak {row['peak_bytes'] / 2**20:8.2f} MiB"
    for field, short in (("speedup_vs_reference", "ref"), ("speedup_vs_compiled", "compile")):
        if row.get(field):
            text += f", {row[field]:7.1f}x {short}"
    if row.get("composite", "max") != "max" and row.get("time_vs_max"):
        text += f", {row['time_vs_max']:.2f}x max's time"
    if row.get("limit_fraction"):
        text += f", {row['limit_fraction']:.1%} of limit (best sample {row['limit_fraction_best']:.1%})"
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type not in preset.devices:
        sys.exit(f"--preset {args.preset} is for {'/'.join(preset.devices)} devices, not {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch.cuda.is_available() is False here")

    names, excluded = implementations(device)
    if args.backends:
        wanted = args.backends.split(",")
        unknown = set(wanted) - set(names) - set(excluded)
        if unknown:
            sys.exit(f"--backends: {sorted(unknown)} not available on {device.type}; available: {names}")
        names = [name for name in names if name in wanted]
    name = device_name(device)
    threads = torch.get_num_threads()
    print(f"device {device} ({name}), {threads} threads, torch {torch.__version__}; implementations: {names}")
    for backend, reason in excluded.items():
        print(f"excluded {backend}: {reason}")
    if device.type == "cpu" and cpu_memory_method():
        print(f"CPU peak memory not measured: {cpu_memory_method()}")

    limit = describe_limit(device, threads)
    print("hardware limit:", limit.get("unavailable") or {k: v for k, v in limit.items() if not isinstance(v, dict)})
    commit, dirty = git_commit()
    results = {
        "meta": {
            "device": device.type, "device_name": name, "preset": args.preset, "sizes": preset.description,
            "torch": torch.__version__, "triton": package_version("triton"), "python": platform.python_version(),
            "git_commit": commit, "git_dirty": dirty, "threads": threads,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "dtype": "float32",
        },
        "implementations": names,
        "excluded": excluded,
        "limit": limit,
        "cases": [],
        "training": {"skipped": "not run yet"},
    }
    device_folder = results_folder_name(f"cpu {name}" if device.type == "cpu" else name)
    out_dir = args.out or REPO / "bench" / "results" / device_folder / args.preset

    started, errors = time.perf_counter(), 0
    # Target sizes first: a run cut short (a GPU lease ends) has measured them.
    for point, tags in sorted(preset.points.items(), key=lambda item: ("key" not in item[1], item[0])):
        rows, point_errors = measure_point(point, tags, names, device, preset, limit)
        results["cases"].extend(rows)
        errors += point_errors
        report.write_tables(results, out_dir)  # a run cut short still leaves what it measured
        print(f"  ({time.perf_counter() - started:.0f} s so far)", flush=True)

    results["limit"] = limit = recalibrated(limit, threads)
    if limit.get("calibrations_pairs_per_s"):
        print("hardware limit calibrated again:", limit["calibrations_pairs_per_s"], "pairs/s; the limit is the faster")
        for row in results["cases"]:
            if row.get("median_s"):
                set_limit_fraction(row, limit)
    results["training"] = run_training(args, preset, names, device)
    errors += "error" in results["training"]
    for path in report.write_all(results, out_dir):
        print("wrote", path)
    if errors:
        print(f"{errors} case(s) failed: see 'skipped' and 'training' in {out_dir / report.JSON_NAME}")
    return 1 if errors else 0


def measure_point(point: Point, tags: tuple[str, ...], names: list[str], device: torch.device, preset,
                  limit: dict) -> tuple[list[dict], int]:
    """Every implementation in both modes and each of the preset's composites at `point`, with ratios;
    and how many cases failed."""
    too_big = reference_fits(point, device)
    cases, errors = [], 0
    for composite in preset.composites_at(point):
        torch._dynamo.reset()  # compile each size once, statically; no recompile limit across sizes
        for mode in MODES:
            rows = {}
            for implementation in filter(lambda name: mode in modes_of(name), names):
                row = {"batch": point.batch, "markers": point.markers, "height": point.height, "width": point.width,
                       "pairs": point.pairs, "sweeps": list(tags), "mode": mode, "composite": composite,
                       "implementation": implementation}
                if too_big and implementation in ("reference", COMPILED):
                    row["skipped"] = too_big
                else:
                    try:
                        row.update(measure(implementation, mode, point, device, preset, composite))
                    except Exception as error:  # one failing case must not lose the rest of a GPU run
                        traceback.print_exc()
                        errors += 1
                        row["skipped"] = f"error: {first_line(error)}"
                    release_memory(device)
                rows[implementation] = row
            max_rows = {row["implementation"]: row for row in cases if row["mode"] == mode and row["composite"] == "max"}
            add_ratios(rows, limit, max_rows)
            for implementation, row in rows.items():
                print(f"{point.label():>24} {mode:>16} {composite:>9} {implementation:>18}: {describe(row)}", flush=True)
            cases.extend(rows.values())
    return cases, errors


def first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"


def run_training(args: argparse.Namespace, preset, names: list[str], device: torch.device) -> dict:
    if args.no_training or not preset.training_steps:
        return {"skipped": "--no-training" if args.no_training else f"preset {args.preset} has no training section"}
    backends = [name for name in names if name != COMPILED and not name.endswith(GRAPHED)]
    timing = {"min_sample_s": preset.min_sample_s, "samples": preset.samples, "max_total_s": preset.max_case_s}
    try:
        return training.training_throughput(backends, preset.training_batches, preset.training_steps, device,
                                            args.data_dir, timing)
    except Exception as error:  # e.g. the model fails to build: an error, but the kernel results are kept
        traceback.print_exc()
        return {"error": first_line(error)}


if __name__ == "__main__":
    sys.exit(main())
