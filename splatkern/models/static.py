"""The article's static-points decoder: P markers, each (x, y, size) through a sigmoid, amplitude 1."""

from __future__ import annotations

import torch
from torch import nn

from splatkern.models.markers import Commands


class StaticPointsDecoder(nn.Module):
    def __init__(self, in_features: int, points: int = 10):
        super().__init__()
        self.points = points
        self.head = nn.Linear(in_features, points * 3)

    def forward(self, features: torch.Tensor) -> Commands:
        x, y, sizes = torch.sigmoid(self.head(features).view(-1, self.points, 3)).unbind(-1)
        positions = torch.stack((x, y), dim=-1)
        return Commands(
            positions=positions,
            sizes=sizes,
            intensities=torch.ones_like(sizes),
            features=torch.cat((positions.flatten(1), sizes), dim=1),
        )
