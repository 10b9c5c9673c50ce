"""Writing a run's results: results.json (everything), results.md (tables) and PNG plots."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bench.cases import COMPILED, MODES  # noqa: E402

JSON_NAME, MARKDOWN_NAME = "results.json", "results.md"
PLOTS = {  # file name: (sweep tag, x-axis label, the point's x value)
    "time_vs_markers.png": ("markers", "markers N", lambda r: r["markers"]),
    "time_vs_resolution.png": ("resolution", "pixels H x W", lambda r: r["height"] * r["width"]),
    "time_vs_batch.png": ("batch", "batch B", lambda r: r["batch"]),
}
SPEEDUP_PLOT = "speedup.png"
# one colour per implementation in every plot; a backend not listed gets matplotlib's next colour
COLORS = dict(zip(("reference", COMPILED, "cpu", "cuda", "triton", "cuda+graph", "triton+graph",
                   "cuda+deterministic+graph", "triton+deterministic+graph"), plt.get_cmap("tab10").colors))


def write_tables(results: dict, out_dir: Path) -> list[Path]:
    """results.json and results.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / JSON_NAME, out_dir / MARKDOWN_NAME]
    written[0].write_text(json.dumps(results, indent=2) + "\n")
    written[1].write_text(markdown(results))
    return written


def write_all(results: dict, out_dir: Path) -> list[Path]:
    """The tables and every plot the results have data for."""
    written = write_tables(results, out_dir)
    # The plots compare implementations: of one composite, max (the composites preset's table has the rest).
    timed = [row for row in results["cases"] if row.get("median_s") and row.get("composite", "max") == "max"]
    for name, (tag, xlabel, x_of) in PLOTS.items():
        rows = [row for row in timed if tag in row["sweeps"]]
        if len({x_of(row) for row in rows}) > 1:  # a curve needs two sizes
            _time_plot(rows, x_of, xlabel, f"time vs {xlabel} ({_sweep_title(rows, tag)})", out_dir / name)
            written.append(out_dir / name)
    key_rows = [row for row in timed if "key" in row["sweeps"]]
    if key_rows:
        _speedup_plot(key_rows, out_dir / SPEEDUP_PLOT)
        written.append(out_dir / SPEEDUP_PLOT)
    return written


def _sweep_title(rows: list[dict], tag: str) -> str:
    fixed = {"markers": ("batch", "height"), "resolution": ("batch", "markers"), "batch": ("markers", "height")}[tag]
    first = rows[0]
    names = {"batch": "B", "markers": "N", "height": "res"}
    return ", ".join(f"{names[name]}={first[name]}" for name in fixed)


def _label(row: dict) -> str:
    return f"B={row['batch']} N={row['markers']} {row['height']}x{row['width']}"


