"""Inverse-graphics autoencoders: encoders, the static-points and velocity-gesture decoders."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from splatkern.checks import check_composite

from splatkern.models.autoencoder import Autoencoder
from splatkern.models.encoders import ENCODERS
from splatkern.models.gesture import GestureDecoder
from splatkern.models.markers import PRIMITIVES, Commands, check_primitive, draw
from splatkern.models.static import StaticPointsDecoder

MODELS = ("gesture", "static")
DEFAULT_POINTS = {"gesture": 25, "static": 10}
# "sweep": PyTorch's default init, the gesture head set to draw a line across the canvas (stable);
# "default": PyTorch's default init; "glorot": the article's (TensorFlow's) Glorot-uniform init.
INITS = ("sweep", "default", "glorot")


@dataclass
class ModelConfig:
    model: str = "gesture"
    encoder: str = "mlp"
    points: int | None = None  # per stroke for the gesture model; None: the model's default (DEFAULT_POINTS)
    step_size: float = 3.0  # gesture only: the largest step per marker, in pixels at resolution 28
    init: str = "sweep"
    backend: str = "auto"
    resolution: int = 28
    composite: str = "max"  # how splat_render composites the markers (splatkern.facts.COMPOSITES)
    temperature: float = 1.0  # smoothmax's softmax temperature
    primitive: str = "points"  # gesture: draw the markers as dots or as continuous strokes (markers.PRIMITIVES)
    strokes: int = 1  # gesture: pen strokes per image, each of `points` markers (the pen lifts between them)


def build_model(config: ModelConfig) -> Autoencoder:
    """The autoencoder described by ``config``, freshly initialised (from torch's global RNG)."""
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; choose one of {MODELS}")
    if config.encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {config.encoder!r}; choose one of {tuple(ENCODERS)}")
    if config.init not in INITS:
        raise ValueError(f"unknown init {config.init!r}; choose one of {INITS}")
    check_composite(config.composite, config.temperature)
    check_primitive(config.primitive)
    if config.model != "gesture" and (config.primitive != "points" or config.strokes != 1):
        raise ValueError(f"primitive {config.primitive!r} and strokes {config.strokes} need the gesture model: "
                         f"the {config.model} model's markers have no order")
    points = config.points or DEFAULT_POINTS[config.model]
    encoder = ENCODERS[config.encoder](image_size=config.resolution)
    if config.model == "gesture":
        decoder = GestureDecoder(encoder.out_features, points, config.step_size, config.resolution, config.strokes)
    else:
        decoder = StaticPointsDecoder(encoder.out_features, points)
    model = Autoencoder(encoder, decoder, config.resolution, config.backend, config.composite, config.temperature,
                        config.primitive)
    if config.init == "glorot":
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
    elif config.init == "sweep" and config.model == "gesture":
        decoder.sweep_init()
    return model


__all__ = ["Autoencoder", "Commands", "GestureDecoder", "ModelConfig", "StaticPointsDecoder", "build_model", "draw",
           "MODELS", "INITS", "PRIMITIVES"]
