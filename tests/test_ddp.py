import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddp_worker import SETTINGS
from splatkern import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]


def test_two_gloo_processes_match_each_other_and_one_process_on_the_same_global_batch(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "tests" / "ddp_worker.py"), str(tmp_path / "ddp")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    single = train.train(train.TrainConfig(out_dir=str(tmp_path / "single"), **SETTINGS), progress=False)
    checkpoint = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert checkpoint["position"]["global_step"] == 2 * 96 // 16
    for name, expected in single.model.state_dict().items():
        assert torch.equal(rank0[name], rank1[name]), name  # all-reduced gradients: the same update everywhere
        assert torch.equal(checkpoint["model"][name], rank0[name]), name
        # each process's mean over 8 samples, averaged, is the mean over the 16: equal up to rounding
        torch.testing.assert_close(rank0[name], expected, atol=1e-6, rtol=0)  # training moved them ~1e-2


def test_torchrun_runs_the_cli(tmp_path):
    """`torchrun -m splatkern train`, as the README has users start it: two gloo processes on CPU
    train one epoch of the digits and rank 0 writes a checkpoint equal, up to rounding, to one process
    training on the same global batches."""
    settings = dict(dataset="digits", train_limit=96, test_limit=16, epochs=1, batch_size=16, seed=3, device="cpu")
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in settings.items()]
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "splatkern", "train", *flags,
               "--threads", "1", "--no-progress", "--out", str(tmp_path / "ddp")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank 1 of 2 joined a gloo process group" in result.stderr
    assert "epoch 1: test pixel accuracy" in result.stdout

    checkpoint = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert checkpoint["config"] | settings == checkpoint["config"]  # the flags reached the run
    assert checkpoint["position"]["global_step"] == 96 // 16 and len(checkpoint["position"]["history"]) == 1
    single = train.train(train.TrainConfig(out_dir=str(tmp_path / "single"), **settings), progress=False)
    for name, expected in single.model.state_dict().items():
        torch.testing.assert_close(checkpoint["model"][name], expected, atol=1e-6, rtol=0)
