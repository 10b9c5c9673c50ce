"""splatkern.testing, what `splatkern check` runs on a user's machine: it passes every backend this
machine has, finds a broken one (here splat_render wrapped so that one quantity goes wrong) and names
what broke, and refuses backends and devices it cannot check."""

from __future__ import annotations

import math
import re

import pytest
import torch

import splatkern
from splatkern import testing
from splatkern.facts import COMPOSITES
from support import FUSED_CASES, require


@pytest.mark.parametrize("device, backend", FUSED_CASES)
def test_check_backend_passes(device, backend):
    require(device, backend)
    # The interpreter takes seconds a case: the quick check there, the whole one elsewhere.
    report = testing.check_backend(backend, device, quick=testing.is_interpreted(device, backend))
    assert report.ok, report.summary()
    assert (report.backend, report.device) == (backend, device)
    header, *worst = report.summary().splitlines()
    assert re.fullmatch(rf"{backend} on {device}: OK \({len(report.cases)} cases, \d+\.\d s\)", header)
    assert {line.split(":")[0].removeprefix("  worst ") for line in worst} >= {
        "image", "grad means", "grad sigmas", "grad amps"}

    names = [case.name for case in report.cases]
    for part in ("float32 ", "float64 ", "float16 ", "bfloat16 ", "-N0-", "-N1-", "-N7-", "-N64-", "nobatch-"):
        assert any(part in name for name in names), part
    assert any(re.search(r"\b\d+x\d+-N", name) for name in names), "no case with two leading dims"
    for composite in COMPOSITES:
        assert f"{composite} gradcheck float64" in names
        assert any(name.startswith(f"{composite} float64 ") for name in names)
        if backend in testing.WITH_ATOMIC_BACKWARD:
            assert any(name.startswith(f"{composite} float32 ") and name.endswith(" deterministic") for name in names)
    for case in report.cases:
        composite, kind = case.name.split()[:2]
        if kind.startswith("float"):  # the soft composites have no winner map
            winners = ["winner map"] if composite == "max" else []
            assert [m.quantity for m in case.measures] == [
                "dtypes and shapes", "image", *winners, "grad means", "grad sigmas", "grad amps"]


