"""The training loop: Adam on the pixel MSE, per-epoch metrics, atomic checkpoints, exact resume, DDP.

Everything a run depends on is in its checkpoint (weights, optimizer, position in the epoch, the
epoch's running sums, RNG state), and the data order of each epoch is a function of (seed, epoch),
so a resumed run computes exactly what the uninterrupted run would have. Ctrl-C is deferred to the
end of the current step, which is then checkpointed; a second Ctrl-C stops at once (the last
epoch's checkpoint stays intact, since every write is a rename of a finished temp file).

Under ``torchrun`` each of the W processes takes every W-th sample of the same global batch of
``batch_size`` samples and DDP averages their gradients: the update of one process on the whole batch.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from splatkern import data
from splatkern.metrics import pixel_hits, reconstruction_metrics
from splatkern.models import ARTICLE_GESTURE, Autoencoder, ModelConfig, build_model

CHECKPOINT = "checkpoint.pt"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
FRAMES_PER_DOUBLING = 4  # animation frames are kept at log-spaced steps: 4 per doubling of the step
# Model settings added after the first checkpoints were saved: a run that did not record one drew it
# the article's way, whatever today's default.
LATER_MODEL_SETTINGS = ("composite", "temperature", "primitive", "strokes")


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: str = "digits"
    data_dir: str = str(data.DEFAULT_DATA_DIR)
    download: bool = True
    train_limit: int | None = None  # use the first N training images only
    test_limit: int | None = None
    epochs: int = 50
    batch_size: int = 16  # the global batch: split across processes under torchrun
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"  # "auto": CUDA when available, else CPU
    out_dir: str = "runs/train"
    animation_samples: int = 8  # test images whose reconstructions are recorded over training

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        saved = values.get("model", {})
        unrecorded = {name: getattr(ARTICLE_GESTURE, name) for name in LATER_MODEL_SETTINGS if name not in saved}
        return cls(**{**values, "model": ModelConfig(**unrecorded, **saved)})


@dataclass
class Trained:
    model: Autoencoder
    history: list[dict]  # one row of metrics per epoch
    checkpoint: Path


@dataclass
class _Position:
    """Where a run is, and the running sums of the current epoch: all of it goes in the checkpoint."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    loss_sum: float = 0.0  # sum over the epoch's samples of their batch's mean loss
    hits: int = 0  # pixels within the article's tolerance
    samples: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    frame_steps: list[int] = field(default_factory=list)
    frames: list[torch.Tensor] = field(default_factory=list)  # uint8 [S, H, W] reconstructions


@dataclass
class _World:
    """This process's place among the torchrun processes (rank 0 of 1 without torchrun)."""

    rank: int
    size: int
    device: torch.device
    distributed: bool = False  # this run joined a process group (torchrun), even of one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def join(cls, device: str) -> _World:
        resolved = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        if "RANK" not in os.environ:  # not started by torchrun
            return cls(0, 1, resolved)
        if resolved.type == "cuda":
            resolved = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(resolved)
        backend = "nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend)
        print(f"rank {dist.get_rank()} of {dist.get_world_size()} joined a {backend} process group on {resolved}",
              file=sys.stderr)
        return cls(dist.get_rank(), dist.get_world_size(), resolved, distributed=True)

    def leave(self) -> None:
        if self.distributed:
            dist.destroy_process_group()

    def total(self, *values: float) -> list[float]:
        """Each value summed over all processes."""
        if not self.distributed:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> Trained:
    """Train (or with ``resume``, continue from ``out_dir``'s checkpoint) to ``config.epochs`` epochs."""
    world = _World.join(config.device)
    try:
        return _run(config, world, resume, progress)
    finally:
        world.leave()


def saved_config(out_dir: str | os.PathLike) -> TrainConfig:
    """The configuration of the run whose checkpoint is in ``out_dir``."""
    return TrainConfig.from_dict(_load_checkpoint(Path(out_dir) / CHECKPOINT, "cpu")["config"])


def load_trained(checkpoint: str | os.PathLike, device: str = "cpu") -> tuple[Autoencoder, TrainConfig, dict]:
    """The model of a checkpoint, its configuration, and its recorded animation
    (``{"steps": [...], "frames": uint8 [F, S, H, W]}``)."""
    state = _load_checkpoint(Path(checkpoint), device)
    config = TrainConfig.from_dict(state["config"])
    model = build_model(config.model).to(device)
    model.load_state_dict(state["model"])
    position = state["position"]
    frames = torch.stack(position["frames"]) if position["frames"] else torch.empty(0, dtype=torch.uint8)
    return model, config, {"steps": position["frame_steps"], "frames": frames}