def _fmt(value, scale: float = 1.0, digits: int = 3) -> str:
    return "—" if value is None else f"{value * scale:.{digits}g}"


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"# splat_render benchmark — {meta['device_name']} ({meta['preset']})",
        "",
        f"torch {meta['torch']}, triton {meta['triton']}, splatkern at {meta['git_commit']}"
        f"{' (uncommitted changes)' if meta['git_dirty'] else ''}, {meta['threads']} CPU threads, {meta['created']}.",
        f"Sizes: {meta['sizes']}. float32, times per call (median over samples, IQR = 75th − 25th percentile).",
        "",
    ]
    limit = results["limit"]
    if "unavailable" in limit:
        lines.append(f"Hardware limit: unavailable — {limit['unavailable']}.")
    elif limit["kind"] == "cpu-multiply-max":
        rate = limit["pairs_per_s"] / 1e9
        calibrations = limit.get("calibrations_pairs_per_s")
        both = (f" (the faster of two calibrations, at the start and the end of the run: "
                f"{calibrations[0] / 1e9:.2f} and {calibrations[1] / 1e9:.2f})") if calibrations else ""
        lines.append(f"Hardware limit (CPU): multiply-compare-select loop at {rate:.2f} G pairs/s "
                     f"({limit['vector_bits']}-bit vectors, {limit['threads']} threads), measured in this run{both}.")
    else:
        lines.append(f"Hardware limit (GPU, {limit['model']}): {limit['op_rate'] / 1e12:.1f} T FP32 instructions/s "
                     f"(datasheet {limit['fp32_flops'] / 1e12:.0f} TFLOPS / 2), "
                     f"{limit['hbm_bytes_per_s'] / 1e12:.2f} TB/s HBM; limit = max(pairs x 4 / that, bytes / HBM).")
    for name, reason in results["excluded"].items():
        lines.append(f"Excluded: {name} — {reason}.")
    lines += [
        "",
        "| size | mode | composite | implementation | median ms | IQR ms | G pairs/s | peak MiB | × vs reference | "
        "× vs compile | memory ÷ reference | time ÷ max's | % of limit | % of limit, best sample |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["cases"]:
        composite = row.get("composite", "max")
        if row.get("skipped"):
            lines.append(f"| {_label(row)} | {row['mode']} | {composite} | {row['implementation']} | "
                         f"skipped: {row['skipped']} | | | | | | | | | |")
            continue
        lines.append(
            f"| {_label(row)} | {row['mode']} | {composite} | {row['implementation']} | {_fmt(row['median_s'], 1e3)} | "
            f"{_fmt(row['iqr_s'], 1e3, 2)} | {_fmt(row['pairs_per_s'], 1e-9)} | {_fmt(row['peak_bytes'], 2**-20)} | "
            f"{_fmt(row['speedup_vs_reference'])} | {_fmt(row['speedup_vs_compiled'])} | "
            f"{_fmt(row['memory_vs_reference'])} | {_fmt(row.get('time_vs_max'))} | {_fmt(row['limit_fraction'], 100, 2)} | "
            f"{_fmt(row.get('limit_fraction_best'), 100, 2)} |"
        )
    lines += ["", *training_markdown(results["training"]), ""]
    return "\n".join(lines)


def training_markdown(training: dict) -> list[str]:
    lines = ["## Training throughput (velocity-gesture autoencoder, Adam, MSE)", ""]
    if "skipped" in training:
        return [*lines, f"Skipped: {training['skipped']}."]
    if "error" in training:
        return [*lines, f"Failed: {training['error']}."]
    lines += [f"Data: {training['data']}; per row {training['warmup_steps']} warm-up and {training['timed_steps']} "
              "timed steps (images/s over the timed ones; render = the model's splat_render calls alone).", "",
              "| backend | batch | images/s | step median ms | step IQR ms | render ms (fwd+bwd) | render share |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for row in training["rows"]:
        lines.append(f"| {row['backend']} | {row['batch']} | {row['images_per_s']:.1f} | "
                     f"{row['step_median_s'] * 1e3:.2f} | {row['step_iqr_s'] * 1e3:.2f} | "
                     f"{row['render_s'] * 1e3:.3f} | {row['render_share']:.1%} |")
    return lines


def _time_plot(rows: list[dict], x_of, xlabel: str, title: str, path: Path) -> None:
    figure, axes = plt.subplots(1, len(MODES), figsize=(11, 4.2), sharey=True)
    for axis, mode in zip(axes, MODES):
        curves = defaultdict(list)
        for row in rows:
            if row["mode"] == mode:
                curves[row["implementation"]].append((x_of(row), row["median_s"] * 1e3, row["iqr_s"] * 1e3))
        for implementation, points in sorted(curves.items()):
            points.sort()
            xs, ys, errors = zip(*points)
            axis.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=implementation,
                          color=COLORS.get(implementation))
        axis.set(xscale="log", yscale="log", xlabel=xlabel, title=mode)
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median time per call (ms)")
    axes[0].legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _speedup_plot(rows: list[dict], path: Path) -> None:
    """Bars: each implementation's speed-up over the reference and over the compiled reference."""
    groups = sorted({(_label(row), row["mode"]) for row in rows})
    by_key = {(_label(row), row["mode"], row["implementation"]): row for row in rows}
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for axis, (field, baseline) in zip(axes, (("speedup_vs_reference", "reference"),
                                              ("speedup_vs_compiled", COMPILED))):
        implementations = sorted({row["implementation"] for row in rows} - {baseline})
        width = 0.8 / max(1, len(implementations))
        for k, implementation in enumerate(implementations):
            heights = [(by_key.get((*group, implementation)) or {}).get(field) or 0 for group in groups]
            axis.bar([g + k * width for g in range(len(groups))], heights, width, label=implementation,
                     color=COLORS.get(implementation))
        axis.axhline(1.0, color="black", linewidth=0.8)
        axis.set_xticks([g + width * (len(implementations) - 1) / 2 for g in range(len(groups))],
                        [f"{label}\n{mode}" for label, mode in groups], fontsize=7)
        axis.set(yscale="log", title=f"speed-up over {baseline}")
        axis.grid(True, axis="y", which="both", alpha=0.3)
        axis.legend(fontsize=8)
    axes[0].set_ylabel("× faster (log)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
