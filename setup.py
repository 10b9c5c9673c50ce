"""Builds splatkern._C: the op schema and CPU kernels always, the CUDA kernels when they can be.

SPLATKERN_CUDA=0 forces a CPU-only build, =1 makes a missing CUDA toolchain an error; unset, CUDA
kernels are built when torch is a CUDA build and nvcc is found. TORCH_CUDA_ARCH_LIST picks the GPU
architectures (default "8.0;9.0"). Install with `pip install --no-build-isolation .` so the
extension is built against the torch already installed.
"""

import glob
import os
import shutil
import sys
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent


def find_cuda_home() -> str | None:
    """A CUDA toolkit with nvcc and libcudart: $CUDA_HOME, else /usr/local/cuda*, newest first, else
    the prefix of the `nvcc` on PATH.

    torch falls back to the directory of whichever `nvcc` is on PATH, which can be a wrapper in
    /usr/local/bin whose prefix has no lib64 (link error: cannot find -lcudart): hence the check.
    """
    nvcc = shutil.which("nvcc")
    candidates = [
        os.environ.get("CUDA_HOME"),
        "/usr/local/cuda",
        *sorted(glob.glob("/usr/local/cuda-*"), reverse=True),
        nvcc and str(Path(nvcc).resolve().parent.parent),
    ]
    for home in filter(None, candidates):
        if os.path.exists(f"{home}/bin/nvcc") and glob.glob(f"{home}/lib*/libcudart.so*"):
            return home
    return None


def want_cuda() -> bool:
    setting = os.environ.get("SPLATKERN_CUDA", "auto")
    import torch  # noqa: PLC0415 - decided before cpp_extension reads CUDA_HOME

    usable = torch.version.cuda is not None and find_cuda_home() is not None
    if setting == "1" and not usable:
        sys.exit("SPLATKERN_CUDA=1 but no CUDA build of torch and CUDA toolkit (nvcc + libcudart) were found")
    return setting != "0" and usable


def nvidia_pip_includes() -> list[str]:
    """Headers of the pip `nvidia-*` packages: the system toolkit may lack some (cusparse.h) that torch includes."""
    import site  # noqa: PLC0415

    roots = site.getsitepackages() + [site.getusersitepackages()]
    return sorted({d for root in roots for d in glob.glob(f"{root}/nvidia/*/include")})


def extensions():
    with_cuda = want_cuda()
    if with_cuda:
        os.environ["CUDA_HOME"] = find_cuda_home()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    from torch.utils.cpp_extension import CppExtension, CUDAExtension  # noqa: PLC0415

    cxx_flags = ["-O3", "-fopenmp", "-DPy_LIMITED_API=0x030A0000"]
    sources = sorted(glob.glob("csrc/*.cpp"))
    if not with_cuda:
        return [CppExtension("splatkern._C", sources, extra_compile_args={"cxx": cxx_flags},
                             extra_link_args=["-fopenmp"], py_limited_api=True)]
    return [CUDAExtension("splatkern._C", sources + sorted(glob.glob("csrc/*.cu")),
                          include_dirs=nvidia_pip_includes(),
                          extra_compile_args={"cxx": cxx_flags + ["-DSPLATKERN_WITH_CUDA"],
                                              "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
                          extra_link_args=["-fopenmp"], py_limited_api=True)]


if __name__ == "__main__":
    ext_modules = extensions()  # first: it sets CUDA_HOME, which cpp_extension reads when imported
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=ext_modules,
        cmdclass={"build_ext": BuildExtension},
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )
