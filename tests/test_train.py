import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from splatkern import train
from splatkern.models import ModelConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path, name, **settings) -> train.TrainConfig:
    return train.TrainConfig(out_dir=str(tmp_path / name), device="cpu", **settings)


def _mnist(root, train_images, **settings) -> dict:
    return dict(dataset="mnist", data_dir=str(root), download=False, train_limit=train_images, test_limit=500,
                **settings)


def test_a_short_run_on_real_digits_learns_and_beats_the_black_image(tmp_path, mnist_root):
    config = _config(tmp_path, "run", epochs=2, **_mnist(mnist_root, 1600))  # 2 x 100 steps
    trained = train.train(config, progress=False)
    first, last = trained.history
    assert last["train_loss"] < first["train_loss"]
    black = (train.data.load("mnist", "test", mnist_root, download=False, limit=500).images < 0.5).float().mean()
    assert last["test_accuracy"] > float(black) + 0.02
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    assert [row["epoch"] for row in json.loads((tmp_path / "run" / "metrics.json").read_text())] == [1, 2]
    assert (tmp_path / "run" / "metrics.csv").read_text().startswith("epoch,step,train_loss,train_accuracy,test_mse")
    assert not list((tmp_path / "run").glob(".*.tmp"))  # atomic writes leave no temp files


@pytest.mark.parametrize("model", ["gesture", "static"])
def test_the_sweep_init_trains_on_every_seed(tmp_path, mnist_root, model):
    """The article's recipe collapses to an all-black image on most seeds; ours must not on any."""
    black_mse = None
    for seed in range(5):
        config = _config(tmp_path, f"{model}{seed}", epochs=1, seed=seed, model=ModelConfig(model=model),
                         animation_samples=0, **_mnist(mnist_root, 16 * 300))
        last = train.train(config, progress=False).history[-1]
        if black_mse is None:
            test_images = train.data.load("mnist", "test", mnist_root, download=False, limit=500).images
            black_mse = float((test_images**2).mean())
        # collapsed runs end at the black image's loss (about 0.11 on MNIST)
        assert last["test_mse"] < 0.7 * black_mse, f"seed {seed} collapsed: {last}"


def _weights(model) -> dict:
    return {name: value.clone() for name, value in model.state_dict().items()}


def _drop_time(history: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "seconds"} for row in history]


def test_resume_gives_bit_identical_weights_and_metrics(tmp_path):
    settings = dict(dataset="digits", train_limit=160, test_limit=32, seed=5)
    straight = train.train(_config(tmp_path, "straight", epochs=3, **settings), progress=False)
    train.train(_config(tmp_path, "resumed", epochs=1, **settings), progress=False)
    resumed = train.train(_config(tmp_path, "resumed", epochs=3, **settings), resume=True, progress=False)
    for name, value in _weights(straight.model).items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert _drop_time(resumed.history) == _drop_time(straight.history)


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.train(_config(tmp_path, "none", epochs=1, dataset="digits"), resume=True, progress=False)


def _cli(*args, **popen):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "splatkern", "train", "--threads", "1", "--device", "cpu", "--no-progress", *args]
    return subprocess.Popen(command, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, **popen)


def test_ctrl_c_mid_epoch_checkpoints_that_step_and_resumes_bit_identically(tmp_path, monkeypatch):
    """A real SIGINT, sent by the process to itself in the 13th of 3 x 10 steps: the checkpoint is the
    one after that step (epoch 2, step 3), and the resumed run ends where the uninterrupted one does."""
    settings = dict(dataset="digits", train_limit=160, test_limit=32, seed=5, epochs=3)  # 10 steps per epoch
    at_interrupt = {}
    take_step = train._step

    def step_then_ctrl_c(net, optimizer, images):
        result = take_step(net, optimizer, images)
        at_interrupt["steps"] = at_interrupt.get("steps", 0) + 1
        if at_interrupt["steps"] == 13:
            at_interrupt["weights"] = _weights(net)
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(train, "_step", step_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt, match="training interrupted"):
        train.train(_config(tmp_path, "interrupted", **settings), progress=False)
    monkeypatch.undo()
    assert at_interrupt["steps"] == 13  # the step under way finished; none followed

    state = torch.load(tmp_path / "interrupted" / "checkpoint.pt", weights_only=True)
    position = state["position"]
    assert (position["epoch"], position["step_in_epoch"], position["global_step"]) == (1, 3, 13)
    assert position["samples"] == 3 * 16 and len(position["history"]) == 1  # the epoch's sums so far
    for name, value in at_interrupt["weights"].items():
        assert torch.equal(state["model"][name], value), name

    resumed = train.train(_config(tmp_path, "interrupted", **settings), resume=True, progress=False)
    straight = train.train(_config(tmp_path, "straight", **settings), progress=False)
    for name, value in _weights(straight.model).items():
        assert torch.equal(resumed.model.state_dict()[name], value), name
    assert _drop_time(resumed.history) == _drop_time(straight.history)


def test_ctrl_c_leaves_a_checkpoint_that_resumes_to_the_uninterrupted_result(tmp_path):
    """`splatkern train` stopped by Ctrl-C from outside, at whatever step it is in, in its second epoch
    or later: exit 130, the checkpoint of that step (not of the last epoch's end), and a resume that
    ends bit-identical to a run never interrupted."""
    flags = ["--dataset", "digits", "--train-limit", "320", "--test-limit", "16", "--seed", "2"]
    steps_per_epoch = 320 // 16
    interrupted = tmp_path / "interrupted"
    run = _cli(*flags, "--epochs", "40", "--out", str(interrupted))
    deadline = time.monotonic() + 120
    while not (interrupted / "metrics.json").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "--resume" in stderr
    stopped = torch.load(interrupted / "checkpoint.pt", weights_only=True)["position"]
    # An epoch's end saves step_in_epoch 0; the interrupt saves after the step it let finish, >= 1.
    assert 1 <= stopped["step_in_epoch"] <= steps_per_epoch and stopped["epoch"] >= 1
    assert stopped["global_step"] == stopped["epoch"] * steps_per_epoch + stopped["step_in_epoch"]
    assert stopped["samples"] == stopped["step_in_epoch"] * 16 and len(stopped["history"]) == stopped["epoch"]

    # finish both runs at the end of the interrupted epoch (keeps the test short)
    epochs = str(stopped["epoch"] + 1)
    resume = _cli("--resume", "--epochs", epochs, "--out", str(interrupted))
    straight = _cli(*flags, "--epochs", epochs, "--out", str(tmp_path / "straight"))
    for process in (resume, straight):
        assert process.wait(timeout=300) == 0, process.stderr.read()
    a = torch.load(interrupted / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    for name in b:
        assert torch.equal(a[name], b[name]), name
    histories = [json.loads((folder / "metrics.json").read_text()) for folder in (interrupted, tmp_path / "straight")]
    assert len(histories[0]) == int(epochs)
    assert _drop_time(histories[0]) == _drop_time(histories[1])