def _scaled_gradient(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    """`tensor` in the forward; its gradient times `factor` in the backward."""
    return tensor * factor - (tensor * (factor - 1)).detach()


def broken_cpu_backend(monkeypatch, broken: str) -> None:
    """splatkern.testing's splat_render with the `cpu` backend made wrong in one way; the reference,
    which check_backend compares with, stays right."""
    real = testing.splat_render

    def render(means, sigmas, amps, *, backend, return_index=False, **kwargs):
        if backend != "cpu":
            return real(means, sigmas, amps, backend=backend, return_index=return_index, **kwargs)
        if broken == "error":
            raise RuntimeError("the kernel failed")
        if broken == "grad sigmas":
            sigmas = _scaled_gradient(sigmas, 1.01)
        if kwargs.get("composite", "max") == "max":
            image, index = real(means, sigmas, amps, backend=backend, return_index=True, **kwargs)
        else:  # no winner map to break
            image, index = real(means, sigmas, amps, backend=backend, **kwargs), None
        if broken == "image":
            image = image + 0.05
        if broken == "winner map" and index is not None:
            index = torch.where(index > 0, 0, index)
        return (image, index) if return_index else image

    monkeypatch.setattr(testing, "splat_render", render)


@pytest.mark.parametrize("broken, also_failing", [
    ("image", set()),
    ("winner map", set()),
    ("grad sigmas", {"gradcheck"}),
    ("error", set()),
])
def test_a_broken_backend_is_reported(monkeypatch, broken, also_failing):
    require("cpu", "cpu")
    broken_cpu_backend(monkeypatch, broken)
    report = testing.check_backend("cpu", "cpu", quick=True)  # returns rather than raising

    assert report.ok is False
    summary = report.summary().splitlines()
    assert summary[0].startswith("cpu on cpu: FAILED (")
    failed = [case for case in report.cases if not case.ok]
    assert f": {broken}: " in summary[1]
    assert [line for line in summary if line.startswith("  FAILED")] == [
        f"  FAILED {case.name}: {case.note}" for case in failed]
    quantities = {m.quantity for case in failed for m in case.measures if not m.ok}
    assert quantities == {broken} | also_failing
    if broken == "image":  # 0.05 too bright everywhere, against the image's tolerance
        worst = next(case for case in failed if case.name.startswith("max float32 "))
        assert worst.max_abs_error == pytest.approx(0.05, rel=1e-3)
        assert worst.tolerance == testing.TOLERANCES[torch.float32][0]
    if broken == "error":
        assert all(case.note == "error: raised RuntimeError: the kernel failed" for case in failed)
        assert len(failed) == len(report.cases)


def test_check_all_checks_every_available_fused_backend(monkeypatch):
    calls = []

    def check_backend(backend, device="cpu", *, quick=False):
        calls.append((backend, str(device), quick))
        return testing.CheckReport(backend, str(device), (), 0.0)

    monkeypatch.setattr(testing, "check_backend", check_backend)
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    expected = [(b, d, False) for d in devices for b in splatkern.available_backends(d) if b != "reference"]
    assert [(r.backend, r.device) for r in testing.check_all()] == [(b, d) for b, d, _ in expected]
    assert calls == expected

    calls.clear()
    testing.check_all("cpu", ["reference"], quick=True)
    assert calls == [("reference", "cpu", True)]
    with pytest.raises(ValueError, match="backend 'vulkan'"):
        testing.check_all(backends=["vulkan"])
    with pytest.raises(ValueError, match="backend 'cuda' is not available for cpu tensors"):
        testing.check_all("cpu", ["cuda"])
    with pytest.raises(ValueError, match="device 'tpu'"):
        testing.check_all("tpu")


def test_check_all_runs_the_checks_and_leaves_the_global_rng_alone():
    require("cpu", "cpu")
    state = torch.get_rng_state()
    (report,) = testing.check_all("cpu", ["cpu"], quick=True)
    assert (report.backend, report.device, report.ok) == ("cpu", "cpu", True), report.summary()
    assert torch.equal(torch.get_rng_state(), state)


def test_unknown_or_unavailable_backends_and_devices_raise_value_error():
    with pytest.raises(ValueError, match="unknown backend 'vulkan'"):
        testing.check_backend("vulkan")
    with pytest.raises(ValueError, match="unknown backend 'auto'"):
        testing.check_backend("auto")
    with pytest.raises(ValueError, match="backend 'cuda' is not available for cpu tensors"):
        testing.check_backend("cuda", "cpu")
    with pytest.raises(ValueError, match="device 'not a device' is not a torch device"):
        testing.check_backend("reference", "not a device")
    with pytest.raises(ValueError, match="device 'meta': splat_render runs on cpu and cuda devices only"):
        testing.check_backend("reference", "meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda' is not available: torch.cuda.is_available\(\) is False"):
            testing.check_backend("reference", "cuda")


def test_measure_close_counts_nan_and_inf_as_errors():
    expected = torch.tensor([1.0, math.inf, 2.0], dtype=torch.float64)
    close = testing.measure_close("x", torch.tensor([1.0005, math.inf, 2.0], dtype=torch.float64), expected, atol=1e-3,
                                  rtol=0.0)
    assert close.ok and close.max_abs_error == pytest.approx(5e-4) and close.score == pytest.approx(0.5)
    for wrong in ([math.nan, math.inf, 2.0], [1.0, -math.inf, 2.0], [1.0, math.inf, 2.1]):
        measure = testing.measure_close("x", torch.tensor(wrong), expected, atol=1e-3, rtol=0.0)
        assert not measure.ok and measure.score > 1
    shape = testing.measure_close("x", torch.zeros(2), torch.zeros(3), atol=1.0, rtol=1.0)
    assert not shape.ok and shape.note == "shape [2], expected [3]"
