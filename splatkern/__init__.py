"""splatkern: a differentiable max-composited Gaussian marker renderer as a fused PyTorch op."""

from splatkern.ops import available_backends, splat_render
from splatkern.reference import splat_render_reference

__version__ = "0.1.0"
__all__ = ["available_backends", "splat_render", "splat_render_reference", "__version__"]
