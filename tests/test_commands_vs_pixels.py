"""python/commands_vs_pixels.py end to end on a tiny grid: every run trained, evaluated and tabulated;
a second call evaluates the finished runs without training them again, and a call with another grid
keeps the earlier runs in the results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from splatkern import data, evaluate, train

REPO = Path(__file__).resolve().parents[1]


def run_script(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "python/commands_vs_pixels.py", "--epochs", "1", "--seeds", "0", "1",
               "--train-limit", "64", "--test-limit", "40", "--probe-train-limit", "60", "--primitives", "points",
               "stroke", "--out", str(out), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))}
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed


@pytest.mark.usefixtures("one_torch_thread")
def test_every_run_is_trained_evaluated_and_tabulated_once(tmp_path):
    run_script(tmp_path)
    runs = json.loads((tmp_path / "digits.json").read_text())
    assert sorted((run["configuration"]["primitive"], run["seed"]) for run in runs) == [
        ("points", 0), ("points", 1), ("stroke", 0), ("stroke", 1)]
    for run in runs:
        assert run["dims"] == {"pixels": 784, "commands": 75, "shape": 100}  # 25 markers: 3 commands, 4 shape
        assert set(run["kmeans"]) == {"none", "standard"}
        for scaling in run["kmeans"].values():
            assert all(0 < scores["accuracy"] <= 1 and scores["errors"] >= 0 for scores in scaling.values())
        assert run["reconstruction"]["mse"] < run["reconstruction"]["black_mse"]
    table = (tmp_path / "digits.md").read_text()
    assert table.count("| points-k1-max-mlp | 1 | 2 | ") == 1 and table.count("| stroke-k1-max-mlp | 1 | 2 | ") == 1
    assert "k-means shape (standard)" in table and "probe shape" in table
    for primitive in ("points", "stroke"):  # the commands' lead over pixels: per seed, then its mean and min
        group = [run["kmeans"]["none"] for run in runs if run["configuration"]["primitive"] == primitive]
        lead = [100 * (scores["commands"]["accuracy"] - scores["pixels"]["accuracy"]) for scores in group]
        (row,) = [line for line in table.splitlines() if line.startswith(f"| {primitive}-k1-max-mlp |")]
        assert f"| {sum(lead) / 2:+.2f} ({min(lead):+.2f}) |" in row

    # every scaling's k-means is evaluate()'s with that scaling, though the probes ran once
    model, _, _ = train.load_trained(tmp_path / "digits" / "stroke-k1-max-mlp-s1" / train.CHECKPOINT)
    report = evaluate.evaluate(model, data.load("digits", "train", limit=60), data.load("digits", "test", limit=40),
                               seed=1, scaling="standard", probe_train_limit=60)
    (run,) = [run for run in runs if (run["configuration"]["primitive"], run["seed"]) == ("stroke", 1)]
    assert run["kmeans"]["standard"] == {space: report["features"][space]["kmeans"] for space in run["dims"]}

    checkpoints = sorted((tmp_path / "digits").glob("*/checkpoint.pt"))
    assert len(checkpoints) == 4
    written = [path.stat().st_mtime_ns for path in checkpoints]
    again = run_script(tmp_path, "--jobs", "1")
    assert [path.stat().st_mtime_ns for path in checkpoints] == written  # loaded, not trained again
    assert json.loads((tmp_path / "digits.json").read_text()) == runs
    assert "[4/4]" in again.stdout
    run_script(tmp_path, "--seeds", "0")  # another grid: the runs of seed 1 stay in the results
    assert json.loads((tmp_path / "digits.json").read_text()) == runs