def _run(config: TrainConfig, world: _World, resume: bool, progress: bool) -> Trained:
    if config.batch_size % world.size:
        raise ValueError(f"batch size {config.batch_size} must be a multiple of the {world.size} processes")
    out_dir = Path(config.out_dir)
    checkpoint = out_dir / CHECKPOINT
    torch.manual_seed(config.seed)
    model = build_model(config.model).to(world.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    position = _Position()
    if resume:
        _restore(checkpoint, model, optimizer, position, world.device)
    elif world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    # on the device once: a batch is then an index into device memory
    train_images = data.load(config.dataset, "train", config.data_dir, download=config.download,
                             limit=config.train_limit).images.to(world.device)
    test_images = data.load(config.dataset, "test", config.data_dir, download=config.download,
                            limit=config.test_limit).images
    batches = len(train_images) // config.batch_size  # the last partial batch is dropped
    if batches == 0:
        raise ValueError(f"{len(train_images)} training images make no batch of {config.batch_size}")
    frame_steps = _log_spaced(config.epochs * batches)
    samples = test_images[: config.animation_samples].to(world.device)
    records = world.is_main and len(samples) > 0
    net = DistributedDataParallel(model) if world.distributed else model

    with _deferred_interrupt() as interrupt:
        for epoch in range(position.epoch, config.epochs):
            order = _epoch_order(len(train_images), config.seed, epoch)
            started = time.perf_counter()
            from tqdm import tqdm  # noqa: PLC0415 - the train extra's; the CLI imports this module on any install

            bar = tqdm(range(position.step_in_epoch, batches), desc=f"epoch {epoch + 1}/{config.epochs}",
                       initial=position.step_in_epoch, total=batches, disable=not (progress and world.is_main),
                       dynamic_ncols=True)
            for step in bar:
                if records and position.global_step in frame_steps:
                    _record_frame(model, samples, position)
                batch = order[step * config.batch_size : (step + 1) * config.batch_size][world.rank :: world.size]
                images = train_images[batch.to(world.device)]
                loss, hits = _step(net, optimizer, images)
                position.loss_sum += loss * len(images)
                position.hits += hits
                position.samples += len(images)
                position.step_in_epoch, position.global_step = step + 1, position.global_step + 1
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{hits / images.numel():.4f}")
                if world.total(float(interrupt.requested))[0]:
                    position.seconds += time.perf_counter() - started
                    if world.is_main:
                        _save(checkpoint, config, model, optimizer, position)
                    raise KeyboardInterrupt(f"training interrupted; resume from {checkpoint}")
            bar.close()
            position.seconds += time.perf_counter() - started
            _end_epoch(world, model, test_images, position)
            if world.is_main:
                _save(checkpoint, config, model, optimizer, position)
                _write_metrics(out_dir, position.history)
    if records and position.global_step not in position.frame_steps:
        _record_frame(model, samples, position)
        _save(checkpoint, config, model, optimizer, position)
    return Trained(model, position.history, checkpoint)


def _step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor) -> tuple[float, int]:
    """One Adam step on the batch's pixel MSE; returns the loss and the pixels within the article's tolerance."""
    output, _ = net(images)
    loss = F.mse_loss(output, images)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item(), int(pixel_hits(output.detach(), images))


def _end_epoch(world: _World, model: Autoencoder, test_images: torch.Tensor, position: _Position) -> None:
    loss_sum, hits, samples = world.total(position.loss_sum, position.hits, position.samples)
    row = {
        "epoch": position.epoch + 1,
        "step": position.global_step,
        "train_loss": loss_sum / samples,
        "train_accuracy": hits / (samples * test_images[0].numel()),
    }
    if world.is_main:
        test = reconstruction_metrics(model, test_images)
        row |= {f"test_{name}": value for name, value in test.items() if not name.startswith("black")}
        row["seconds"] = position.seconds
        position.history.append(row)
    position.epoch += 1
    position.step_in_epoch, position.loss_sum, position.hits, position.samples, position.seconds = 0, 0.0, 0, 0, 0.0


def _epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a function of (seed, epoch) alone, so a resumed run repeats it."""
    return torch.randperm(count, generator=torch.Generator().manual_seed((seed << 20) + epoch))


def _log_spaced(last_step: int) -> set[int]:
    """Step 0 and steps spaced evenly on a log scale up to last_step (the article's animation)."""
    exponents = range(int(FRAMES_PER_DOUBLING * math.log2(max(last_step, 1))) + 1)
    return {0} | {round(2 ** (k / FRAMES_PER_DOUBLING)) for k in exponents}


@torch.no_grad()
def _record_frame(model: Autoencoder, samples: torch.Tensor, position: _Position) -> None:
    output, _ = model(samples)
    position.frames.append((output.clamp(0, 1) * 255).round().to(torch.uint8).cpu())
    position.frame_steps.append(position.global_step)


@contextlib.contextmanager
def _deferred_interrupt():
    """Turns the first Ctrl-C into a request (``.requested``) that the loop honours after the current step."""

    class Interrupt:
        requested = False

    interrupt = Interrupt()
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield interrupt
        return

    def handler(signum, frame):
        if interrupt.requested:
            raise KeyboardInterrupt
        interrupt.requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, previous)


# --- checkpoints and logs: written to a temp file, then renamed over the old one --------------------


def _atomic_write(path: Path, write) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    write(temp)
    os.replace(temp, path)


def _save(path: Path, config: TrainConfig, model: Autoencoder, optimizer: torch.optim.Optimizer,
          position: _Position) -> None:
    state = {
        "config": asdict(config),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "position": asdict(position),
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    _atomic_write(path, lambda temp: torch.save(state, temp))


def _load_checkpoint(path: Path, device) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location=device, weights_only=True)


def _restore(path: Path, model: Autoencoder, optimizer: torch.optim.Optimizer, position: _Position,
             device: torch.device) -> None:
    state = _load_checkpoint(path, device)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for name, value in state["position"].items():
        setattr(position, name, value)
    torch.set_rng_state(state["rng"].cpu())
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])


def _write_metrics(out_dir: Path, history: list[dict]) -> None:
    _atomic_write(out_dir / METRICS_JSON, lambda temp: temp.write_text(json.dumps(history, indent=1)))
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    _atomic_write(out_dir / METRICS_CSV, lambda temp: temp.write_text(table.getvalue()))
