"""The contract of ``stroke_render``, written once: its docstring and its plain-PyTorch oracle.

``stroke_render`` draws polyline pen strokes whose width and intensity vary
along them, and composites the strokes per pixel by the rule every op shares
(:func:`splatkern.reference.composite_reference`). This module imports no kernel.

The derivatives a fused backward computes, for one segment at one pixel (autograd of
:func:`stroke_values` is their definition; this is its closed form). With ``d = b - a``,
``u = p - a``, ``L2 = |d|^2``, the unclamped ``t0 = (u . d) / L2``, ``t = clamp(t0, 0, 1)``,
``r = p - q = u - t d``, ``E = exp(-|r|^2 / (2 S^2))``, ``S = sigma(t)``, ``A = amp(t)`` and
``value = A E``::

    d value / d amp_k = (1 - t) E              d value / d amp_{k+1} = t E
    d value / d sigma_k = (1 - t) A E |r|^2 / S^3,   d value / d sigma_{k+1} = t A E |r|^2 / S^3
    d value / d a = (1 - t) A E r / S^2 + V (-d - u + 2 t d) / L2
    d value / d b =       t A E r / S^2 + V (u - 2 t d) / L2

where ``V = d value / d t = E (amp_{k+1} - amp_k) + A E |r|^2 / S^3 (sigma_{k+1} - sigma_k)`` when
``0 < t0 < 1`` (the term ``A E (r . d) / S^2`` vanishes there: ``r`` is perpendicular to ``d``), and
``V = 0`` where ``t`` is clamped or ``a = b`` (``t`` constant). A stroke passes its pixel's gradient
to its winning segment only (the max over segments), and strokes take theirs from the composite
(``d out / d v_s`` of :func:`splatkern.reference.composite_reference`).
"""

from __future__ import annotations

import torch

from splatkern.facts import COMPOSITES, UNKNOWN_COMPOSITE
from splatkern.reference import composite_reference, nothing_drawn


