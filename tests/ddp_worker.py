"""Started by test_ddp.py and test_gpu_training.py under torchrun: trains with the tests' settings on the
device given after the output folder (default cpu), then saves this rank's weights."""

import os
import sys
from pathlib import Path

import torch

from splatkern import train

SETTINGS = dict(dataset="digits", train_limit=96, test_limit=16, epochs=2, batch_size=16, seed=1, device="cpu")

if __name__ == "__main__":
    out = Path(sys.argv[1])
    device = sys.argv[2] if len(sys.argv) > 2 else SETTINGS["device"]
    trained = train.train(train.TrainConfig(out_dir=str(out), **{**SETTINGS, "device": device}), progress=False)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(trained.model.state_dict(), out / f"rank{os.environ['RANK']}.pt")
