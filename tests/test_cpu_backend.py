"""What only the C++ CPU kernel promises: the same bits whatever the thread count and whichever vector
width (ISA) it runs. Its values, winners and gradients are checked with every other backend's in
test_backends.py, whose shapes include the CPU kernel's tilings (row tiles of ~4096 pixels below a
batch of 16, whole images from 16)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import splatkern
from support import make_markers, random_like_image, require


@pytest.mark.parametrize("batch", [1, 40])  # tiled across rows, and one tile per image
def test_thread_count_does_not_change_results(batch):
    require("cpu", "cpu")
    inputs = make_markers((batch,), 30, 64, 70, seed=11)
    upstream = random_like_image((batch, 64, 70)).float()
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


# Renders a few shapes with the CPU kernels (markers, then strokes) in every composite mode, forward
# and backward, and saves the images, winner maps (empty for the soft modes) and gradients to argv[1]. The shapes: widths that cut
# every vector width; N = 1 and N past a vector of markers; row tiles that start inside the image
# (batch 1, 130 rows) and whole images (batch 17); float32 and float64.
_RENDER_CASES = """
import sys, torch, splatkern
sys.path.insert(0, sys.argv[2])
from support import make_markers, make_strokes, random_like_image
out = {}
for batch, n, height, width, dtype in [(3, 1, 5, 9, torch.float32), (2, 70, 13, 41, torch.float32),
                                       (17, 25, 28, 28, torch.float32), (1, 12, 130, 70, torch.float32),
                                       (2, 9, 7, 37, torch.float64), (1, 30, 90, 50, torch.float64)]:
    for composite in splatkern.COMPOSITES:
        markers = make_markers((batch,), n, height, width, dtype=dtype, seed=n, unit_amps=composite != "max")
        leaves = [t.requires_grad_() for t in markers]
        image = splatkern.splat_render(*leaves, height=height, width=width, backend="cpu", composite=composite,
                                       temperature=0.3, return_index=composite == "max")
        image, index = image if composite == "max" else (image, torch.empty(0, dtype=torch.int32))
        image.backward(random_like_image(image.shape, seed=n).to(dtype))
        out[f"{composite}-{batch}-{n}-{height}x{width}-{dtype}"] = (image.detach(), index, *(t.grad for t in leaves))
for batch, strokes, vertices, height, width, dtype in [(3, 1, 1, 5, 9, torch.float32), (2, 3, 6, 13, 41, torch.float32),
                                                      (17, 1, 25, 28, 28, torch.float32), (1, 4, 5, 130, 70, torch.float32),
                                                      (2, 3, 4, 7, 37, torch.float64)]:
    for composite in splatkern.COMPOSITES:
        inputs = make_strokes((batch,), strokes, vertices, height, width, dtype=dtype, seed=vertices,
                              unit_amps=composite != "max")
        leaves = [t.requires_grad_() for t in inputs]
        image = splatkern.stroke_render(*leaves, height=height, width=width, backend="cpu", composite=composite,
                                        temperature=0.3, return_index=composite == "max")
        image, index = image if composite == "max" else (image, torch.empty(0, dtype=torch.int32))
        image.backward(random_like_image(image.shape, seed=vertices).to(dtype))
        key = f"stroke-{composite}-{batch}-{strokes}x{vertices}-{height}x{width}-{dtype}"
        out[key] = (image.detach(), index, *(t.grad for t in leaves))
torch.save(out, sys.argv[1])
"""
_RESULTS = ("image", "winners", "grad means", "grad sigmas", "grad amps")


@pytest.fixture(scope="module")
def results_with(tmp_path_factory):
    """The render cases' results in a process with the given environment variables set, computed once
    per setting."""
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tests.parent), os.environ.get("PYTHONPATH")]))}
    folder = tmp_path_factory.mktemp("settings")
    cache = {}

    def results(**settings: str) -> dict:
        key = "-".join(f"{name}={value}" for name, value in sorted(settings.items()))
        if key not in cache:
            child = subprocess.run([sys.executable, "-c", _RENDER_CASES, str(folder / f"{key}.pt"), str(tests)],
                                   env={**env, **settings}, capture_output=True, text=True, timeout=600)
            if "this CPU does not have it" in child.stderr:
                pytest.skip(f"this CPU has no {settings.get('SPLATKERN_CPU_ISA')}")
            assert child.returncode == 0, child.stderr[-3000:]
            cache[key] = torch.load(folder / f"{key}.pt", weights_only=True)
        return cache[key]

    return results


@pytest.mark.parametrize("isa", ["avx512f", "avx2"])
def test_every_vector_width_gives_the_same_bits(isa, results_with):
    """csrc/splat_cpu.cpp and splat_cpu_soft.cpp compile their vectorised loops (the factor tables, the
    compositing loops, the backwards' pixel sums) once per ISA and run the one SPLATKERN_CPU_ISA names:
    each wider ISA must give the images, winners and gradients of SSE2's 16-byte vectors, bit for bit,
    in every composite mode."""
    require("cpu", "cpu")
    baseline = results_with(SPLATKERN_CPU_ISA="sse2")
    wide = results_with(SPLATKERN_CPU_ISA=isa)
    assert wide.keys() == baseline.keys()
    for case, tensors in baseline.items():
        for name, expected, got in zip(_RESULTS, tensors, wide[case], strict=True):
            assert torch.equal(got, expected), f"{case}: {name}"


def test_support_skipping_changes_nothing_but_the_time(results_with):
    """SPLATKERN_CPU_SUPPORTS=0 visits every marker on every pixel of a tile in the soft modes, and every
    segment of every stroke in all modes: the values it skips are 0, so the strokes, softor and over
    give the same bits and the markers' smoothmax the same up to the order of its sums' additions."""
    require("cpu", "cpu")
    skipping, visiting_all = results_with(SPLATKERN_CPU_SUPPORTS="1"), results_with(SPLATKERN_CPU_SUPPORTS="0")
    for case, tensors in skipping.items():
        for name, expected, got in zip(_RESULTS, tensors, visiting_all[case], strict=True):
            if case.startswith("smoothmax"):
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=f"{case}: {name}")
            else:
                assert torch.equal(got, expected), f"{case}: {name}"


def test_an_unknown_isa_name_is_an_error():
    require("cpu", "cpu")
    code = "import torch, splatkern; splatkern.splat_render(torch.zeros(1, 1, 2), torch.ones(1, 1), height=2, width=2)"
    child = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SPLATKERN_CPU_ISA": "avx9"},
                           capture_output=True, text=True, timeout=300)
    assert child.returncode != 0
    assert "SPLATKERN_CPU_ISA must be avx512f, avx2 or sse2, got 'avx9'" in child.stderr


def test_a_bad_supports_setting_is_an_error():
    require("cpu", "cpu")
    code = ("import torch, splatkern; splatkern.splat_render(torch.zeros(1, 1, 2), torch.ones(1, 1), height=2, width=2, "
            "composite='softor')")
    child = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SPLATKERN_CPU_SUPPORTS": "yes"},
                           capture_output=True, text=True, timeout=300)
    assert child.returncode != 0
    assert "SPLATKERN_CPU_SUPPORTS must be 0 or 1, got 'yes'" in child.stderr
