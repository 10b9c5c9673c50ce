"""The article's velocity-gesture decoder: a pen stroke of P markers, each step a bounded velocity.

Per step the head gives ``(vy, vx)`` = tanh * step_size, and size and intensity through a sigmoid.
Marker ``k`` sits at ``START + sum of the first k velocities`` (an exclusive cumulative sum), so the
first marker is always on the start point.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from splatkern.models.markers import Commands

START = (0.1, 0.5)  # (x, y) of the first marker, in image units
SWEEP_END_X = 0.9  # the sweep init draws a line from START to this x
SWEEP_WEIGHT_SCALE = 0.1


class GestureDecoder(nn.Module):
    def __init__(self, in_features: int, points: int = 25, step_size: float = 3.0, resolution: int = 28):
        super().__init__()
        if points < 2:
            raise ValueError(f"a gesture needs at least 2 points, got {points}")
        self.points = points
        self.max_step = step_size / resolution  # step_size is in pixels of the training resolution
        self.head = nn.Linear(in_features, points * 4)
        self.register_buffer("start", torch.tensor(START), persistent=False)

    def forward(self, features: torch.Tensor) -> Commands:
        vy, vx, size_logits, intensity_logits = self.head(features).view(-1, self.points, 4).unbind(-1)
        directions = torch.tanh(torch.stack((vx, vy), dim=-1))  # [B, P, 2] (x, y), each in (-1, 1)
        travelled = torch.cumsum(directions * self.max_step, dim=1)
        positions = self.start + torch.cat((torch.zeros_like(travelled[:, :1]), travelled[:, :-1]), dim=1)
        intensities = torch.sigmoid(intensity_logits)
        return Commands(
            positions=positions,
            sizes=torch.sigmoid(size_logits),
            intensities=intensities,
            features=torch.cat((directions.flatten(1), intensities), dim=1),
        )

    @torch.no_grad()
    def sweep_init(self) -> None:
        """Start every image's stroke as the same line across the canvas, from START to SWEEP_END_X.

        With the article's random head the stroke of some seeds leaves the canvas early, where no
        pixel gives it a gradient, and training collapses to an all-black image. A stroke that
        already covers the canvas gets gradients from every part of the glyph; small head weights
        let each image bend it gradually.
        """
        self.head.weight.mul_(SWEEP_WEIGHT_SCALE)
        bias = self.head.bias.view(self.points, 4)
        bias.zero_()
        speed = (SWEEP_END_X - START[0]) / (self.points - 1) / self.max_step
        bias[:, 1] = math.atanh(min(speed, 0.95))
