"""Drawing commands in the article's normalised coordinates, and drawing them as markers or strokes.

The article places a pixel ``j`` at ``j / 28`` and draws ``amp * exp(-d^2 / VAR2)`` with
``VAR2 = size * VARCOEF + VAR_FLOOR`` in those units. ``splat_render`` works in pixels with
``exp(-d^2 / (2 sigma^2))``, so at ``resolution`` pixels per unit ``sigma = resolution * sqrt(VAR2 / 2)``.
Because commands are in normalised units they can be drawn at any resolution.

``primitive`` says what the markers are drawn as: ``"points"``, each marker a dot (``splat_render``,
the article's); ``"stroke"``, each pen stroke's markers the vertices of one continuous polyline
whose width and intensity vary along it (``stroke_render``; only for commands drawn in order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from splatkern.ops import splat_render, stroke_render

VARCOEF = 0.01
VAR_FLOOR = 1e-4
PRIMITIVES = ("points", "stroke")


@dataclass
class Commands:
    """What a decoder asks the renderer to draw, for a batch of B images with P markers each."""

    positions: torch.Tensor  # [B, P, 2] marker centres (x, y), image = [0, 1) x [0, 1)
    sizes: torch.Tensor  # [B, P] in (0, 1): the article's size, mapped to a variance by VAR2
    intensities: torch.Tensor  # [B, P] marker amplitudes
    features: torch.Tensor  # [B, F] the model's learned description of the image (clustered in evaluation)
    # The markers in order form this many pen strokes of P / strokes markers each (the gesture model);
    # None: unordered markers (the static model), which only draw as points.
    strokes: int | None = None

    def as_strokes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """positions ``[B, K, P / K, 2]``, sizes and intensities ``[B, K, P / K]`` for K pen strokes."""
        if self.strokes is None:
            raise ValueError("these commands are unordered markers (the static model): they draw only as points")
        batch, markers = self.sizes.shape
        shape = (batch, self.strokes, markers // self.strokes)
        return self.positions.reshape(*shape, 2), self.sizes.reshape(shape), self.intensities.reshape(shape)


def sigma_pixels(sizes: torch.Tensor, resolution: int) -> torch.Tensor:
    """The Gaussian standard deviation in pixels of markers of the article's ``sizes``."""
    return resolution * torch.sqrt((sizes * VARCOEF + VAR_FLOOR) / 2)


def check_primitive(primitive: str) -> None:
    if primitive not in PRIMITIVES:
        raise ValueError(f"primitive must be one of {PRIMITIVES}, got {primitive!r}")


def draw(commands: Commands, resolution: int, backend: str = "auto", composite: str = "max",
         temperature: float = 1.0, primitive: str = "points") -> torch.Tensor:
    """Render ``commands`` as ``[B, resolution, resolution]`` images: markers or strokes (``primitive``),
    composited by ``composite``."""
    check_primitive(primitive)
    if primitive == "stroke":
        positions, sizes, intensities = commands.as_strokes()
        render = stroke_render
    else:
        positions, sizes, intensities = commands.positions, commands.sizes, commands.intensities
        render = splat_render
    return render(positions * resolution, sigma_pixels(sizes, resolution), intensities, height=resolution,
                  width=resolution, backend=backend, composite=composite, temperature=temperature)
