"""The contract of ``splat_render``, written once: its docstring and its plain-PyTorch oracle.

Every backend (C++ CPU, CUDA, Triton) implements exactly the function below and is tested
against it. This module imports no kernel.
"""

from __future__ import annotations

import torch


def splat_render_reference(
    means: torch.Tensor,
    sigmas: torch.Tensor,
    amps: torch.Tensor,
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Draw isotropic Gaussian markers and composite them with a max over markers.

    Contract (shared by every backend of ``splatkern.splat_render``):

    * ``means``  ``[..., N, 2]`` — marker centres ``(x, y)`` in **pixel units**. The pixel in
      row ``i``, column ``j`` has its centre at ``x = j, y = i``. Markers may lie outside the image.
    * ``sigmas`` ``[..., N]`` — standard deviation in pixels, every value ``> 0``.
    * ``amps``   ``[..., N]`` — intensity (``splat_render`` defaults it to 1).
    * Leading dims ``...`` are any batch shape (possibly none) and must be equal for all three.

    For every pixel ``(i, j)``::

        image[..., i, j] = max_n  amps[..., n] * exp(-((j - mx_n)^2 + (i - my_n)^2) / (2 sigmas[..., n]^2))
        index[..., i, j] = the n attaining that max; ties go to the lowest n (torch.argmax's rule)

    * ``N = 0`` gives an all-zero image and an index of ``-1`` everywhere.
    * Gradients of ``image`` flow only to the winning marker of each pixel (``means``, ``sigmas``
      and ``amps`` of ``index[..., i, j]``), as autograd of ``torch.max`` does here. The fused
      backends give these first derivatives only: differentiating their gradient again
      (``create_graph=True``) raises ``NotImplementedError``; this reference differentiates twice.
    * Returns ``(image [..., H, W] in the input dtype, index [..., H, W] int32)``.

    Fused kernels use the separability ``exp(-(dx^2 + dy^2)/2s^2) = exp(-dx^2/2s^2) * exp(-dy^2/2s^2)``
    and so round about one ulp differently; their winner may differ from this oracle only where
    the two best values are within rounding of each other (a near-tie). Exact ties stay exact.

    This is the naive form the 2019 article's TensorFlow code used: it materialises
    ``[..., N, H, W]`` and reduces it, which is what makes it obviously correct and slow.
    """
    batch_shape = means.shape[:-2]
    n_markers = means.shape[-2]
    if n_markers == 0:
        image = means.new_zeros(*batch_shape, height, width)
        index = torch.full((*batch_shape, height, width), -1, dtype=torch.int32, device=means.device)
        return image, index
    xs = torch.arange(width, dtype=means.dtype, device=means.device)
    ys = torch.arange(height, dtype=means.dtype, device=means.device)
    mx = means[..., 0, None, None]  # [..., N, 1, 1]
    my = means[..., 1, None, None]
    sq_dist = (xs - mx) ** 2 + (ys[:, None] - my) ** 2  # [..., N, H, W]
    per_marker = amps[..., None, None] * torch.exp(-sq_dist / (2 * sigmas[..., None, None] ** 2))
    image, index = per_marker.max(dim=-3)
    return image, index.to(torch.int32)
