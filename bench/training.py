"""Training throughput of the velocity-gesture autoencoder per backend, and the render's share of a step.

The model comes from ``splatkern.models`` (``build_gesture_model``, the one place that knows it); a
model that fails to build fails the run, as a kernel that fails does. One step is the training
loop's: Adam (lr 1e-3) on the pixel MSE. The epoch-slice for batch size B and S timed steps is the
first (WARMUP_STEPS + S) * B training images, in order; images/s = S * B / (their time).

The render's share: the ``splat_render`` calls one forward of the model makes are recorded (their
arguments, via ``sys.setprofile``, so the model needs no hook), and those calls' forward+backward
are timed alone with the same harness; share = that time / the median step time.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

import splatkern.ops
from bench.harness import interquartile_range, synchronize, time_calls
from splatkern import data
from splatkern.models import ARTICLE_GESTURE, build_model

WARMUP_STEPS = 2
LEARNING_RATE = 1e-3  # the article's


def build_gesture_model(backend: str) -> torch.nn.Module:
    """The article's gesture autoencoder drawing with `backend`: ``model(images [B, 28, 28])``
    returns ``(reconstruction [B, 28, 28], commands)``."""
    return build_model(replace(ARTICLE_GESTURE, backend=backend))


def load_images(count: int, data_dir: Path) -> tuple[torch.Tensor, str]:
    """`count` training images [count, 28, 28] (cycled if the set is smaller), and where they came from."""
    try:
        images, source = data.load("mnist", "train", data_dir, download=False, limit=count).images, "MNIST train"
    except data.DatasetNotFound:
        images, source = data.load("digits", "train").images, f"scikit-learn digits (no MNIST in {data_dir})"
    return images[torch.arange(count) % len(images)], source


def training_throughput(backends: list[str], batches: tuple[int, ...], steps: int, device: torch.device,
                        data_dir: Path, timing: dict) -> dict:
    """For every backend and batch size: images per second over `steps` timed steps, the step's
    median time and the render's share of it."""
    images, source = load_images((WARMUP_STEPS + steps) * max(batches), data_dir)
    images = images.to(device)
    rows = []
    for batch in batches:
        for backend in backends:
            rows.append(_measure(backend, images[: (WARMUP_STEPS + steps) * batch].split(batch), device, timing))
            row = rows[-1]
            print(f"  training {backend:>10} batch {batch:>4}: {row['images_per_s']:9.1f} images/s, "
                  f"step {row['step_median_s'] * 1e3:8.2f} ms, render {row['render_share']:.0%} of it", flush=True)
    return {"data": source, "timed_steps": steps, "warmup_steps": WARMUP_STEPS, "learning_rate": LEARNING_RATE,
            "rows": rows}


def _measure(backend: str, batches: tuple[torch.Tensor, ...], device: torch.device, timing: dict) -> dict:
    torch.manual_seed(0)
    model = build_gesture_model(backend).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)

    def step(batch_images: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        reconstruction, _commands = model(batch_images)
        F.mse_loss(reconstruction, batch_images).backward()
        optimizer.step()

    for batch_images in batches[:WARMUP_STEPS]:
        step(batch_images)
    step_times = []
    for batch_images in batches[WARMUP_STEPS:]:
        synchronize(device)
        start = time.perf_counter()
        step(batch_images)
        synchronize(device)
        step_times.append(time.perf_counter() - start)

    render = time_calls(_render_of(model, batches[0]), device, **timing)
    step_median = statistics.median(step_times)
    return {
        "backend": backend,
        "batch": len(batches[0]),
        "steps": len(step_times),
        "images_per_s": len(batches[0]) * len(step_times) / sum(step_times),
        "step_median_s": step_median,
        "step_iqr_s": interquartile_range(step_times),
        "render_s": render.median_s,
        "render_share": render.median_s / step_median,
    }


def _render_of(model: torch.nn.Module, batch_images: torch.Tensor):
    """A callable running forward+backward of exactly the splat_render calls the model makes."""
    target = splatkern.ops.splat_render.__code__
    calls = []

    def record(frame, event, _arg):
        if event == "call" and frame.f_code is target:
            calls.append(dict(frame.f_locals))

    sys.setprofile(record)
    try:
        with torch.no_grad():
            model(batch_images)
    finally:
        sys.setprofile(None)
    if not calls:
        raise RuntimeError("the model made no splatkern.splat_render call: cannot time its render")

    prepared = []
    for call in calls:
        tensors = {name: call[name].detach().clone().requires_grad_() for name in ("means", "sigmas", "amps")
                   if call[name] is not None}
        options = {name: call[name] for name in ("height", "width", "backend")}
        prepared.append((tensors, options))

    def forward_backward():
        for tensors, options in prepared:
            for tensor in tensors.values():
                tensor.grad = None
            image = splatkern.ops.splat_render(**tensors, **options)
            image.backward(torch.ones_like(image))

    return forward_backward
