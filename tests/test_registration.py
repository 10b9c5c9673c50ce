"""The op as torch sees it: schema/fake/autograd registration, gradcheck, torch.compile."""

import pytest
import torch

import splatkern
from support import clear_pixels, make_markers

needs_extension = pytest.mark.skipif("cpu" not in splatkern.available_backends("cpu"),
                                     reason="the C++ extension (splatkern._C) is not built")


def gradcheck_inputs(seed=0):
    """Few markers, well apart, so no pixel is a near-tie and finite differences stay on one winner."""
    means = torch.tensor([[1.2, 1.7], [5.6, 2.3], [3.1, 5.4]], dtype=torch.float64)
    sigmas = torch.tensor([0.9, 1.3, 1.1], dtype=torch.float64)
    amps = torch.tensor([0.7, 1.0, 0.85], dtype=torch.float64)
    assert clear_pixels(means, sigmas, amps, 7, 8).all()
    return [t.clone().requires_grad_() for t in (means, sigmas, amps)]


@pytest.mark.parametrize("backend", ["reference", pytest.param("cpu", marks=needs_extension)])
def test_gradcheck(backend):
    def render(means, sigmas, amps):
        return splatkern.splat_render(means, sigmas, amps, height=7, width=8, backend=backend)

    assert torch.autograd.gradcheck(render, gradcheck_inputs(), eps=1e-6, atol=1e-7)


@needs_extension
@pytest.mark.parametrize("n_markers", [0, 1, 5])
def test_opcheck(n_markers):
    means, sigmas, amps = make_markers((3,), n_markers, 6, 9, dtype=torch.float64, seed=2)
    args = [t.requires_grad_() for t in (means, sigmas, amps)] + [6, 9, False]
    torch.library.opcheck(torch.ops.splatkern.splat_forward.default, args)
    image, index = torch.ops.splatkern.splat_forward(*[t.detach() for t in args[:3]], 6, 9, False)
    torch.library.opcheck(torch.ops.splatkern.splat_backward.default,
                          [torch.randn_like(image), *[t.detach() for t in args[:3]], index, False])


@needs_extension
def test_torch_compile_fullgraph_matches_eager():
    def loss(means, sigmas, amps, target):
        image = splatkern.splat_render(means, sigmas, torch.sigmoid(amps), height=20, width=24)
        return ((image - target) ** 2).mean()

    means, sigmas, amps = make_markers((4,), 9, 20, 24, seed=4)
    target = torch.rand(4, 20, 24, generator=torch.Generator().manual_seed(0))
    results = []
    for fn in (loss, torch.compile(loss, fullgraph=True)):
        leaves = [t.clone().requires_grad_() for t in (means, sigmas, amps)]
        value = fn(*leaves, target)
        value.backward()
        results.append([value.detach(), *(t.grad for t in leaves)])
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-5)


def test_leading_dims_are_any_batch_shape():
    means, sigmas, amps = make_markers((2, 3), 5, 8, 9, dtype=torch.float64)
    image, index = splatkern.splat_render(means, sigmas, amps, height=8, width=9, return_index=True)
    assert image.shape == (2, 3, 8, 9) and index.shape == (2, 3, 8, 9)
    for i in range(2):
        for j in range(3):
            single = splatkern.splat_render(means[i, j], sigmas[i, j], amps[i, j], height=8, width=9)
            assert single.shape == (8, 9)
            torch.testing.assert_close(image[i, j], single, atol=0, rtol=0)


def test_reference_backend_matches_naive_formula_at_one_pixel():
    # The contract written out by hand at pixel (row 2, column 5): x = 5, y = 2.
    means = torch.tensor([[4.0, 1.0], [6.5, 2.5]], dtype=torch.float64)
    sigmas = torch.tensor([1.5, 0.8], dtype=torch.float64)
    amps = torch.tensor([0.9, 0.6], dtype=torch.float64)
    expected = [a * torch.exp(-((5 - m[0]) ** 2 + (2 - m[1]) ** 2) / (2 * s**2)) for m, s, a in zip(means, sigmas, amps)]
    for backend in splatkern.available_backends("cpu"):
        image, index = splatkern.splat_render(means, sigmas, amps, height=4, width=8, backend=backend, return_index=True)
        torch.testing.assert_close(image[2, 5], max(expected), atol=1e-12, rtol=1e-12)
        assert index[2, 5] == int(expected[1] > expected[0])
