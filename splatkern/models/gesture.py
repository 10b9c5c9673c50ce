"""The article's velocity-gesture decoder: pen strokes of P markers, each step a bounded velocity.

Per step the head gives ``(vy, vx)`` = tanh * step_size, and size and intensity through a sigmoid.
Marker ``k`` of a stroke sits at its start point plus the sum of the stroke's first k velocities (an
exclusive cumulative sum), so a stroke's first marker is always on its start point.

With one stroke (the article's) the start point is fixed, START. With K > 1 strokes the pen lifts
between them: each stroke has its own velocities and its own start point, which the decoder learns
per image (through a sigmoid, so inside the canvas).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from splatkern.models.markers import Commands

START = (0.1, 0.5)  # (x, y) of the first marker, in image units
SWEEP_END_X = 0.9  # the sweep init draws a line from START to this x
SWEEP_WEIGHT_SCALE = 0.1


def sweep_starts(strokes: int) -> torch.Tensor:
    """``[K, 2]`` start points of the sweep init: x = START's, y spread evenly over the canvas (START's y
    when K = 1), so the K initial lines are parallel and cover it."""
    heights = (torch.arange(strokes, dtype=torch.float32) + 0.5) / strokes
    return torch.stack((torch.full_like(heights, START[0]), heights), dim=1)


class GestureDecoder(nn.Module):
    def __init__(self, in_features: int, points: int = 25, step_size: float = 3.0, resolution: int = 28,
                 strokes: int = 1):
        super().__init__()
        if points < 2:
            raise ValueError(f"a gesture needs at least 2 points per stroke, got {points}")
        if strokes < 1:
            raise ValueError(f"strokes must be at least 1, got {strokes}")
        self.points, self.strokes = points, strokes
        self.max_step = step_size / resolution  # step_size is in pixels of the training resolution
        self.head = nn.Linear(in_features, strokes * points * 4)
        self.start_head = nn.Linear(in_features, strokes * 2) if strokes > 1 else None
        self.register_buffer("start", torch.tensor(START), persistent=False)

    def forward(self, features: torch.Tensor) -> Commands:
        logits = self.head(features).view(-1, self.strokes, self.points, 4)
        vy, vx, size_logits, intensity_logits = logits.unbind(-1)
        directions = torch.tanh(torch.stack((vx, vy), dim=-1))  # [B, K, P, 2] (x, y), each in (-1, 1)
        travelled = torch.cumsum(directions * self.max_step, dim=2)
        starts = self._starts(features)  # [B, K, 2]
        positions = starts[:, :, None] + torch.cat((torch.zeros_like(travelled[:, :, :1]), travelled[:, :, :-1]), dim=2)
        intensities = torch.sigmoid(intensity_logits)
        learned = (directions.flatten(1), intensities.flatten(1)) + ((starts.flatten(1),) if self.strokes > 1 else ())
        return Commands(
            positions=positions.flatten(1, 2),
            sizes=torch.sigmoid(size_logits).flatten(1),
            intensities=intensities.flatten(1),
            features=torch.cat(learned, dim=1),
            strokes=self.strokes,
        )

    def _starts(self, features: torch.Tensor) -> torch.Tensor:
        if self.start_head is None:
            return self.start.expand(len(features), 1, 2)
        return torch.sigmoid(self.start_head(features)).view(-1, self.strokes, 2)

    @torch.no_grad()
    def sweep_init(self) -> None:
        """Start every image's strokes as the same parallel lines across the canvas, from sweep_starts to
        SWEEP_END_X.

        With the article's random head the stroke of some seeds leaves the canvas early, where no
        pixel gives it a gradient, and training collapses to an all-black image. Strokes that
        already cover the canvas get gradients from every part of the glyph; small head weights
        let each image bend them gradually.
        """
        self.head.weight.mul_(SWEEP_WEIGHT_SCALE)
        bias = self.head.bias.view(-1, 4)
        bias.zero_()
        speed = (SWEEP_END_X - START[0]) / (self.points - 1) / self.max_step
        bias[:, 1] = math.atanh(min(speed, 0.95))
        if self.start_head is not None:
            self.start_head.weight.mul_(SWEEP_WEIGHT_SCALE)
            self.start_head.bias.copy_(torch.logit(sweep_starts(self.strokes)).flatten())
