"""The contract of stroke_render (splatkern/stroke_reference.py), checked on its oracle before any
kernel implements it: its invariants against splat_render's reference, the segment rules, the winner
index, and its gradients (gradcheck in float64, through the projection parameter t too)."""

from __future__ import annotations

import pytest
import torch

from splatkern.facts import COMPOSITES
from splatkern.reference import splat_render_reference
from splatkern.stroke_reference import stroke_render_reference

HEIGHT, WIDTH = 13, 17


def random_strokes(batch, n_strokes, n_vertices, *, seed=0, unit_amps=True):
    gen = torch.Generator().manual_seed(seed)
    scale = torch.tensor([WIDTH - 1, HEIGHT - 1], dtype=torch.float64)
    paths = torch.rand(batch, n_strokes, n_vertices, 2, generator=gen, dtype=torch.float64) * scale
    sigmas = 0.5 + 2 * torch.rand(batch, n_strokes, n_vertices, generator=gen, dtype=torch.float64)
    amps = torch.rand(batch, n_strokes, n_vertices, generator=gen, dtype=torch.float64)
    return paths, sigmas, amps if unit_amps else 1.4 * amps - 0.2


@pytest.mark.parametrize("composite", COMPOSITES)
def test_one_vertex_strokes_are_splat_render_markers(composite):
    paths, sigmas, amps = random_strokes(2, 6, 1, seed=1)
    image, index = stroke_render_reference(paths, sigmas, amps, HEIGHT, WIDTH, composite, 0.3)
    expected, expected_index = splat_render_reference(paths[..., 0, :], sigmas[..., 0], amps[..., 0], HEIGHT, WIDTH,
                                                      composite, 0.3)
    torch.testing.assert_close(image, expected, rtol=1e-12, atol=1e-12)
    if composite == "max":
        assert torch.equal(index, expected_index)  # s * max(P - 1, 1) + 0 = s


def test_coincident_vertices_are_a_marker():
    point = torch.tensor([[[[6.3, 4.7]] * 4]], dtype=torch.float64)
    sigma, amp = torch.full((1, 1, 4), 1.7, dtype=torch.float64), torch.full((1, 1, 4), 0.8, dtype=torch.float64)
    image, index = stroke_render_reference(point, sigma, amp, HEIGHT, WIDTH)
    marker, _ = splat_render_reference(point[..., 0, :], sigma[..., 0], amp[..., 0], HEIGHT, WIDTH)
    torch.testing.assert_close(image, marker, rtol=1e-12, atol=1e-12)
    assert (index == 0).all()  # every segment ties: the lowest k


def test_collinear_even_vertices_equal_their_end_to_end_segment():
    start, end = torch.tensor([1.5, 2.0], dtype=torch.float64), torch.tensor([14.0, 10.5], dtype=torch.float64)
    steps = torch.linspace(0, 1, 6, dtype=torch.float64)[:, None]

    def draw(path):
        p = path.shape[0]
        return stroke_render_reference(path[None, None], torch.full((1, 1, p), 1.3, dtype=torch.float64),
                                       torch.full((1, 1, p), 0.9, dtype=torch.float64), HEIGHT, WIDTH)[0]

    torch.testing.assert_close(draw(start + steps * (end - start)), draw(torch.stack([start, end])),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_reversing_a_stroke_leaves_its_image(composite):
    paths, sigmas, amps = random_strokes(2, 3, 5, seed=2)
    image, _ = stroke_render_reference(paths, sigmas, amps, HEIGHT, WIDTH, composite, 0.5)
    reversed_image, _ = stroke_render_reference(paths.flip(-2), sigmas.flip(-1), amps.flip(-1), HEIGHT, WIDTH,
                                                composite, 0.5)
    torch.testing.assert_close(reversed_image, image, rtol=1e-12, atol=1e-12)


def test_width_and_intensity_interpolate_along_a_segment():
    """On the segment itself the value is amp(t): at its midpoint the mean of the two vertices'."""
    path = torch.tensor([[[[2.0, 6.0], [14.0, 6.0]]]], dtype=torch.float64)
    sigmas = torch.tensor([[[0.5, 3.0]]], dtype=torch.float64)
    amps = torch.tensor([[[0.2, 1.0]]], dtype=torch.float64)
    image, _ = stroke_render_reference(path, sigmas, amps, HEIGHT, WIDTH)
    assert image[0, 6, 8].item() == pytest.approx(0.6)
    # one pixel off the line at t = 1/2: sigma(t) = 1.75
    assert image[0, 7, 8].item() == pytest.approx(0.6 * torch.exp(torch.tensor(-1 / (2 * 1.75**2))).item())


def test_max_index_names_the_stroke_and_segment():
    paths = torch.tensor([[[[1.0, 1.0], [5.0, 1.0], [5.0, 9.0]], [[12.0, 3.0], [12.0, 11.0], [16.0, 11.0]]]],
                         dtype=torch.float64)
    sigmas, amps = torch.full((1, 2, 3), 0.8, dtype=torch.float64), torch.ones(1, 2, 3, dtype=torch.float64)
    _, index = stroke_render_reference(paths, sigmas, amps, HEIGHT, WIDTH)
    assert index.dtype == torch.int32
    assert index[0, 1, 3].item() == 0 and index[0, 6, 5].item() == 1  # stroke 0: segments 0, 1
    assert index[0, 7, 12].item() == 2 and index[0, 11, 15].item() == 3  # stroke 1: 1 * (3 - 1) + k


@pytest.mark.parametrize("composite", COMPOSITES)
def test_no_strokes_draw_zeros(composite):
    paths, sigmas, amps = random_strokes(3, 0, 4)
    image, index = stroke_render_reference(paths, sigmas, amps, HEIGHT, WIDTH, composite)
    assert torch.equal(image, torch.zeros(3, HEIGHT, WIDTH, dtype=torch.float64))
    assert (index == -1).all() if composite == "max" else index is None


def test_bad_paths_raise_naming_them():
    with pytest.raises(ValueError, match="paths must have shape"):
        stroke_render_reference(torch.zeros(1, 2, 0, 2), torch.ones(1, 2, 0), torch.ones(1, 2, 0), 4, 4)
    with pytest.raises(ValueError, match="composite must be one of"):
        stroke_render_reference(*random_strokes(1, 1, 2), 4, 4, "sum")


@pytest.mark.parametrize("composite", COMPOSITES)
def test_gradcheck_float64(composite):
    """Through t as well: pixels whose projection falls inside a segment, where sigma(t) and amp(t)
    move with the vertices."""
    paths, sigmas, amps = random_strokes(1, 2, 3, seed=3)
    inputs = [t.clone().requires_grad_() for t in (paths, sigmas, amps)]

    def render(p, s, a):
        return stroke_render_reference(p, s, a, 7, 9, composite, 0.5)[0]

    assert torch.autograd.gradcheck(render, inputs)
