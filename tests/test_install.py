"""What an install promises: setup.py finds the installed torch from inside pip's build isolation and
refuses SPLATKERN_CUDA=1 without a toolkit; a broken or mismatched extension keeps the import working
and says why, once. The real installs (pip install ., wheels, a base install) are .ci/install_paths.sh's."""

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import pytest
import torch

import splatkern
from splatkern import _extension, doctor
from splatkern.ops import BACKENDS, available_backends

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_py() -> types.ModuleType:
    """setup.py as a module: its functions, without running the build."""
    spec = importlib.util.spec_from_file_location("splatkern_setup", REPO / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_splatkern_cuda_1_without_a_toolkit_is_an_error(setup_py, monkeypatch):
    monkeypatch.setenv("SPLATKERN_CUDA", "1")
    monkeypatch.setattr(setup_py, "find_cuda_home", lambda: None)
    with pytest.raises(SystemExit, match="SPLATKERN_CUDA=1 but no CUDA build of torch and CUDA toolkit"):
        setup_py.want_cuda()
    monkeypatch.setenv("SPLATKERN_CUDA", "auto")
    assert setup_py.want_cuda() is False  # unset, a missing toolkit means a CPU-only build


def test_splatkern_cuda_1_with_a_cpu_only_torch_is_an_error(setup_py, monkeypatch, tmp_path):
    toolkit = _fake_toolkit(tmp_path)
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    monkeypatch.setenv("SPLATKERN_CUDA", "1")
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(SystemExit, match="SPLATKERN_CUDA=1"):
        setup_py.want_cuda()


def _fake_toolkit(root: Path) -> Path:
    (root / "cuda" / "bin").mkdir(parents=True)
    (root / "cuda" / "bin" / "nvcc").touch()
    (root / "cuda" / "lib64").mkdir()
    (root / "cuda" / "lib64" / "libcudart.so").touch()
    return root / "cuda"


def test_find_cuda_home_wants_nvcc_and_libcudart(setup_py, monkeypatch, tmp_path):
    toolkit = _fake_toolkit(tmp_path)
    monkeypatch.setenv("CUDA_HOME", str(toolkit))
    assert setup_py.find_cuda_home() == str(toolkit)
    # A prefix with nvcc but no libcudart (a wrapper's directory) is passed over.
    (toolkit / "lib64" / "libcudart.so").unlink()
    assert setup_py.find_cuda_home() != str(toolkit)


def test_setup_finds_the_installed_torch_from_inside_build_isolation(tmp_path):
    """pip's isolation, as pip builds it: PYTHONNOUSERSITE, and a sitecustomize on PYTHONPATH that drops
    the environment's site-packages, leaving only the build requirements (here setuptools)."""
    build_env = tmp_path / "build-env"
    build_env.mkdir()
    for name in ("setuptools", "_distutils_hack", "pkg_resources"):
        spec = importlib.util.find_spec(name)
        if spec is not None:
            (build_env / name).symlink_to(Path(spec.origin).parent)
    (build_env / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys
        sys.path[:] = [p for p in sys.path if "site-packages" not in p] + [{str(build_env)!r}]
    """))
    probe = textwrap.dedent(f"""
        import importlib.util
        assert importlib.util.find_spec("torch") is None, "the simulated isolation lets torch through"
        spec = importlib.util.spec_from_file_location("splatkern_setup", {str(REPO / "setup.py")!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(module.import_torch().__file__)
    """)
    env = {**os.environ, "PYTHONPATH": str(build_env), "PYTHONNOUSERSITE": "1"}
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == torch.__file__


# --- a broken or mismatched extension -------------------------------------------------------------


def test_a_build_for_another_torch_is_refused_before_loading(monkeypatch):
    other = "2.0.1" if not torch.__version__.startswith("2.0.") else "2.1.0"
    monkeypatch.setattr(_extension, "BUILD_INFO", types.SimpleNamespace(TORCH_VERSION=other, CUDA_VERSION=None))
    reason = _extension._build_mismatch()
    assert f"built for torch {other} but torch {torch.__version__} is installed" in reason
    assert "pip install --no-build-isolation" in reason
    monkeypatch.setattr(_extension, "BUILD_INFO", types.SimpleNamespace(TORCH_VERSION=torch.__version__,
                                                                        CUDA_VERSION="12.8"))
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "built with CUDA 12.8 kernels but torch" in _extension._build_mismatch()


def test_missing_reason_says_why_a_backend_is_not_available():
    """available_backends is built from missing_reason, so each backend it leaves out has a reason."""
    assert _extension.missing_reason("reference", "cpu") is None
    assert "cuda tensors only" in _extension.missing_reason("cuda", "cpu")
    assert "cpu tensors only" in _extension.missing_reason("cpu", "cuda")
    for device in ("cpu", "cuda"):
        for backend in BACKENDS[1:]:
            if backend not in available_backends(device):
                assert _extension.missing_reason(backend, device), (backend, device)
    if not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        assert _extension.missing_reason("triton", "cuda") == "no CUDA device is available"


def _broken_copy(tmp_path: Path, breakage: str) -> Path:
    """A copy of the package whose extension is a corrupt file, or one recorded as built for another torch."""
    root = tmp_path / "site"
    ignored = ["__pycache__", "_build_info.py"] + (["_C*"] if breakage == "corrupt" else [])
    shutil.copytree(Path(splatkern.__file__).parent, root / "splatkern", ignore=shutil.ignore_patterns(*ignored))
    if breakage == "corrupt":
        (root / "splatkern" / "_C.abi3.so").write_bytes(b"not a shared library\n" * 256)
    else:
        (root / "splatkern" / "_build_info.py").write_text(
            "TORCH_VERSION = '1.13.1'\nCUDA_VERSION = None\nCUDA_ARCH_LIST = None\n")
    return root


PROBE = """
import warnings
import torch
import splatkern
from splatkern import _extension, doctor

print("BACKENDS", splatkern.available_backends("cpu"))
print("LOAD_ERROR", _extension.LOAD_ERROR)
print("DOCTOR", doctor.report().replace("\\n", " | "))
try:
    splatkern.splat_render(torch.ones(1, 1, 2), torch.ones(1, 1), height=3, width=3, backend="cpu")
except ValueError as error:
    print("CPU_ERROR", error)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(3):
        splatkern.splat_render(torch.ones(1, 1, 2), torch.ones(1, 1), height=3, width=3)
print("WARNINGS", len(caught), *(f"{w.category.__name__}: {w.message}" for w in caught))
"""


@pytest.mark.parametrize("breakage", ["corrupt", "other-torch"])
def test_a_broken_extension_keeps_the_import_and_says_why(tmp_path, breakage):
    # Without the Triton interpreter, "reference" is the only backend left for CPU tensors.
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(_broken_copy(tmp_path, breakage))
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["BACKENDS"] == "['reference']"
    reason = lines["LOAD_ERROR"]
    expected = {"corrupt": "invalid ELF header",
                "other-torch": f"built for torch 1.13.1 but torch {torch.__version__}"}[breakage]
    assert expected in reason and "pip install --no-build-isolation" in reason
    assert "extension: " in lines["DOCTOR"] and "NOT LOADED" in lines["DOCTOR"] and reason in lines["DOCTOR"]
    assert "splatkern check" in lines["DOCTOR"]
    assert reason in lines["CPU_ERROR"] and "backend 'cpu' is not available" in lines["CPU_ERROR"]
    # three calls, one warning, which names the fallback and the reason
    assert lines["WARNINGS"] == f"1 RuntimeWarning: splat_render: backend='auto' falls back to 'reference': {reason}"


def test_a_loaded_extension_warns_of_nothing():
    assert _extension.LOAD_ERROR is None, _extension.LOAD_ERROR  # the suite runs on a built extension
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        splatkern.splat_render(torch.ones(1, 1, 2), torch.ones(1, 1), height=3, width=3)
    assert "; loaded" in doctor.report()
