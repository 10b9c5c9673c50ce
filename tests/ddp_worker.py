"""Started by test_ddp.py under torchrun: trains with the test's settings, then saves this rank's weights."""

import os
import sys
from pathlib import Path

import torch

from splatkern import train

SETTINGS = dict(dataset="digits", train_limit=96, test_limit=16, epochs=2, batch_size=16, seed=1, device="cpu")

if __name__ == "__main__":
    out = Path(sys.argv[1])
    trained = train.train(train.TrainConfig(out_dir=str(out), **SETTINGS), progress=False)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(trained.model.state_dict(), out / f"rank{os.environ['RANK']}.pt")
