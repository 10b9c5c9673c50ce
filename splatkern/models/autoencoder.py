"""Encoder -> decoder commands -> ``splat_render``: an autoencoder whose code is a drawing."""

from __future__ import annotations

import torch
from torch import nn

from splatkern.models.markers import Commands, draw


class Autoencoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, resolution: int = 28, backend: str = "auto",
                 composite: str = "max", temperature: float = 1.0):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.resolution = resolution
        self.backend = backend
        self.composite, self.temperature = composite, temperature

    def commands(self, images: torch.Tensor) -> Commands:
        """The decoder's drawing commands for ``[B, H, W]`` images."""
        return self.decoder(self.encoder(images))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, Commands]:
        commands = self.commands(images)
        return draw(commands, self.resolution, self.backend, self.composite, self.temperature), commands
