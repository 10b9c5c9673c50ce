"""Image encoders: ``[B, 28, 28]`` images to ``[B, out_features]`` feature vectors."""

from __future__ import annotations

import torch
from torch import nn


class MLPEncoder(nn.Sequential):
    """The article's dense encoder: 784 -> 600 -> 500 -> 400 -> 300, sigmoid after each layer."""

    def __init__(self, image_size: int = 28, widths: tuple[int, ...] = (600, 500, 400, 300)):
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in zip((image_size * image_size, *widths), widths):
            layers += [nn.Linear(fan_in, fan_out), nn.Sigmoid()]
        super().__init__(*layers)
        self.out_features = widths[-1]


class ConvEncoder(nn.Module):
    """A small convolutional encoder: two stride-2 3x3 convolutions, then one dense layer."""

    def __init__(self, image_size: int = 28, channels: tuple[int, int] = (32, 64), out_features: int = 300):
        super().__init__()
        reduced = (image_size + 3) // 4  # two stride-2 convolutions with padding 1
        self.layers = nn.Sequential(
            nn.Conv2d(1, channels[0], 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(channels[1] * reduced * reduced, out_features),
            nn.ReLU(),
        )
        self.out_features = out_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images[:, None])


ENCODERS = {"mlp": MLPEncoder, "conv": ConvEncoder}