def stroke_render_reference(
    paths: torch.Tensor,
    sigmas: torch.Tensor,
    amps: torch.Tensor,
    height: int,
    width: int,
    composite: str = "max",
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Draw polyline strokes of varying width and intensity and composite them per pixel.

    Contract (shared by every backend of ``splatkern.stroke_render``):

    * ``paths``  ``[..., S, P, 2]`` — ``S`` strokes of ``P >= 1`` vertices ``(x, y)`` in **pixel
      units**, the pixel convention of ``splat_render``: pixel row ``i``, column ``j`` has its centre
      at ``x = j, y = i``.
    * ``sigmas`` ``[..., S, P]`` — the width at each vertex, every value ``> 0``.
    * ``amps``   ``[..., S, P]`` — the intensity at each vertex (``stroke_render`` defaults it to 1);
      in ``[0, 1]`` for the ``"softor"`` and ``"over"`` composites.

    Segment ``k`` of a stroke joins its vertices ``a = k`` and ``b = k + 1``. At the pixel centre
    ``p``::

        t = clamp(((p - a) . (b - a)) / |b - a|^2, 0, 1)      (t = 0 where a = b)
        q = a + t (b - a)
        sigma(t) = (1 - t) sigma_k + t sigma_{k+1},   amp(t) = (1 - t) amp_k + t amp_{k+1}
        value_k(p) = amp(t) * exp(-|p - q|^2 / (2 sigma(t)^2))

    * A stroke's value is the max over its segments, ties to the lowest ``k``; with ``P = 1`` it is
      its one vertex drawn as a marker, ``splat_render``'s value.
    * Strokes are composited over ``s`` as ``splat_render`` composites markers over ``n``: the same
      four modes and rules (``composite_reference``; ``over``: stroke 0 in front).
    * ``S = 0`` gives an all-zero image in every mode.
    * Gradients are the exact first derivatives for ``paths``, ``sigmas`` and ``amps``, through ``t``
      too where the projection falls inside the segment (``sigma`` and ``amp`` depend on ``t`` there);
      this oracle's autograd is their definition.
    * Returns ``(image [..., H, W], index)``: for ``"max"``, ``index`` is the int32 winner
      ``s * max(P - 1, 1) + k`` (stroke ``s``, its segment ``k``; ties to the lowest ``s``, then
      ``k``), ``-1`` where ``S = 0``; ``None`` for the other modes.

    The fused kernels flush a segment's value to 0 where its exponent ``|p - q|^2 / (2 sigma(t)^2)``
    exceeds the per-axis flush exponent of ``splat_render`` (``splatkern/facts.py``; the value is then
    below ``|amp| * sqrt(smallest normal)``), which lets them skip every segment outside its box grown
    by ``sqrt(2 * flush exponent) * max(sigma_k, sigma_{k+1})``: exact under that rule. Where every
    value at a pixel is flushed, their winner is the lowest stroke and segment, while this oracle's
    may be whichever tiny value is largest.

    It materialises ``[..., S, P - 1, H, W]``: obviously correct, and slow.
    """
    if composite not in COMPOSITES:
        raise ValueError(f"stroke_render: {UNKNOWN_COMPOSITE}, got {composite!r}")
    if paths.dim() < 3 or paths.shape[-1] != 2 or paths.shape[-2] < 1:
        raise ValueError(f"stroke_render: paths must have shape [..., S, P, 2] with P >= 1, got {list(paths.shape)}")
    batch_shape, n_strokes, n_vertices = paths.shape[:-3], paths.shape[-3], paths.shape[-2]
    if n_strokes == 0:
        return nothing_drawn(paths, batch_shape, height, width, composite)
    values, segment = stroke_values(paths, sigmas, amps, height, width)  # [..., S, H, W] twice
    if composite != "max":
        return composite_reference(values, composite, temperature), None
    image, stroke = values.max(dim=-3)
    winner_segment = segment.gather(-3, stroke.unsqueeze(-3)).squeeze(-3)
    return image, (stroke * max(n_vertices - 1, 1) + winner_segment).to(torch.int32)


def stroke_values(paths: torch.Tensor, sigmas: torch.Tensor, amps: torch.Tensor, height: int,
                  width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., S, H, W]`` each stroke's value at every pixel (the max over its segments) and the
    segment ``k`` attaining it, in the conventions of :func:`stroke_render_reference`."""
    if paths.shape[-2] == 1:  # no segment: the vertex as a marker (t = 0 on a = b)
        paths, sigmas, amps = (torch.cat([x, x], dim=dim) for x, dim in ((paths, -2), (sigmas, -1), (amps, -1)))
    start, end = paths[..., :-1, :], paths[..., 1:, :]  # [..., S, K, 2]
    xs = torch.arange(width, dtype=paths.dtype, device=paths.device)
    ys = torch.arange(height, dtype=paths.dtype, device=paths.device)[:, None]
    ax, ay = start[..., 0, None, None], start[..., 1, None, None]  # [..., S, K, 1, 1]
    dx, dy = (end - start)[..., 0, None, None], (end - start)[..., 1, None, None]
    length2 = dx * dx + dy * dy
    # t = 0 where a = b; the safe denominator keeps the other branch's gradient finite there
    safe = torch.where(length2 > 0, length2, torch.ones_like(length2))
    t = torch.where(length2 > 0, ((xs - ax) * dx + (ys - ay) * dy) / safe, torch.zeros_like(length2))
    t = t.clamp(0, 1)  # [..., S, K, H, W]
    qx, qy = ax + t * dx, ay + t * dy
    sigma = (1 - t) * sigmas[..., :-1, None, None] + t * sigmas[..., 1:, None, None]
    amp = (1 - t) * amps[..., :-1, None, None] + t * amps[..., 1:, None, None]
    per_segment = amp * torch.exp(-((xs - qx) ** 2 + (ys - qy) ** 2) / (2 * sigma**2))
    values, segment = per_segment.max(dim=-3)
    return values, segment
