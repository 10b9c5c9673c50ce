"""Marker commands in the article's normalised coordinates, and drawing them with ``splat_render``.

The article places a pixel ``j`` at ``j / 28`` and draws ``amp * exp(-d^2 / VAR2)`` with
``VAR2 = size * VARCOEF + VAR_FLOOR`` in those units. ``splat_render`` works in pixels with
``exp(-d^2 / (2 sigma^2))``, so at ``resolution`` pixels per unit ``sigma = resolution * sqrt(VAR2 / 2)``.
Because commands are in normalised units they can be drawn at any resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splatkern.ops import splat_render

VARCOEF = 0.01
VAR_FLOOR = 1e-4


@dataclass
class Commands:
    """What a decoder asks the renderer to draw, for a batch of B images with P markers each."""

    positions: torch.Tensor  # [B, P, 2] marker centres (x, y), image = [0, 1) x [0, 1)
    sizes: torch.Tensor  # [B, P] in (0, 1): the article's size, mapped to a variance by VAR2
    intensities: torch.Tensor  # [B, P] marker amplitudes
    features: torch.Tensor  # [B, F] the model's learned description of the image (clustered in evaluation)


def sigma_pixels(sizes: torch.Tensor, resolution: int) -> torch.Tensor:
    """The Gaussian standard deviation in pixels of markers of the article's ``sizes``."""
    return resolution * torch.sqrt((sizes * VARCOEF + VAR_FLOOR) / 2)


def draw(commands: Commands, resolution: int, backend: str = "auto", composite: str = "max",
         temperature: float = 1.0) -> torch.Tensor:
    """Render ``commands`` as ``[B, resolution, resolution]`` images, composited by ``composite``."""
    return splat_render(
        commands.positions * resolution,
        sigma_pixels(commands.sizes, resolution),
        commands.intensities,
        height=resolution,
        width=resolution,
        backend=backend,
        composite=composite,
        temperature=temperature,
    )
