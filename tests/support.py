"""Shared test helpers: random marker sets and the comparison of a backend against the reference."""

from __future__ import annotations

import torch

import splatkern
from splatkern.reference import splat_render_reference

# (dtype, atol, rtol) for images; gradients are sums over pixels and get GRAD_SCALE times more.
TOLERANCES = {
    torch.float32: (2e-6, 2e-5),
    torch.float64: (1e-12, 1e-10),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (8e-3, 1e-2),
}
GRAD_SCALE = 50
# Pixels whose two best marker values are closer than this (relative to the best) are near-ties:
# separable kernels round differently from the reference there and may pick the other marker.
NEAR_TIE = 1e-5
# Fused kernels flush axis factors below sqrt(smallest normal) (~1e-19 in float32) to zero.
FLUSHED = 1e-15


def make_markers(batch_shape, n_markers, height, width, *, dtype=torch.float32, sigma_range=(0.3, 6.0),
                 margin=4.0, seed=0):
    """Markers spread over the image and up to `margin` px outside it; log-uniform sigmas."""
    gen = torch.Generator().manual_seed(seed)
    shape = (*batch_shape, n_markers)
    xy = torch.rand(*shape, 2, generator=gen, dtype=torch.float64)
    means = torch.stack([xy[..., 0] * (width - 1 + 2 * margin) - margin,
                         xy[..., 1] * (height - 1 + 2 * margin) - margin], dim=-1)
    lo, hi = torch.log(torch.tensor(sigma_range, dtype=torch.float64))
    sigmas = torch.exp(lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64))
    amps = 0.1 + 0.9 * torch.rand(*shape, generator=gen, dtype=torch.float64)
    return means.to(dtype), sigmas.to(dtype), amps.to(dtype)


def clear_pixels(means, sigmas, amps, height, width):
    """True where the winner is clear: its value (float64) beats the runner-up by more than NEAR_TIE
    relative, and is above FLUSHED, below which fused kernels may flush it to zero."""
    n_markers = means.shape[-2]
    m = means.detach().double().reshape(-1, n_markers, 2)
    s = sigmas.detach().double().reshape(-1, n_markers, 1, 1)
    a = amps.detach().double().reshape(-1, n_markers, 1, 1)
    xs = torch.arange(width, dtype=torch.float64)
    ys = torch.arange(height, dtype=torch.float64)
    sq = (xs - m[..., 0, None, None]) ** 2 + (ys[:, None] - m[..., 1, None, None]) ** 2
    values = torch.cat([a * torch.exp(-sq / (2 * s**2)), torch.zeros(m.shape[0], 2, height, width, dtype=torch.float64)], 1)
    top2 = values.topk(2, dim=1).values  # two zero rows pad N < 2: a lone marker is clear where it is visible
    clear = (top2[:, 0] > FLUSHED) & ((top2[:, 0] - top2[:, 1]) > NEAR_TIE * top2[:, 0])
    return clear.reshape(*means.shape[:-2], height, width)


def render_with_grads(backend, means, sigmas, amps, height, width, upstream, **kwargs):
    """Image, winner map and the gradients of sum(image * upstream) for one backend."""
    leaves = [t.detach().clone().requires_grad_() for t in (means, sigmas, amps)]
    image, index = splatkern.splat_render(*leaves, height=height, width=width, backend=backend,
                                          return_index=True, **kwargs)
    (image.float() * upstream).sum().backward()
    return image.detach(), index, [t.grad for t in leaves]


def assert_matches_reference(backend, means, sigmas, amps, height, width, *, seed=0, **kwargs):
    """Values everywhere; winner map and gradients where the winner is clear (the upstream gradient
    is zeroed on near-ties, so no near-tie pixel can send its gradient to the other marker)."""
    dtype = means.dtype
    atol, rtol = TOLERANCES[dtype]
    clear = clear_pixels(means, sigmas, amps, height, width)
    gen = torch.Generator().manual_seed(seed + 1)
    upstream = torch.randn(*clear.shape, generator=gen) * clear
    image, index, grads = render_with_grads(backend, means, sigmas, amps, height, width, upstream, **kwargs)
    # The oracle runs in float64 (fp16/bf16 inputs are computed in float32 by contract, so rounded once).
    ref_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    ref_inputs = [t.to(ref_dtype) for t in (means, sigmas, amps)]
    ref_image, ref_index, ref_grads = render_with_grads(
        "reference", *[t.double() for t in ref_inputs], height, width, upstream.double())

    assert image.dtype == dtype and image.shape == ref_image.shape
    assert index.dtype == torch.int32
    torch.testing.assert_close(image.double(), ref_image.to(dtype).double(), atol=atol, rtol=rtol)
    assert torch.equal(index[clear], ref_index[clear])
    for name, grad, ref_grad in zip(("means", "sigmas", "amps"), grads, ref_grads):
        assert grad.dtype == dtype, name
        torch.testing.assert_close(grad.double(), ref_grad.to(dtype).double(), atol=atol * GRAD_SCALE,
                                   rtol=rtol * GRAD_SCALE, msg=lambda m: f"grad of {name}: {m}")
    return clear


def reference_image(means, sigmas, amps, height, width):
    """The oracle's image alone, in float64."""
    return splat_render_reference(means.double(), sigmas.double(), amps.double(), height, width)[0]
