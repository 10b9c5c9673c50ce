import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from splatkern import cli, testing, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


def _sizes(path: Path) -> tuple[tuple[int, int], int]:
    with Image.open(path) as image:
        return image.size, getattr(image, "n_frames", 1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert cli.main(["train", "--dataset", "digits", "--train-limit", "64", "--test-limit", "16", "--epochs", "2",
                     "--points", "9", "--primitive", "points", "--strokes", "1", "--device", "cpu", "--out", str(out),
                     "--no-progress"]) == 0
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


def test_a_multi_stroke_run_trains_evaluates_and_redraws_as_lines(tmp_path):
    out = tmp_path / "strokes"
    assert cli.main(["train", "--dataset", "digits", "--train-limit", "32", "--test-limit", "16", "--epochs", "1",
                     "--primitive", "stroke", "--strokes", "2", "--points", "5", "--device", "cpu", "--out", str(out),
                     "--no-progress"]) == 0
    model, config, _ = train.load_trained(out / "checkpoint.pt")
    assert (config.model.primitive, config.model.strokes, model.primitive) == ("stroke", 2, "stroke")
    assert cli.main(["eval", "--out", str(out), "--k", "3", "--probe-train-limit", "32"]) == 0
    assert "| commands | 34 |" in (out / "evaluation.md").read_text()  # 2 x 5 x (vx, vy, intensity) + 2 starts
    assert cli.main(["render", "--out", str(out), "--resolution", "56"]) == 0
    assert _sizes(out / "reconstructions_56.png") == ((8 * 56, 4 * 56), 1)


def test_render_redraws_a_points_run_as_strokes(run_dir):
    assert cli.main(["render", "--out", str(run_dir), "--primitive", "stroke", "--resolution", "84"]) == 0
    assert _sizes(run_dir / "reconstructions_84.png") == ((8 * 84, 4 * 84), 1)


def test_strokes_of_the_static_model_are_a_clear_error(tmp_path, capsys):
    code = cli.main(["train", "--model", "static", "--primitive", "stroke", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "need the gesture model" in capsys.readouterr().err


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
    for command in ("train", "eval", "render", "demo", "doctor", "check"):
        assert command in result.stdout


# Marks the train extra's packages as not installed: both `import` and importlib.util.find_spec then
# behave as they do where the package is missing.
WITHOUT_EXTRAS = f"""
import sys
sys.modules.update(dict.fromkeys({cli.TRAIN_EXTRA!r}))
from splatkern.cli import main
for argv in sys.argv[1:]:
    try:
        code = main(argv.split())
    except SystemExit as exit:
        code = exit.code
    print("EXIT", argv.split()[0], code, flush=True)
    print("EXIT", argv.split()[0], code, file=sys.stderr, flush=True)
"""


def test_a_base_install_has_help_doctor_and_check_and_names_the_extra_the_rest_needs():
    commands = ["--help", "doctor", "check --quick --backend cpu", "train --epochs 1", "demo", "eval", "render"]
    result = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, *commands], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr
    exits = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("EXIT")]
    assert exits == [["--help", "0"], ["doctor", "0"], ["check", "0"], ["train", "2"], ["demo", "2"], ["eval", "2"],
                     ["render", "2"]]
    assert "To check the kernels against the reference on this machine: splatkern check" in result.stdout
    assert "cpu on cpu: OK" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("splatkern: error:")]
    assert errors == [f"splatkern: error: {command!r} needs the train extra (no {', '.join(cli.TRAIN_EXTRA)}): "
                      "pip install 'splatkern[train]'" for command in ("train", "demo", "eval", "render")]


@pytest.mark.parametrize("command", ["eval", "render"])
def test_eval_and_render_without_a_checkpoint_exit_2(tmp_path, capsys, command):
    assert cli.main([command, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"splatkern: error: no checkpoint at {tmp_path / 'checkpoint.pt'}\n"


def test_resume_without_a_checkpoint_exits_2(tmp_path, capsys):
    assert cli.main(["train", "--resume", "--out", str(tmp_path), "--no-progress"]) == 2
    assert capsys.readouterr().err == f"splatkern: error: no checkpoint at {tmp_path / 'checkpoint.pt'}\n"


@pytest.mark.parametrize("argv, message", [(["train", "--epochs", "many"], "argument --epochs: invalid int value"),
                                           (["train", "--model", "cube"], "argument --model: invalid choice"),
                                           (["train", "--composite", "sum"], "argument --composite: invalid choice"),
                                           (["paint"], "invalid choice: 'paint'"),
                                           (["check", "--fast"], "unrecognized arguments: --fast")])
def test_bad_flags_exit_2_with_usage(capsys, argv, message):
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("usage: splatkern") and message in error and "Traceback" not in error


def test_check_with_an_unknown_backend_or_device_exits_2(capsys):
    assert cli.main(["check", "--backend", "opengl"]) == 2
    assert "unknown backend 'opengl'" in capsys.readouterr().err
    assert cli.main(["check", "--device", "tpu"]) == 2
    assert "device 'tpu'" in capsys.readouterr().err


@dataclass
class _Report:
    ok: bool

    def summary(self) -> str:
        return f"report {'OK' if self.ok else 'FAILED'}"


@pytest.mark.parametrize("oks, code", [((True, True), 0), ((True, False), 1), ((), 2)])
def test_check_exit_code_follows_the_reports(monkeypatch, capsys, oks, code):
    """0 when every report is ok, 1 on a mismatch, 2 when there is nothing to check."""
    calls = []
    monkeypatch.setattr(testing, "check_all", lambda *args, **kwargs: calls.append((args, kwargs)) or
                        [_Report(ok) for ok in oks])
    assert cli.main(["check", "--device", "cpu", "--backend", "cpu", "--quick"]) == code
    assert calls == [(("cpu", ["cpu"]), {"quick": True})]
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"report {'OK' if ok else 'FAILED'}" for ok in oks]
    assert ("no compiled or Triton backend to check here" in err) == (not oks)


def test_the_command_line_and_the_library_share_the_run_directory():
    assert cli.TRAIN_OUT == train.TrainConfig().out_dir


def test_composite_and_temperature_flags_reach_the_model_config(tmp_path):
    config = cli._train_config(cli._parser().parse_args(["train", "--composite", "smoothmax", "--temperature", "0.2",
                                                         "--out", str(tmp_path)]))
    assert (config.model.composite, config.model.temperature) == ("smoothmax", 0.2)
    assert cli._train_config(cli._parser().parse_args(["train", "--out", str(tmp_path)])).model.composite == "softor"
