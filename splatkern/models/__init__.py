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
# What a ModelConfig setting left at None means, per model. The gesture model's are the drawing whose
# commands cluster best against pixels (docs/results-autoencoder.md, "Commands against pixels"): two
# continuous strokes, composited by softor. The static model keeps the article's settings: its markers
# have no order, so they cannot be strokes.
MODEL_DEFAULTS = {
    "gesture": dict(points=25, composite="softor", primitive="stroke", strokes=2),
    "static": dict(points=10, composite="max", primitive="points", strokes=1),
}
# "sweep": PyTorch's default init, the gesture head set to draw a line across the canvas (stable);
# "default": PyTorch's default init; "glorot": the article's (TensorFlow's) Glorot-uniform init.
INITS = ("sweep", "default", "glorot")


@dataclass
class ModelConfig:
    """An autoencoder's settings. Those left at None take the model's default (MODEL_DEFAULTS) when the
    configuration is made, so a saved configuration says exactly what its run drew."""

    model: str = "gesture"
    encoder: str = "mlp"  # encoders.ENCODERS; the article's
    points: int | None = None  # markers per image, per stroke for the gesture model
    step_size: float = 3.0  # gesture only: the largest step per marker, in pixels at resolution 28
    init: str = "sweep"
    backend: str = "auto"
    resolution: int = 28
    composite: str | None = None  # how splat_render composites the markers (splatkern.facts.COMPOSITES)
    temperature: float = 1.0  # smoothmax's softmax temperature
    primitive: str | None = None  # gesture: draw the markers as dots or as continuous strokes (markers.PRIMITIVES)
    strokes: int | None = None  # gesture: pen strokes per image, each of `points` markers (the pen lifts between them)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of {MODELS}")
        for name, value in MODEL_DEFAULTS[self.model].items():
            if getattr(self, name) is None:
                setattr(self, name, value)


# The article's velocity-gesture model: 25 dots of at most 3 px steps, composited by max, read by an MLP.
ARTICLE_GESTURE = ModelConfig(model="gesture", encoder="mlp", points=25, step_size=3.0, composite="max",
                              primitive="points", strokes=1)


def build_model(config: ModelConfig) -> Autoencoder:
    """The autoencoder described by ``config``, freshly initialised (from torch's global RNG)."""
    if config.encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {config.encoder!r}; choose one of {tuple(ENCODERS)}")
    if config.init not in INITS:
        raise ValueError(f"unknown init {config.init!r}; choose one of {INITS}")
    check_composite(config.composite, config.temperature)
    check_primitive(config.primitive)
    if config.model != "gesture" and (config.primitive != "points" or config.strokes != 1):
        raise ValueError(f"primitive {config.primitive!r} and strokes {config.strokes} need the gesture model: "
                         f"the {config.model} model's markers have no order")
    encoder = ENCODERS[config.encoder](image_size=config.resolution)
    if config.model == "gesture":
        decoder = GestureDecoder(encoder.out_features, config.points, config.step_size, config.resolution, config.strokes)
    else:
        decoder = StaticPointsDecoder(encoder.out_features, config.points)
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
           "ARTICLE_GESTURE", "MODELS", "MODEL_DEFAULTS", "INITS", "PRIMITIVES"]
