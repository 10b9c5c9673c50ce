"""The benchmark's measuring instruments: CPU peak memory sees every allocation and counts each
byte once; the hardware-limit model picks the right peak figures and the binding resource; a
"+deterministic" implementation times the deterministic backward."""

from __future__ import annotations

import pytest
import torch

import splatkern
from bench import cases, limits, results_folder_name
from bench.harness import cpu_memory_method, peak_memory_bytes, time_calls

MIB = 1 << 20
CPU = torch.device("cpu")
# Linux batches resident-set counter updates per CPU, so VmHWM is off by up to a few hundred KiB.
RSS_SLACK = 2 * MIB  # 1 MiB was 12 KiB short once on the GPU machine (Python 3.12)

needs_rss = pytest.mark.skipif(cpu_memory_method() is not None, reason=f"CPU peak memory: {cpu_memory_method()}")


@needs_rss
def test_cpu_peak_counts_torch_tensors():
    assert abs(peak_memory_bytes(lambda: torch.ones(32 * MIB // 4), CPU) - 32 * MIB) < RSS_SLACK


@needs_rss
def test_cpu_peak_counts_allocations_torch_does_not_see():
    # like std::vector scratch inside a C++ kernel: plain malloc, invisible to torch's allocator
    assert abs(peak_memory_bytes(lambda: bytearray(24 * MIB), CPU) - 24 * MIB) < RSS_SLACK


@needs_rss
def test_cpu_peak_is_the_high_water_mark_not_the_sum():
    def allocate_free_allocate():
        first = torch.ones(16 * MIB // 4)
        del first
        second = torch.ones(16 * MIB // 4)
        return second

    assert abs(peak_memory_bytes(allocate_free_allocate, CPU) - 16 * MIB) < RSS_SLACK


def test_time_calls_groups_calls_into_samples_of_the_requested_length():
    calls = []
    timing = time_calls(lambda: calls.append(None), CPU, min_sample_s=0.01, samples=4, max_total_s=10.0)
    assert timing.samples == 4 and timing.calls_per_sample > 1
    assert timing.median_s > 0 and timing.iqr_s >= 0 and 0 < timing.best_s <= timing.median_s
    # warm-up (2) + the sizing call (1) + the samples
    assert len(calls) == 3 + timing.samples * timing.calls_per_sample


@pytest.mark.parametrize(("device_name", "model"), [
    ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
    ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"),
    ("NVIDIA H100 NVL", "NVIDIA H100 NVL"),
    ("NVIDIA H200", "NVIDIA H200 SXM"),
    ("NVIDIA H200 NVL", "NVIDIA H200 NVL"),
])
def test_gpu_peak_figures_match_the_device_name(device_name, model):
    assert limits.gpu_peak(device_name)["model"] == model


def test_gpu_peak_figures_are_absent_for_unknown_devices():
    assert limits.gpu_peak("NVIDIA GeForce RTX 4090") is None


def test_gpu_limit_is_bound_by_compute_with_many_markers_and_by_bytes_with_one():
    peak = {"kind": "gpu-roofline", **limits.gpu_peak("NVIDIA H100 80GB HBM3")}
    pixels = 28 * 28
    many = limits.limit_seconds(peak, 1024, 64, pixels, "forward")
    assert many == 1024 * 64 * pixels * limits.OPS_PER_PAIR / peak["op_rate"]
    one = limits.limit_seconds(peak, 1024, 1, pixels, "forward+backward")
    assert one == limits.image_bytes(1024, 1, pixels, "forward+backward") / peak["hbm_bytes_per_s"]
    # the backward reads what the forward wrote: more bytes for the same pairs
    assert limits.image_bytes(8, 4, pixels, "forward+backward") > limits.image_bytes(8, 4, pixels, "forward")


def test_results_folder_name_keeps_case_and_joins_words_as_the_committed_gpu_folder():
    assert results_folder_name("NVIDIA H100 80GB HBM3") == "NVIDIA-H100-80GB-HBM3"
    assert results_folder_name("cpu Intel(R) Xeon(R) CPU @ 2.00GHz") == "cpu-Intel-R-Xeon-R-CPU-2.00GHz"
    assert results_folder_name(" / ") == "unknown-device"


def test_a_deterministic_implementation_times_the_deterministic_backward_only(monkeypatch):
    assert cases.modes_of("cuda+deterministic+graph") == ("forward+backward",)
    assert cases.modes_of("cuda+graph") == cases.MODES
    calls = []

    def render(*args, **kwargs):
        calls.append((kwargs["backend"], kwargs["deterministic"]))
        return splatkern.splat_render_reference(*args[:3], kwargs["height"], kwargs["width"])[0]

    monkeypatch.setattr(splatkern, "splat_render", render)
    point = cases.Point(2, 3, 5, 6)
    for implementation in ("reference+deterministic", "reference"):
        cases.make_case(implementation, "forward+backward", point, CPU)()
    assert calls == [("reference", True), ("reference", False)]
