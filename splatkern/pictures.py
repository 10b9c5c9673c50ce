"""Pictures of a trained model: reconstructions, pen-stroke tracks, a training animation, and
reconstructions re-drawn at a higher resolution (commands are resolution independent)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from splatkern.models import Autoencoder, Commands
from splatkern.models.markers import sigma_pixels

GRID_PNG = "reconstructions.png"
STROKES_PNG = "strokes.png"
ANIMATION_GIF = "training.gif"
HIGH_RES = 112  # the default size of the redrawn reconstructions, reconstructions_<size>.png
CAPTION_HEIGHT = 14  # pixels above each animation frame for its step number


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    if images.dtype == torch.uint8:
        return images.cpu().numpy()
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _tile(images: np.ndarray, columns: int) -> np.ndarray:
    """``[N, H, W]`` images side by side, ``columns`` to a row (missing tiles black)."""
    count, height, width = images.shape
    rows = math.ceil(count / columns)
    canvas = np.zeros((rows * height, columns * width), dtype=images.dtype)
    for n, image in enumerate(images):
        row, column = divmod(n, columns)
        canvas[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    return canvas


def comparison_grid(inputs: torch.Tensor, outputs: torch.Tensor, path: str | os.PathLike, *, columns: int = 8,
                    scale: int = 4) -> Path:
    """A PNG of ``columns`` inputs over their ``columns`` reconstructions, for each group of ``columns`` samples.

    Both are ``[N, H, W]`` in [0, 1]; the PNG is ``columns * W * scale`` wide and
    ``2 * ceil(N / columns) * H * scale`` high."""
    if inputs.shape != outputs.shape:
        raise ValueError(f"inputs {list(inputs.shape)} and outputs {list(outputs.shape)} must have one shape")
    pairs = []
    for start in range(0, len(inputs), columns):
        pairs += [_tile(_to_uint8(inputs[start : start + columns]), columns),
                  _tile(_to_uint8(outputs[start : start + columns]), columns)]
    image = Image.fromarray(np.concatenate(pairs)).resize(
        (pairs[0].shape[1] * scale, sum(p.shape[0] for p in pairs) * scale), Image.NEAREST)
    image.save(path)
    return Path(path)


def stroke_tracks(images: torch.Tensor, commands: Commands, path: str | os.PathLike, *, columns: int = 8,
                  inches_per_image: float = 1.5, dpi: int = 100) -> Path:
    """The commands drawn as pen strokes over faint inputs: a line through each stroke's marker positions
    (commands in order, the gesture model's), marker size as line width (one sigma), intensity as colour."""
    import matplotlib  # noqa: PLC0415 - matplotlib is an optional dependency

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.collections import LineCollection  # noqa: PLC0415

    count, resolution = len(images), images.shape[-1]
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * inches_per_image, rows * inches_per_image),
                                dpi=dpi, squeeze=False)
    figure.subplots_adjust(0, 0, 1, 1, 0, 0)
    points_per_pixel = inches_per_image * 72 / resolution
    positions = (commands.positions * resolution).detach().cpu().numpy()
    widths = sigma_pixels(commands.sizes, resolution).detach().cpu().numpy() * points_per_pixel
    colours = plt.get_cmap("plasma")(commands.intensities.detach().clamp(0, 1).cpu().numpy())
    # each stroke's marker indices (a pen lift between strokes); none for unordered markers
    strokes = [] if commands.strokes is None else np.split(np.arange(positions.shape[1]), commands.strokes)
    for n, axis in enumerate(axes.flat):
        axis.set_axis_off()
        if n >= count:
            continue
        edges = (-0.5, resolution - 0.5, resolution - 0.5, -0.5)  # pixel centres at integers, as splat_render
        axis.imshow(images[n].cpu().numpy(), cmap="gray_r", vmin=0, vmax=2, extent=edges)
        for stroke in strokes:
            segments = np.stack((positions[n, stroke[:-1]], positions[n, stroke[1:]]), axis=1)
            axis.add_collection(LineCollection(segments, linewidths=widths[n, stroke[:-1]],
                                               colors=colours[n, stroke[:-1]], capstyle="round"))
        axis.scatter(positions[n, :, 0], positions[n, :, 1], s=(widths[n] ** 2), c=colours[n], edgecolors="none")
        axis.set_xlim(-0.5, resolution - 0.5)
        axis.set_ylim(resolution - 0.5, -0.5)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return Path(path)


def training_animation(frames: torch.Tensor, steps: list[int], path: str | os.PathLike, *, scale: int = 3,
                       frame_ms: int = 250) -> Path:
    """A GIF of ``frames`` (``[F, S, H, W]``: S samples' reconstructions at each of F ``steps``), captioned
    with the step; ``S * W * scale`` wide and ``H * scale + CAPTION_HEIGHT`` high."""
    if len(frames) == 0:
        raise ValueError("no animation frames were recorded")
    pictures = []
    for step, samples in zip(steps, frames):
        strip = Image.fromarray(_tile(_to_uint8(samples), len(samples)))
        strip = strip.resize((strip.width * scale, strip.height * scale), Image.NEAREST)
        picture = Image.new("L", (strip.width, strip.height + CAPTION_HEIGHT))
        picture.paste(strip, (0, CAPTION_HEIGHT))
        ImageDraw.Draw(picture).text((2, 1), f"step {step}", fill=255)
        pictures.append(picture)
    durations = [frame_ms] * (len(pictures) - 1) + [frame_ms * 8]  # hold the last frame
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0)
    return Path(path)


@torch.no_grad()
def write_all(model: Autoencoder, images: torch.Tensor, animation: dict, out_dir: str | os.PathLike, *,
              resolution: int = HIGH_RES, primitive: str | None = None) -> list[Path]:
    """Every picture for ``images`` (a few test images) into ``out_dir``; returns the paths written.

    The reconstructions are also redrawn at ``resolution`` pixels, as ``primitive`` (None: as the model
    draws them; "stroke" draws a gesture model trained on points as continuous strokes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    outputs, commands = model(images.to(device))
    paths = [
        comparison_grid(images, outputs, out / GRID_PNG),
        stroke_tracks(images, commands, out / STROKES_PNG),
    ]
    upscaled = F.interpolate(images[:, None], size=(resolution, resolution), mode="nearest")[:, 0]
    redrawn = model.draw(commands, resolution, primitive)
    paths.append(comparison_grid(upscaled, redrawn, out / f"reconstructions_{resolution}.png", scale=1))
    if len(animation["frames"]):
        paths.append(training_animation(animation["frames"], animation["steps"], out / ANIMATION_GIF))
    return paths
