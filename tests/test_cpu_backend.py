"""What only the C++ CPU kernel promises: the same bits whatever the thread count and whichever vector
width (ISA) composites. Its values,
winners and gradients are checked with every other backend's in test_backends.py, whose shapes
include the CPU kernel's tilings (row tiles of ~4096 pixels below a batch of 16, whole images from 16)."""

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


# Renders a few shapes (widths that cut every vector width, N = 1 and N past the tables' padding,
# float32 and float64) with the CPU kernel and saves the images and winner maps to argv[1].
_RENDER_CASES = """
import sys, torch, splatkern
sys.path.insert(0, sys.argv[2])
from support import make_markers
out = {}
for batch, n, height, width, dtype in [(3, 1, 5, 9, torch.float32), (2, 70, 13, 41, torch.float32),
                                       (17, 25, 28, 28, torch.float32), (2, 9, 7, 37, torch.float64)]:
    markers = make_markers((batch,), n, height, width, dtype=dtype, seed=n)
    out[f"{batch}-{n}-{height}x{width}-{dtype}"] = splatkern.splat_render(
        *markers, height=height, width=width, backend="cpu", return_index=True)
torch.save(out, sys.argv[1])
"""


@pytest.mark.parametrize("isa", ["avx2", "sse2"])
def test_every_vector_width_composites_the_same_bits(isa, tmp_path):
    """csrc/splat_cpu.cpp compiles its compositing loop once per vector width and runs the widest the
    CPU has; SPLATKERN_CPU_ISA picks a narrower one, which must give bit-identical images and winners."""
    require("cpu", "cpu")
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tests.parent), os.environ.get("PYTHONPATH")]))}
    results = {}
    for name in ("", isa):  # "": the widest this CPU has
        child = subprocess.run([sys.executable, "-c", _RENDER_CASES, str(tmp_path / f"{name or 'widest'}.pt"), str(tests)],
                               env={**env, "SPLATKERN_CPU_ISA": name}, capture_output=True, text=True, timeout=300)
        if "this CPU does not have it" in child.stderr:
            pytest.skip(f"this CPU has no {isa}")
        assert child.returncode == 0, child.stderr[-3000:]
        results[name] = torch.load(tmp_path / f"{name or 'widest'}.pt", weights_only=True)
    for case, (image, index) in results[""].items():
        narrow_image, narrow_index = results[isa][case]
        assert torch.equal(image, narrow_image), case
        assert torch.equal(index, narrow_index), case


def test_an_unknown_isa_name_is_an_error():
    require("cpu", "cpu")
    code = "import torch, splatkern; splatkern.splat_render(torch.zeros(1, 1, 2), torch.ones(1, 1), height=2, width=2)"
    child = subprocess.run([sys.executable, "-c", code], env={**os.environ, "SPLATKERN_CPU_ISA": "avx9"},
                           capture_output=True, text=True, timeout=300)
    assert child.returncode != 0
    assert "SPLATKERN_CPU_ISA must be avx512f, avx2 or sse2, got 'avx9'" in child.stderr
