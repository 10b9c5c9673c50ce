"""The benchmark runner's quick preset runs end to end and writes complete results (no timing asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

import splatkern

REPO = Path(__file__).resolve().parents[1]
MODES = {"forward", "forward+backward"}
PLOTS = ("time_vs_markers.png", "time_vs_resolution.png", "speedup.png")


def test_quick_preset_writes_json_markdown_and_plots(tmp_path):
    # A separate process, as users run it; TRITON_INTERPRET is dropped so the expected list of
    # backends is the plain CPU one whatever this pytest process was started with.
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO), env.get("PYTHONPATH"))))
    completed = subprocess.run(
        [sys.executable, "bench/run.py", "--preset", "quick", "--device", "cpu", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    # triton on CPU exists only under the interpreter, which the runner's process does not use
    expected = {*splatkern.available_backends("cpu"), "compile(reference)"} - {"triton"}
    assert set(results["implementations"]) == expected
    assert results["meta"]["device"] == "cpu" and results["meta"]["torch"] == torch.__version__

    cases = results["cases"]
    sizes = {(c["batch"], c["markers"], c["height"], c["width"]) for c in cases}
    assert len(sizes) >= 3
    # every size is measured for every implementation in both modes, with positive times and memory
    assert {(size, c["implementation"], c["mode"]) for size in sizes for c in cases
            if (c["batch"], c["markers"], c["height"], c["width"]) == size} == {
        (size, name, mode) for size in sizes for name in expected for mode in MODES}
    for case in cases:
        assert "skipped" not in case, case
        assert case["median_s"] > 0 and case["iqr_s"] >= 0 and case["samples"] >= 3
        assert case["pairs_per_s"] == case["pairs"] / case["median_s"]
        assert case["peak_bytes"] is not None and case["peak_bytes"] >= 0
        assert case["speedup_vs_reference"] > 0 and case["speedup_vs_compiled"] > 0
        assert 0 < case["limit_fraction"]
        if case["implementation"] == "reference":
            assert case["speedup_vs_reference"] == 1.0

    limit = results["limit"]
    assert limit["kind"] == "cpu-multiply-max" and limit["pairs_per_s"] > 0
    # calibrated at the start and the end of the run; the faster is the limit every fraction uses
    assert len(limit["calibrations_pairs_per_s"]) == 2 and limit["pairs_per_s"] == max(limit["calibrations_pairs_per_s"])
    for case in cases:
        assert case["limit_fraction"] == pytest.approx(case["pairs"] / limit["pairs_per_s"] / case["median_s"])
        assert case["limit_fraction_best"] == pytest.approx(case["pairs"] / limit["pairs_per_s"] / case["best_s"])
        assert case["limit_fraction_best"] >= case["limit_fraction"]
    training = results["training"]
    assert "skipped" not in training and "error" not in training, training
    assert {row["backend"] for row in training["rows"]} == expected - {"compile(reference)"}
    for row in training["rows"]:
        assert row["images_per_s"] > 0 and row["steps"] == training["timed_steps"]
        assert 0 < row["render_s"] and 0 < row["render_share"]

    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| B=") == len(cases)
    for name in expected:
        assert f"| {name} |" in table
    for plot in PLOTS:
        with Image.open(tmp_path / plot) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_a_model_that_fails_to_build_fails_the_run(monkeypatch, tmp_path, capsys):
    """The training section's model failing to build is an error of the run (exit 1, recorded in the
    JSON and the table), never a skipped section."""
    from bench import report, run, training  # noqa: PLC0415

    def broken(backend):
        raise ImportError(f"cannot build the gesture model for {backend}")

    monkeypatch.setattr(training, "build_gesture_model", broken)
    one_step = replace(run.PRESETS["training"], training_steps=1, training_batches=(2,))
    monkeypatch.setitem(run.PRESETS, "training", one_step)
    assert run.main(["--preset", "training", "--device", "cpu", "--backends", "reference", "--out", str(tmp_path)]) == 1
    results = json.loads((tmp_path / report.JSON_NAME).read_text())
    assert results["training"] == {"error": "ImportError: cannot build the gesture model for reference"}
    table = (tmp_path / report.MARKDOWN_NAME).read_text()
    assert "Failed: ImportError: cannot build the gesture model for reference." in table
    assert "1 case(s) failed" in capsys.readouterr().out


def test_triton_sweep_times_and_checks_each_candidate(monkeypatch, tmp_path):
    """bench/triton_sweep.py's per-size work, on CPU tensors under the interpreter with one candidate of
    each kind (on a GPU it times graph replays): every candidate is timed and checked against the table;
    --report renders the same table from the JSON (what bench/gpu_check.sh brings back)."""
    from support import require  # noqa: PLC0415

    require("cpu", "triton")
    from bench import triton_sweep  # noqa: PLC0415
    from bench.cases import Point  # noqa: PLC0415

    monkeypatch.setattr(triton_sweep, "FORWARD_SHAPES", [(1, 2, 2)])
    monkeypatch.setattr(triton_sweep, "BACKWARD_PIXELS", [64])
    monkeypatch.setattr(triton_sweep, "BACKWARD_WARPS", [1])
    point = triton_sweep.sweep_point(Point(2, 3, 9, 12), torch.device("cpu"))
    rows = {row["kernel"]: row for row in point["rows"]}
    assert len(point["rows"]) == 2 and set(rows) == {"forward", "backward"}
    assert rows["forward"]["image_equal"] and rows["forward"]["index_mismatches"] == 0
    assert rows["backward"]["grads_max_rel_diff"] < 1e-5
    assert all(row["median_s"] > 0 and row["best_s"] <= row["median_s"] for row in point["rows"])
    results = dict(device="cpu", torch=torch.__version__, triton="-", commit="-", points=[point])
    table = triton_sweep.markdown(results)
    assert "| ROW_REPEATS=2 COL_REPEATS=2 ROW_SPAN=4 COL_SPAN=8 num_warps=1 |" in table
    assert "| BLOCK_PIX=64 num_warps=1 |" in table
    (tmp_path / "triton_sweep.json").write_text(json.dumps(results))
    assert triton_sweep.main(["--report", str(tmp_path)]) == 0
    assert (tmp_path / "triton_sweep.md").read_text() == table


def test_the_stroke_study_writes_every_case_and_implementation(tmp_path):
    """bench/strokes.py --quick runs end to end in child processes and writes complete results."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    completed = subprocess.run([sys.executable, "bench/strokes.py", "--quick", "--out", str(tmp_path)], cwd=REPO,
                               env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    from bench.strokes import IMPLEMENTATIONS, QUICK_CASES  # noqa: PLC0415 - bench is importable from the repo

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["meta"]["quick"] is True and results["meta"]["torch"] == torch.__version__
    assert set(results["cases"]) == {case[0] for case in QUICK_CASES}
    assert results["meta"]["device"] == "cpu"
    for implementations in results["cases"].values():
        assert set(implementations) == set(IMPLEMENTATIONS["cpu"])
        for measured in implementations.values():
            assert measured["median_s"] > 0 and measured["work_memory_mib"] >= 0
            assert 0 <= measured["culled"] < 1
    table = (tmp_path / "results.md").read_text()
    assert table.count("| gesture: B=16 S=1 P=25") == len(IMPLEMENTATIONS["cpu"]) + 1  # + the culled share
