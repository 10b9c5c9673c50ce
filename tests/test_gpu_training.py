"""Training on a CUDA device: the fused GPU backends train the autoencoder like the reference does,
a CUDA checkpoint loads on the CPU, and the torchrun path joins an NCCL process group.
Marked gpu; skipped, with the reason, where there is no CUDA device."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from splatkern import train
from splatkern.models import ModelConfig
from support import require

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[1]
# The embedded digits: the GPU machine has no copy of MNIST.
SETTINGS = dict(dataset="digits", train_limit=320, test_limit=64, epochs=2, batch_size=16, seed=0, device="cuda",
                animation_samples=4)


def _train(tmp_path: Path, name: str, backend: str) -> train.Trained:
    config = train.TrainConfig(out_dir=str(tmp_path / name), model=ModelConfig(backend=backend), **SETTINGS)
    return train.train(config, progress=False)


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_fused_backends_train_like_the_reference_on_cuda(tmp_path, backend):
    require("cuda", backend)
    reference = _train(tmp_path, "reference", "reference").history
    fused = _train(tmp_path, backend, backend).history
    assert fused[-1]["train_loss"] < fused[0]["train_loss"]
    for expected, got in zip(reference, fused):
        # 40 Adam steps from the same weights: the kernels' rounding differs from the reference's only slightly
        assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-2)
        assert got["test_mse"] == pytest.approx(expected["test_mse"], rel=1e-2)


def test_a_cuda_checkpoint_loads_on_the_cpu_and_draws_the_same_glyphs(tmp_path):
    require("cuda", "reference")
    trained = _train(tmp_path, "run", "auto")
    model, _config, _position = train.load_trained(trained.checkpoint, device="cpu")
    images = torch.rand(4, 28, 28)
    with torch.no_grad():
        on_gpu = trained.model.eval()(images.cuda())[0].cpu()  # (reconstruction, commands)
        on_cpu = model.eval()(images)[0]
    torch.testing.assert_close(on_cpu, on_gpu, atol=1e-4, rtol=1e-4)


def test_torchrun_trains_over_nccl(tmp_path):
    require("cuda", "reference")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
               str(REPO / "tests" / "ddp_worker.py"), str(tmp_path / "ddp"), "cuda"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "joined a nccl process group on cuda:0" in result.stderr, result.stderr[-2000:]
    checkpoint = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert checkpoint["position"]["global_step"] == 2 * 96 // 16
