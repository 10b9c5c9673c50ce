"""setup.py builds a CPU-only extension on request (SPLATKERN_CUDA=0), which loads and runs, and records
what it was built against."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def test_cpu_only_build_has_cpu_kernels_and_no_cuda_kernels(tmp_path):
    env = {**os.environ, "SPLATKERN_CUDA": "0"}
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
                    "--build-temp", str(tmp_path / "tmp")], cwd=REPO, env=env, check=True, timeout=600,
                   capture_output=True)
    (library,) = (tmp_path / "lib" / "splatkern").glob("_C*.so")
    # The build records beside the extension what it is built against: this torch, no CUDA kernels.
    info = runpy.run_path(str(library.with_name("_build_info.py")))
    assert (info["TORCH_VERSION"], info["CUDA_VERSION"], info["CUDA_ARCH_LIST"]) == (torch.__version__, None, None)
    # A fresh process: this one has the installed extension's ops registered already.
    probe = f"""
import torch
torch.ops.load_library({str(library)!r})
has = lambda key: torch._C._dispatch_has_kernel_for_dispatch_key("splatkern::splat_forward", key)
image, index = torch.ops.splatkern.splat_forward(torch.tensor([[[2.0, 1.0]]]), torch.ones(1, 1),
                                                 torch.ones(1, 1), 3, 4, False)
print(has("CPU"), has("CUDA"), float(image[0, 1, 2]), int(index.max()))
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.split() == ["True", "False", "1.0", "0"]
