"""The facts splatkern states once (splatkern/facts.py) cannot drift from their copies: the C++
header generated from them, the built extension's errors, and what they derive from.
test_backends.py holds every backend's errors to the same texts word for word."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import pytest
import torch

from splatkern import facts
from support import make_markers, require

ROOT = Path(__file__).resolve().parents[1]
HEADER = ROOT / "csrc" / "splat_facts.h"


def test_header_on_disk_is_what_facts_py_generates_now():
    """setup.py writes csrc/splat_facts.h at build time: a header that differs means facts.py changed
    after the last build, and the installed extension still holds the old facts."""
    assert HEADER.is_file(), f"{HEADER} is missing: build the extension (pip install --no-build-isolation -e .)"
    assert HEADER.read_text() == facts.c_header(), "csrc/splat_facts.h is stale: rebuild the extension"


def test_facts_load_without_torch_or_the_package():
    """setup.py loads facts.py by path before torch or splatkern can be imported."""
    loaded = runpy.run_path(str(ROOT / "splatkern" / "facts.py"), run_name="facts_by_path")
    assert loaded["c_header"]() == facts.c_header()
    imports = [line for line in (ROOT / "splatkern" / "facts.py").read_text().splitlines() if line.startswith(("import", "from"))]
    assert imports == ["from __future__ import annotations", "import math"]


def test_header_states_every_fact():
    header = facts.c_header()
    for bit, message in enumerate(facts.FLAW_MESSAGES):
        assert f'    "{message}",' in header
        assert f'    "{facts.STROKE_FLAW_MESSAGES[bit]}",' in header
        assert f" = {1 << bit}," in header
    assert 'use backend=\\"reference\\" for second derivatives";' in header
    for value in facts.FLUSH_EXPONENT.values():
        assert f"scalar_t({value!r})" in header


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_flush_exponent_is_half_the_log_of_the_smallest_normal(dtype):
    assert facts.FLUSH_EXPONENT[str(dtype).removeprefix("torch.")] == -0.5 * math.log(torch.finfo(dtype).tiny)


def test_flaw_bits_and_messages_pair_up():
    assert list(facts.FLAW_BIT.values()) == [1 << bit for bit in range(len(facts.FLAW_MESSAGES))]
    assert len(set(facts.FLAW_MESSAGES)) == len(facts.FLAW_MESSAGES)
    assert len(set(facts.STROKE_FLAW_MESSAGES)) == len(facts.FLAW_MESSAGES)


# --- the built extension raises the texts of facts.py ------------------------------------------------


def raised(error, call) -> str:
    with pytest.raises(error) as caught:
        call()
    return str(caught.value)


@pytest.mark.parametrize("flaw", [name for name, _ in facts.MARKER_FLAWS])
def test_cpp_value_check_errors_are_the_facts(flaw):
    require("cpu", "cpu")
    means, sigmas, amps = make_markers((2,), 3, 4, 5)
    tensor, value, composite = {
        "means_nonfinite": (means, math.nan, "max"),
        "sigmas_nonfinite": (sigmas, math.inf, "max"),
        "sigmas_nonpositive": (sigmas, 0.0, "max"),
        "amps_nonfinite": (amps, -math.inf, "max"),
        "amps_outside_unit": (amps, 1.5, "softor"),
    }[flaw]
    tensor[1, 2] = value
    message = raised(ValueError, lambda: torch.ops.splatkern.splat_forward(means, sigmas, amps, 4, 5, False, composite))
    assert message == facts.FLAW_MESSAGES[list(facts.FLAW_BIT).index(flaw)]


def test_cpp_argument_errors_are_the_facts():
    require("cpu", "cpu")
    means, sigmas, amps = make_markers((2,), 3, 4, 5)
    message = raised(ValueError, lambda: torch.ops.splatkern.splat_forward(means, sigmas, amps, 4, 5, False, "sum"))
    assert message == f"splat_render: {facts.UNKNOWN_COMPOSITE}, got 'sum'"
    message = raised(ValueError, lambda: torch.ops.splatkern.splat_forward(means, sigmas, amps, 4, 5, False,
                                                                          "smoothmax", -0.5))
    assert message == f"splat_render: {facts.BAD_TEMPERATURE}, got -0.5"


def test_cpp_bad_index_error_is_the_fact():
    require("cpu", "cpu")
    means, sigmas, amps = make_markers((2,), 3, 4, 5)
    image, index = torch.ops.splatkern.splat_forward(means, sigmas, amps, 4, 5, False)
    index[0, 1, 1] = 3
    message = raised(ValueError, lambda: torch.ops.splatkern.splat_backward(
        torch.ones_like(image), means, sigmas, amps, index, False))
    assert message == f"splat_backward: {facts.BAD_INDEX.format(n_markers=3)}"


def test_cpp_double_backward_error_is_the_fact():
    require("cpu", "cpu")
    means, sigmas, amps = (t.requires_grad_() for t in make_markers((2,), 3, 4, 5))
    image, _ = torch.ops.splatkern.splat_forward(means, sigmas, amps, 4, 5, False)
    (grad_means,) = torch.autograd.grad(image.square().sum(), means, create_graph=True)
    assert raised(NotImplementedError, lambda: grad_means.sum().backward()) == facts.NO_DOUBLE_BACKWARD
