"""The fused C++ CPU kernel against the reference: values, winner maps and gradients."""

import pytest
import torch

import splatkern
from support import TOLERANCES, assert_matches_reference, make_markers

pytestmark = pytest.mark.skipif("cpu" not in splatkern.available_backends("cpu"),
                                reason="the C++ extension (splatkern._C) is not built")

SHAPES = [  # (batch_shape, N, H, W)
    ((), 1, 28, 28),
    ((3,), 7, 9, 41),
    ((2, 3), 64, 13, 7),
    ((4,), 300, 16, 20),
    ((17,), 10, 28, 28),  # batch >= 16: one tile per image
    ((2,), 25, 70, 90),  # small batch of larger images: several row tiles per image
    ((5,), 64, 1, 33),
]


@pytest.mark.parametrize("batch_shape,n_markers,height,width", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(batch_shape, n_markers, height, width, dtype):
    inputs = make_markers(batch_shape, n_markers, height, width, dtype=dtype, seed=n_markers)
    clear = assert_matches_reference("cpu", *inputs, height, width)
    assert clear.float().mean() > 0.02  # the comparison covers real pixels, not only background


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_in_same_dtype_out(dtype):
    inputs = make_markers((4,), 12, 19, 23, dtype=dtype, seed=3)
    assert_matches_reference("cpu", *inputs, 19, 23)


@pytest.mark.parametrize("sigma_range", [(1e-3, 2e-2), (50.0, 1e4)], ids=["tiny", "huge"])
def test_extreme_sigmas(sigma_range):
    inputs = make_markers((3,), 9, 15, 17, dtype=torch.float64, sigma_range=sigma_range, seed=5)
    assert_matches_reference("cpu", *inputs, 15, 17)


def test_markers_far_outside_the_image():
    means, sigmas, amps = make_markers((2,), 16, 12, 12, dtype=torch.float64, margin=30.0, seed=7)
    outside = (means < -0.5).any(-1) | (means > 11.5).any(-1)
    assert outside.float().mean() > 0.5
    assert_matches_reference("cpu", means, sigmas, amps, 12, 12)


def test_negative_amplitudes_values():
    means, sigmas, amps = make_markers((2,), 5, 10, 11, dtype=torch.float64, seed=8)
    amps = amps - 0.6
    ours = splatkern.splat_render(means, sigmas, amps, height=10, width=11, backend="cpu")
    ref = splatkern.splat_render(means, sigmas, amps, height=10, width=11, backend="reference")
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=1e-10)


def test_no_markers_gives_empty_canvas():
    means, sigmas, amps = torch.empty(3, 0, 2), torch.empty(3, 0), torch.empty(3, 0)
    image, index = splatkern.splat_render(means, sigmas, amps, height=5, width=6, backend="cpu", return_index=True)
    assert torch.equal(image, torch.zeros(3, 5, 6))
    assert torch.equal(index, torch.full((3, 5, 6), -1, dtype=torch.int32))


def test_empty_batch():
    image = splatkern.splat_render(torch.empty(0, 4, 2), torch.ones(0, 4), height=5, width=6, backend="cpu")
    assert image.shape == (0, 5, 6)


def test_exact_tie_goes_to_lowest_index():
    # Markers 1 and 2 are identical and win everywhere; 0 is faint. Marker 1 must take it all.
    means = torch.tensor([[3.0, 4.0], [5.0, 5.0], [5.0, 5.0]], dtype=torch.float64, requires_grad=True)
    sigmas = torch.tensor([1.0, 3.0, 3.0], dtype=torch.float64, requires_grad=True)
    amps = torch.tensor([0.01, 1.0, 1.0], dtype=torch.float64, requires_grad=True)
    image, index = splatkern.splat_render(means, sigmas, amps, height=11, width=11, backend="cpu", return_index=True)
    assert torch.all(index == 1)
    image.sum().backward()
    for grad in (means.grad, sigmas.grad, amps.grad):
        assert torch.all(grad[2] == 0) and torch.all(grad[0] == 0)
        assert torch.any(grad[1] != 0)
    ref_index = splatkern.splat_render(means, sigmas, amps, height=11, width=11, backend="reference",
                                       return_index=True)[1]
    assert torch.equal(index, ref_index)


def test_non_contiguous_inputs():
    means, sigmas, amps = make_markers((6,), 8, 14, 15, dtype=torch.float64, seed=9)
    nc_means = means.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    nc_sigmas = torch.stack([sigmas, sigmas], -1)[..., 0]
    assert not nc_means.is_contiguous() and not nc_sigmas.is_contiguous()
    assert_matches_reference("cpu", nc_means, nc_sigmas, amps, 14, 15)


def test_default_amplitude_is_one():
    means, sigmas, _ = make_markers((2,), 4, 9, 9, seed=10)
    with_default = splatkern.splat_render(means, sigmas, height=9, width=9, backend="cpu")
    with_ones = splatkern.splat_render(means, sigmas, torch.ones_like(sigmas), height=9, width=9, backend="cpu")
    assert torch.equal(with_default, with_ones)


@pytest.mark.parametrize("batch", [1, 40])  # tiled across rows, and one tile per image
def test_thread_count_does_not_change_results(batch):
    inputs = make_markers((batch,), 30, 64, 70, seed=11)
    upstream = torch.randn(batch, 64, 70, generator=torch.Generator().manual_seed(0))
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            leaves = [t.clone().requires_grad_() for t in inputs]
            image, index = splatkern.splat_render(*leaves, height=64, width=70, backend="cpu", return_index=True)
            (image * upstream).sum().backward()
            results.append([image, index, *(t.grad for t in leaves)])
    finally:
        torch.set_num_threads(previous)
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_auto_picks_the_cpu_kernel():
    assert splatkern.available_backends("cpu")[0] == "cpu"


def test_tolerance_table_covers_every_supported_dtype():
    assert set(TOLERANCES) == {torch.float32, torch.float64, torch.float16, torch.bfloat16}
