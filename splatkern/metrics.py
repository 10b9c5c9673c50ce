"""Reconstruction metrics: the article's pixel accuracy, MSE and PSNR, over a whole image set."""

from __future__ import annotations

import math

import torch
from torch import nn

# The article's pixel accuracy counts a pixel as right when it is within this of the target.
PIXEL_TOLERANCE = 0.5


def pixel_hits(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How many pixels are within PIXEL_TOLERANCE of the target (the article's accuracy, unnormalised)."""
    return ((target - output).abs() < PIXEL_TOLERANCE).sum()


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1], from the mean squared error over the set."""
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf


@torch.no_grad()
def reconstruction_metrics(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """``mse``, ``accuracy`` and ``psnr`` of ``model``'s reconstructions of ``images`` ``[N, H, W]``;
    ``black_accuracy`` / ``black_mse`` are an all-black image's scores, the floor any model must beat."""
    device = next(model.parameters()).device
    squared, hits = 0.0, 0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        output, _ = model(batch)
        squared += float(((output - batch) ** 2).sum(dtype=torch.float64))
        hits += int(pixel_hits(output, batch))
    pixels = images.numel()
    mse = squared / pixels
    return {
        "mse": mse,
        "accuracy": hits / pixels,
        "psnr": psnr(mse),
        "black_mse": float((images.double() ** 2).mean()),
        "black_accuracy": float((images < PIXEL_TOLERANCE).double().mean()),
    }
