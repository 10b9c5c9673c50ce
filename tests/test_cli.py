import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from splatkern import cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


def _sizes(path: Path) -> tuple[tuple[int, int], int]:
    with Image.open(path) as image:
        return image.size, getattr(image, "n_frames", 1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(["train", "--dataset", "digits", "--train-limit", "64", "--test-limit", "16", "--epochs", "2",
                     "--points", "9", "--device", "cpu", "--out", str(out), "--no-progress"]) == 0
    return out


def test_train_writes_checkpoint_and_metrics(run_dir):
    rows = json.loads((run_dir / "metrics.json").read_text())
    assert [row["step"] for row in rows] == [4, 8]  # 64 images, batch 16
    assert (run_dir / "checkpoint.pt").is_file() and (run_dir / "metrics.csv").is_file()


def test_eval_writes_the_clustering_table(run_dir, capsys):
    assert cli.main(["eval", "--out", str(run_dir), "--k", "3", "--probe-train-limit", "64"]) == 0
    table = (run_dir / "evaluation.md").read_text()
    assert "| pixels | 784 |" in table and "| commands | 27 |" in table  # 9 points x (vx, vy, intensity)
    assert json.loads((run_dir / "evaluation.json").read_text())["settings"]["k"] == 3
    assert "k-means accuracy" in capsys.readouterr().out


def test_render_writes_pictures_of_the_promised_sizes(run_dir):
    assert cli.main(["render", "--out", str(run_dir)]) == 0
    # 16 test images, 8 to a row: inputs over reconstructions at 4x, the 112 px redraw at 1x
    assert _sizes(run_dir / "reconstructions.png") == ((8 * 28 * 4, 4 * 28 * 4), 1)
    assert _sizes(run_dir / "reconstructions_112.png") == ((8 * 112, 4 * 112), 1)
    assert _sizes(run_dir / "strokes.png") == ((8 * 150, 2 * 150), 1)  # 1.5 in per image at 100 dpi
    # 8 recorded samples at 3x under a 14 px caption; this early every one of the 8 steps is a log-spaced step
    size, frames = _sizes(run_dir / "training.gif")
    assert size == (8 * 28 * 3, 28 * 3 + 14) and frames == 1 + 8


def test_demo_trains_evaluates_and_draws(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--epochs", "1", "--device", "cpu", "--out", str(out), "--probe-train-limit", "200"]) == 0
    for name in ("checkpoint.pt", "evaluation.md", "evaluation.json", "reconstructions.png", "strokes.png",
                 "reconstructions_112.png", "training.gif"):
        assert (out / name).is_file(), name
    assert str(out.resolve()) in capsys.readouterr().out


def test_a_missing_dataset_is_a_clear_error(tmp_path, capsys):
    code = cli.main(["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--no-download",
                     "--out", str(tmp_path / "run")])
    assert code == 2
    assert "FashionMNIST/raw/train-images-idx3-ubyte" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_command_line():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "splatkern", "--help"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    for command in ("train", "eval", "render", "demo"):
        assert command in result.stdout
