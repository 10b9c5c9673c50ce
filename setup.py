"""Builds splatkern._C: the op schema and CPU kernels always, the CUDA kernels when they can be.

SPLATKERN_CUDA=0 forces a CPU-only build, =1 makes a missing CUDA toolchain an error; unset, CUDA
kernels are built when torch is a CUDA build and nvcc is found. TORCH_CUDA_ARCH_LIST picks the GPU
architectures (default "8.0;9.0").

The extension is built against the torch already installed, and records which (splatkern/_build_info.py)
so that an import under another torch reports the mismatch instead of failing on a missing symbol.
`pip install --no-build-isolation .` builds with the environment's own packages; plain `pip install .`
works too: see import_torch.
"""

import glob
import os
import runpy
import shutil
import subprocess
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


def import_torch():
    """The installed torch, also from inside pip's isolated build environment.

    torch is deliberately not a build requirement: pip would download one into the isolated
    environment, which need not be the torch installed, and an extension built against another torch
    fails to load. pip runs the build with the target environment's interpreter and hides that
    environment's packages through PYTHONPATH and PYTHONNOUSERSITE; the same interpreter run without
    them says where its torch lies, and that directory goes at the end of sys.path, after the build
    requirements.
    """
    try:
        import torch  # noqa: PLC0415

        return torch
    except ImportError:
        pass
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    probe = "import importlib.util as u; s = u.find_spec('torch'); print(s.submodule_search_locations[0] if s else '')"
    found = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout.strip()
    if not found:
        sys.exit(f"splatkern needs torch installed before it is built, and {sys.executable} has none: "
                 "install torch, then `pip install --no-build-isolation splatkern` (or `.` in a source tree)")
    sys.path.append(str(Path(found).parent))
    import torch  # noqa: PLC0415

    return torch


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


def generate_headers() -> None:
    """Writes csrc/splat_facts.h from splatkern/facts.py, the one source of the facts C++ shares with
    Python; rewritten only when its text changes, so an unchanged build stays up to date."""
    facts = runpy.run_path(str(HERE / "splatkern" / "facts.py"))
    header = HERE / "csrc" / "splat_facts.h"
    text = facts["c_header"]()
    if not header.exists() or header.read_text() != text:
        header.write_text(text)


def extensions(with_cuda: bool):
    generate_headers()
    if with_cuda:
        os.environ["CUDA_HOME"] = find_cuda_home()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    from torch.utils.cpp_extension import CppExtension, CUDAExtension  # noqa: PLC0415

    # -ffp-contract=off: the CPU kernels give the same bits on every ISA they run (csrc/splat_cpu.cpp)
    # -fno-trapping-math: no code here traps on floating-point exceptions, and without it GCC keeps a
    # division it moved into one arm of a select from being vectorised (csrc/splat_cpu_soft.cpp).
    cxx_flags = ["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp", "-DPy_LIMITED_API=0x030A0000"]
    sources = sorted(glob.glob("csrc/*.cpp"))
    if not with_cuda:
        return [CppExtension("splatkern._C", sources, extra_compile_args={"cxx": cxx_flags},
                             extra_link_args=["-fopenmp"], py_limited_api=True)]
    return [CUDAExtension("splatkern._C", sources + sorted(glob.glob("csrc/*.cu")),
                          include_dirs=nvidia_pip_includes(),
                          extra_compile_args={"cxx": cxx_flags + ["-DSPLATKERN_WITH_CUDA"],
                                              "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
                          extra_link_args=["-fopenmp"], py_limited_api=True)]


def build_info(torch, with_cuda: bool) -> str:
    """splatkern/_build_info.py's text: what the extension is built against, read by splatkern/_extension.py."""
    return (
        '"""What splatkern._C was built against; written by setup.py beside it."""\n\n'
        f"TORCH_VERSION = {str(torch.__version__)!r}\n"
        f"CUDA_VERSION = {torch.version.cuda if with_cuda else None!r}\n"
        f"CUDA_ARCH_LIST = {os.environ['TORCH_CUDA_ARCH_LIST'] if with_cuda else None!r}\n"
    )


def build_ext_command(build_extension, info: str):
    """torch's build_ext, which also writes the build info beside each built extension: into the
    wheel's tree, or the source tree for in-place and editable builds."""

    class BuildWithInfo(build_extension):
        def run(self):
            super().run()
            for ext in self.extensions:
                Path(self.get_ext_fullpath(ext.name)).with_name("_build_info.py").write_text(info)

    return BuildWithInfo


if __name__ == "__main__":
    torch = import_torch()
    with_cuda = want_cuda()
    ext_modules = extensions(with_cuda)  # first: it sets CUDA_HOME, which cpp_extension reads when imported
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=ext_modules,
        cmdclass={"build_ext": build_ext_command(BuildExtension, build_info(torch, with_cuda))},
        options={"bdist_wheel": {"py_limited_api": "cp310"}},
    )
