"""Every block the Triton launchers can be given computes the contract, not only the table's (which
test_backends.py checks through splat_render): bench/triton_sweep.py times other tiles (shape, pixels
per thread, warps), and a backward sorts int64 keys where (N + 1) x BLOCK_PIX outgrows int32; the soft
composites' kernels take the forward's 4-D tiles, in both of theirs. Under the interpreter on CPU, and on
CUDA where there is a GPU."""

from __future__ import annotations

import pytest
import torch
from splatkern.facts import SOFT_STATE_PLANES
from support import TOLERANCES, assert_grads_close, clear_pixels, make_markers, random_like_image, render_with_grads, require

DEVICES = [pytest.param("cpu", id="cpu-interpreter"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]
HEIGHT, WIDTH = 13, 41  # not a multiple of any block

FORWARD_BLOCKS = [
    pytest.param(dict(ROW_REPEATS=2, COL_REPEATS=4, ROW_SPAN=16, COL_SPAN=8, num_warps=4), id="4-warps-2x4"),
    pytest.param(dict(ROW_REPEATS=1, COL_REPEATS=2, ROW_SPAN=8, COL_SPAN=8, num_warps=2), id="2-warps-1x2"),
]
BACKWARD_BLOCKS = [
    pytest.param(dict(BLOCK_PIX=128, num_warps=4), id="128-px-4-warps"),
    pytest.param(dict(BLOCK_PIX=64, num_warps=1), id="64-px-1-warp"),
    pytest.param(dict(BLOCK_PIX=256, WIDE_KEYS=True, num_warps=2), id="int64-keys"),
]


def markers(device):
    require(device, "triton")
    return make_markers((3,), 9, HEIGHT, WIDTH, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", FORWARD_BLOCKS)
def test_forward_blocks_match_reference(device, config):
    from splatkern import triton_kernels  # noqa: PLC0415 - imports triton only where required

    means, sigmas, amps = markers(device)
    image, index = triton_kernels.forward(means, sigmas, amps, HEIGHT, WIDTH, config)
    ref_image, ref_index, _ = render_with_grads("reference", *(t.double() for t in (means, sigmas, amps)), HEIGHT,
                                                WIDTH, torch.zeros(3, HEIGHT, WIDTH, dtype=torch.float64, device=device))
    atol, rtol = TOLERANCES[torch.float32][0]
    torch.testing.assert_close(image.double(), ref_image, atol=atol, rtol=rtol)
    clear = clear_pixels(means, sigmas, amps, HEIGHT, WIDTH)
    assert torch.equal(index[clear], ref_index[clear])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", BACKWARD_BLOCKS)
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_backward_blocks_match_reference(device, config, deterministic):
    from splatkern import triton_kernels  # noqa: PLC0415

    means, sigmas, amps = markers(device)
    clear = clear_pixels(means, sigmas, amps, HEIGHT, WIDTH)
    upstream = random_like_image(clear.shape, device=device, seed=1) * clear
    _, ref_index, ref_grads = render_with_grads("reference", *(t.double() for t in (means, sigmas, amps)), HEIGHT,
                                                WIDTH, upstream)
    grads = triton_kernels.backward(upstream.float(), means, sigmas, amps, ref_index, deterministic, config)
    assert_grads_close(grads, ref_grads, torch.float32)


SOFT_MODES = [pytest.param(name, temperature, id=name) for name, temperature in
              (("softor", 1.0), ("over", 1.0), ("smoothmax", 0.25))]  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", FORWARD_BLOCKS)
@pytest.mark.parametrize(("composite", "temperature"), SOFT_MODES)
def test_soft_blocks_match_reference(device, config, composite, temperature):
    """The soft kernels, forward and both backwards, with tiles other than their table's: several
    warps (whose sums over the tile cross warps) and several tiles per image."""
    from splatkern import triton_kernels  # noqa: PLC0415

    require(device, "triton")
    means, sigmas, amps = make_markers((3,), 9, HEIGHT, WIDTH, device=device, unit_amps=composite != "smoothmax")
    mode = dict(composite=composite, temperature=temperature)
    upstream = random_like_image((3, HEIGHT, WIDTH), device=device, seed=1)
    ref_image, _, ref_grads = render_with_grads("reference", *(t.double() for t in (means, sigmas, amps)), HEIGHT,
                                                WIDTH, upstream, **mode)
    image, state = triton_kernels.forward(means, sigmas, amps, HEIGHT, WIDTH, config, **mode)
    assert state.shape == (3, SOFT_STATE_PLANES, HEIGHT, WIDTH) and state.dtype == means.dtype
    atol, rtol = TOLERANCES[torch.float32][0]
    torch.testing.assert_close(image.double(), ref_image, atol=atol, rtol=rtol)
    for deterministic in (False, True):
        grads = triton_kernels.backward(upstream.float(), means, sigmas, amps, state, deterministic, config, **mode)
        assert_grads_close(grads, ref_grads, torch.float32)
