"""Encoder -> decoder commands -> ``splat_render`` or ``stroke_render``: an autoencoder whose code is a drawing."""

from __future__ import annotations

import torch
from torch import nn

from splatkern.models.markers import Commands, draw


class Autoencoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, resolution: int = 28, backend: str = "auto",
                 composite: str = "max", temperature: float = 1.0, primitive: str = "points"):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.resolution = resolution
        self.backend = backend
        self.composite, self.temperature = composite, temperature
        self.primitive = primitive

    def commands(self, images: torch.Tensor) -> Commands:
        """The decoder's drawing commands for ``[B, H, W]`` images."""
        return self.decoder(self.encoder(images))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, Commands]:
        commands = self.commands(images)
        return self.draw(commands, self.resolution), commands

    def draw(self, commands: Commands, resolution: int, primitive: str | None = None) -> torch.Tensor:
        """``commands`` drawn the way this model draws them (as ``primitive`` if given), at any ``resolution``."""
        return draw(commands, resolution, self.backend, self.composite, self.temperature, primitive or self.primitive)
