"""splatkern: differentiable drawing as fused PyTorch ops: Gaussian markers (``splat_render``) and
polyline pen strokes of varying width and intensity (``stroke_render``), composited per pixel with
max, softor, over or smoothmax."""

from splatkern.facts import COMPOSITES
from splatkern.ops import available_backends, splat_render, stroke_render
from splatkern.reference import splat_render_reference
from splatkern.stroke_reference import stroke_render_reference

__version__ = "0.1.0"
__all__ = ["COMPOSITES", "available_backends", "splat_render", "splat_render_reference", "stroke_render",
           "stroke_render_reference", "__version__"]
