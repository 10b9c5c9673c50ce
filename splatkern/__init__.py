"""splatkern: a differentiable Gaussian marker renderer (max, softor, over or smoothmax compositing) as a
fused PyTorch op."""

from splatkern.facts import COMPOSITES
from splatkern.ops import available_backends, splat_render
from splatkern.reference import splat_render_reference

__version__ = "0.1.0"
__all__ = ["COMPOSITES", "available_backends", "splat_render", "splat_render_reference", "__version__"]
