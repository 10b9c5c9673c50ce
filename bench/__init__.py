"""Benchmarks of splat_render: every available backend against the reference and torch.compile (bench/README.md)."""

import re


def results_folder_name(device_name: str) -> str:
    """The folder under bench/results/ for a device, e.g. "NVIDIA H100 80GB HBM3" -> "NVIDIA-H100-80GB-HBM3".

    The one rule for bench/run.py, bench/triton_sweep.py and bench/gpu_check.sh (which calls this
    before anything imports torch, hence no imports here).
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "-", device_name).strip("-") or "unknown-device"
