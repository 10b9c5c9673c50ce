"""The contract of ``splat_render``, written once: its docstring and its plain-PyTorch oracle.

Every backend (C++ CPU, CUDA, Triton) implements exactly ``splat_render_reference`` and is tested
against it. ``composite_reference`` states the per-pixel compositing rules that every op shares.
This module imports no kernel.
"""

from __future__ import annotations

import torch

from splatkern.facts import COMPOSITES, UNKNOWN_COMPOSITE



def splat_render_reference(
    means: torch.Tensor,
    sigmas: torch.Tensor,
    amps: torch.Tensor,
    height: int,
    width: int,
    composite: str = "max",
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Draw isotropic Gaussian markers and composite them per pixel.

    Contract (shared by every backend of ``splatkern.splat_render``):

    * ``means``  ``[..., N, 2]`` — marker centres ``(x, y)`` in **pixel units**. The pixel in
      row ``i``, column ``j`` has its centre at ``x = j, y = i``. Markers may lie outside the image.
    * ``sigmas`` ``[..., N]`` — standard deviation in pixels, every value ``> 0``.
    * ``amps``   ``[..., N]`` — intensity (``splat_render`` defaults it to 1); in ``[0, 1]`` for the
      ``"softor"`` and ``"over"`` composites.
    * Leading dims ``...`` are any batch shape (possibly none) and must be equal for all three.

    Each marker's value at pixel ``(i, j)`` is::

        v_n = amps[..., n] * exp(-((j - mx_n)^2 + (i - my_n)^2) / (2 sigmas[..., n]^2))

    and ``composite`` says how the ``N`` values of a pixel make its image value
    (:func:`composite_reference` states each rule):

    * ``"max"`` (the default): ``image = max_n v_n``, and ``index[..., i, j]`` is the ``n`` attaining
      it; ties go to the lowest ``n`` (torch.argmax's rule).
    * ``"softor"``: ``image = 1 - prod_n (1 - v_n)``.
    * ``"over"``: ``image = sum_n v_n prod_{m<n} (1 - v_m)``, marker 0 in front.
    * ``"smoothmax"``: ``image = sum_n w_n v_n``, ``w = softmax_n(v_n / temperature)`` over all ``N``
      markers, those whose value at the pixel is 0 included. ``temperature`` (a finite number
      ``> 0``) is read by this mode only.

    * ``N = 0`` gives an all-zero image in every mode, and an index of ``-1`` everywhere.
    * Gradients: with ``"max"`` the image's gradient flows only to each pixel's winning marker
      (``means``, ``sigmas`` and ``amps`` of ``index[..., i, j]``), as autograd of ``torch.max`` does
      here. The other modes give gradient to every marker with ``v_n > 0`` at a pixel: the exact
      first derivatives of their formulas, finite everywhere in the domain (``v_n = 1`` included;
      smoothmax at temperatures down to 1e-3). The fused backends give first derivatives only:
      differentiating their gradient again (``create_graph=True``) raises ``NotImplementedError``;
      this reference differentiates twice.
    * Returns ``(image [..., H, W] in the input dtype, index)``: ``index`` is the int32 winner map
      ``[..., H, W]`` for ``"max"`` and ``None`` for the other modes, which have no winner.

    Fused kernels use the separability ``exp(-(dx^2 + dy^2)/2s^2) = exp(-dx^2/2s^2) * exp(-dy^2/2s^2)``
    and so round about one ulp differently; their winner may differ from this oracle only where
    the two best values are within rounding of each other (a near-tie). Exact ties stay exact.
    They flush a per-axis factor to 0 where its exponent ``d^2 / (2 s^2)`` exceeds
    ``-0.5 * log(smallest normal)`` of the dtype (``splatkern/facts.py``), far below any value
    that changes a result at the dtype's precision.

    This is the naive form the 2019 article's TensorFlow code used: it materialises
    ``[..., N, H, W]`` and reduces it, which is what makes it obviously correct and slow.
    """
    if composite not in COMPOSITES:
        raise ValueError(f"splat_render: {UNKNOWN_COMPOSITE}, got {composite!r}")
    if means.shape[-2] == 0:
        return nothing_drawn(means, means.shape[:-2], height, width, composite)
    values = marker_values(means, sigmas, amps, height, width)
    if composite != "max":
        return composite_reference(values, composite, temperature), None
    image, index = values.max(dim=-3)
    return image, index.to(torch.int32)


def nothing_drawn(like: torch.Tensor, batch_shape: torch.Size, height: int, width: int,
                  composite: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What every op returns for no primitives: an all-zero image of ``like``'s dtype and device and,
    for ``"max"``, an index of ``-1`` everywhere (``None`` for the other modes)."""
    image = like.new_zeros(*batch_shape, height, width)
    index = torch.full((*batch_shape, height, width), -1, dtype=torch.int32, device=like.device)
    return image, (index if composite == "max" else None)


def marker_values(means: torch.Tensor, sigmas: torch.Tensor, amps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``[..., N, H, W]``: each marker's value ``v_n = amps_n * exp(-d^2 / (2 sigma_n^2))`` at every pixel,
    in the pixel convention of :func:`splat_render_reference`."""
    xs = torch.arange(width, dtype=means.dtype, device=means.device)
    ys = torch.arange(height, dtype=means.dtype, device=means.device)
    mx = means[..., 0, None, None]  # [..., N, 1, 1]
    my = means[..., 1, None, None]
    sq_dist = (xs - mx) ** 2 + (ys[:, None] - my) ** 2  # [..., N, H, W]
    return amps[..., None, None] * torch.exp(-sq_dist / (2 * sigmas[..., None, None] ** 2))


def composite_reference(values: torch.Tensor, composite: str = "max", temperature: float = 1.0) -> torch.Tensor:
    r"""Composite per-primitive values ``v [..., N, H, W]`` over ``N`` into an image ``[..., H, W]``.

    The rule every op shares (markers today; a stroke plays a marker's part the same way):

    * ``"max"``: ``out = max_n v_n``; its gradient reaches each pixel's winner only (lowest ``n`` on ties).
    * ``"softor"``: ``out = 1 - prod_n (1 - v_n)``.
    * ``"over"``: ``out = sum_n v_n prod_{m<n} (1 - v_m)``, primitive 0 in front. With the value as
      both coverage and intensity the sum telescopes: ``over`` equals ``softor`` in exact arithmetic,
      and the two differ by rounding only.
    * ``"smoothmax"``: ``out = sum_n w_n v_n`` with ``w = softmax_n(v_n / temperature)`` over all ``N``
      primitives, those whose value is 0 at the pixel included.

    ``softor`` and ``over`` are meant for values in ``[0, 1]`` (``0 <= amps <= 1``); ``temperature`` is
    used by ``smoothmax`` only. ``N = 0`` gives zeros in every mode. Gradients are autograd's of these
    formulas: ``torch.prod`` and ``torch.cumprod`` differentiate exactly where a factor ``1 - v`` is 0,
    and ``torch.softmax`` subtracts its running max, so ``v = 1`` and small temperatures stay finite.
    """
    if composite not in COMPOSITES:
        raise ValueError(f"splat_render: {UNKNOWN_COMPOSITE}, got {composite!r}")
    if values.shape[-3] == 0:
        return values.new_zeros(*values.shape[:-3], *values.shape[-2:])
    if composite == "max":
        return values.max(dim=-3).values
    if composite == "softor":
        return 1 - torch.prod(1 - values, dim=-3)
    if composite == "over":
        in_front = torch.cumprod(1 - values, dim=-3)  # prod_{m<=n}: shifted by one below
        transmittance = torch.cat([torch.ones_like(in_front[..., :1, :, :]), in_front[..., :-1, :, :]], dim=-3)
        return (values * transmittance).sum(dim=-3)
    weights = torch.softmax(values / temperature, dim=-3)
    return (weights * values).sum(dim=-3)
