"""The compositing rules of ``composite_reference``: each mode against its formula written out per
pixel, its gradients where a value is exactly 1 and at small temperatures, and the properties the
modes promise on random inputs (hypothesis)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splatkern.reference import COMPOSITES, composite_reference, marker_values, splat_render_reference


def by_formula(values: list[float], composite: str, temperature: float = 1.0) -> float:
    """One pixel's composite, in plain Python from the docstring's formulas."""
    if not values:
        return 0.0
    if composite == "max":
        return max(values)
    if composite == "softor":
        return 1 - math.prod(1 - v for v in values)
    if composite == "over":
        return sum(v * math.prod(1 - u for u in values[:n]) for n, v in enumerate(values))
    top = max(values)
    weights = [math.exp((v - top) / temperature) for v in values]
    return sum(w * v for w, v in zip(weights, values)) / sum(weights)


def random_markers(batch: int, n_markers: int, seed: int, *, amps_max: float = 1.0):
    gen = torch.Generator().manual_seed(seed)
    means = torch.rand(batch, n_markers, 2, generator=gen, dtype=torch.float64) * 12 - 2  # some off the canvas
    sigmas = torch.rand(batch, n_markers, generator=gen, dtype=torch.float64) * 2 + 0.5
    amps = torch.rand(batch, n_markers, generator=gen, dtype=torch.float64) * amps_max
    return means, sigmas, amps


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("n_markers", [0, 1, 7])
def test_each_mode_is_its_formula(composite, n_markers):
    means, sigmas, amps = random_markers(2, n_markers, seed=n_markers)
    values = marker_values(means, sigmas, amps, 5, 9)
    image = composite_reference(values, composite, temperature=0.3)
    assert image.shape == (2, 5, 9)
    for b, i, j in [(0, 0, 0), (0, 2, 4), (1, 4, 8), (1, 3, 1)]:
        expected = by_formula(values[b, :, i, j].tolist(), composite, temperature=0.3)
        assert image[b, i, j].item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_max_mode_is_splat_render_reference():
    means, sigmas, amps = random_markers(3, 6, seed=1)
    image, _ = splat_render_reference(means, sigmas, amps, 7, 4)
    assert torch.equal(composite_reference(marker_values(means, sigmas, amps, 7, 4), "max"), image)


def test_unknown_composite_is_a_value_error():
    with pytest.raises(ValueError, match="composite must be one of"):
        composite_reference(torch.zeros(1, 2, 2, 2), "sum")


@pytest.mark.parametrize("composite", ["softor", "over"])
def test_a_value_of_exactly_one_has_the_exact_finite_gradient(composite):
    """Marker 0 sits on pixel (1, 1) with amp 1: v_0 = 1 exactly there. d out / d v_k is
    prod_{m != k} (1 - v_m) for softor (and, telescoped, for over): 0 for every k but 0."""
    means = torch.tensor([[1.0, 1.0], [1.5, 1.2], [0.3, 1.8]], dtype=torch.float64)
    sigmas = torch.tensor([1.0, 0.8, 1.3], dtype=torch.float64)
    amps = torch.tensor([1.0, 0.7, 0.4], dtype=torch.float64)
    values = marker_values(means, sigmas, amps, 3, 3).detach().requires_grad_()
    assert values[0, 1, 1].item() == 1.0
    composite_reference(values, composite)[1, 1].backward()
    grad = values.grad[:, 1, 1]
    assert torch.isfinite(values.grad).all()
    others = (1 - values[1:, 1, 1]).prod().item()
    assert grad[0].item() == pytest.approx(others, rel=1e-12)
    assert grad[1:].abs().max().item() <= 1e-15


@pytest.mark.parametrize("temperature", [1e-3, 1e-2])
def test_smoothmax_stays_finite_at_small_temperatures(temperature):
    means, sigmas, amps = random_markers(2, 9, seed=3)
    means.requires_grad_()
    image = composite_reference(marker_values(means, sigmas, amps, 6, 6), "smoothmax", temperature)
    image.sum().backward()
    assert torch.isfinite(image).all() and torch.isfinite(means.grad).all()


def test_smoothmax_counts_markers_whose_value_is_zero():
    """Two markers that are 0 at a pixel still take softmax weight: with v = (0.5, 0, 0) and
    temperature 1 the pixel is 0.5 e^0.5 / (e^0.5 + 2), not 0.5."""
    values = torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64).reshape(3, 1, 1)
    expected = 0.5 * math.exp(0.5) / (math.exp(0.5) + 2)
    assert composite_reference(values, "smoothmax").item() == pytest.approx(expected, rel=1e-12)


# --- properties on random inputs ------------------------------------------------------------------

marker_sets = st.tuples(st.integers(1, 8), st.integers(0, 2**31 - 1))


def values_of(n_markers: int, seed: int) -> torch.Tensor:
    means, sigmas, amps = random_markers(1, n_markers, seed)
    return marker_values(means, sigmas, amps, 6, 5)[0]  # [N, 6, 5], values in [0, 1]


@settings(max_examples=40, deadline=None)
@given(marker_sets)
def test_softor_is_at_least_max(marker_set):
    values = values_of(*marker_set)
    assert (composite_reference(values, "softor") >= composite_reference(values, "max") - 1e-15).all()


@settings(max_examples=40, deadline=None)
@given(marker_sets)
def test_outputs_lie_in_zero_one_when_amps_do(marker_set):
    values = values_of(*marker_set)
    for composite in COMPOSITES:
        image = composite_reference(values, composite, temperature=0.1)
        assert (image >= 0).all() and (image <= 1 + 1e-15).all(), composite


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_one_marker_is_itself_in_every_mode(seed):
    values = values_of(1, seed)
    for composite in COMPOSITES:
        assert torch.allclose(composite_reference(values, composite, temperature=0.7), values[0], rtol=0, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(marker_sets)
def test_smoothmax_approaches_max_as_temperature_falls(marker_set):
    values = values_of(*marker_set)
    gaps = [(composite_reference(values, "max") - composite_reference(values, "smoothmax", t)).abs().max().item()
            for t in (1.0, 0.1, 0.01, 0.001)]
    assert all(later <= earlier + 1e-12 for earlier, later in zip(gaps, gaps[1:])), gaps
    # At temperature t a runner-up within d of the max pulls the pixel by at most about N e^(-d/t) d.
    assert gaps[-1] <= 1e-2


@settings(max_examples=25, deadline=None)
@given(marker_sets, st.randoms(use_true_random=False))
def test_permuting_markers_changes_no_mode_but_order_of_rounding(marker_set, rng):
    """max, softor and smoothmax are symmetric in the markers. So is over, as stated: with the value as
    both coverage and intensity it telescopes to softor."""
    values = values_of(*marker_set)
    order = list(range(values.shape[0]))
    rng.shuffle(order)
    for composite in COMPOSITES:
        before = composite_reference(values, composite, temperature=0.2)
        after = composite_reference(values[order], composite, temperature=0.2)
        assert torch.allclose(before, after, rtol=1e-12, atol=1e-15), composite
    assert torch.allclose(composite_reference(values, "over"), composite_reference(values, "softor"),
                          rtol=1e-12, atol=1e-15)
