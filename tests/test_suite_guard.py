"""The suite cannot pass on a broken build: tests/conftest.py's guard, run in child pytest processes.

A child whose interpreter finds a corrupt splatkern._C (through a sitecustomize that points the import
at a file that is not a shared library: what a truncated or foreign build gives) must stop at once
where SPLATKERN_EXPECT_KERNELS says this machine has the CPU kernels, naming the load error; a skip
that this machine does not explain must fail a run that states its kernels.
"""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# Imported at the child's start: splatkern._C resolves to a file of garbage, so that loading it fails
# in the dynamic loader as a broken build does.
_CORRUPT_EXTENSION = """
import importlib.abc, importlib.machinery, sys

class CorruptExtension(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "splatkern._C":
            return None
        loader = importlib.machinery.ExtensionFileLoader(name, {library!r})
        return importlib.machinery.ModuleSpec(name, loader, origin={library!r})

sys.meta_path.insert(0, CorruptExtension())
"""

_SKIPPING_TESTS = """
import pytest

def test_on_a_cpu_without_the_isa():
    pytest.skip("this CPU has no avx9000")

def test_of_a_backend_the_install_lacks():
    pytest.skip("backend 'cpu' is not available for cpu tensors here")
"""

_SKIPPED_MODULE = """
import pytest

pytest.importorskip("a_module_the_install_lacks")
"""


def _pytest(*args, expect: str | None, site: Path | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "SPLATKERN_EXPECT_KERNELS"}
    if expect is not None:
        env["SPLATKERN_EXPECT_KERNELS"] = expect
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site or ""), str(TESTS), str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _corrupt_site(tmp_path: Path) -> Path:
    library = tmp_path / "_C.abi3.so"
    library.write_bytes(b"not an ELF file\n" * 8)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_CORRUPT_EXTENSION.format(library=str(library)))
    return site


def test_a_broken_extension_fails_the_run_at_start_naming_the_load_error(tmp_path):
    site = _corrupt_site(tmp_path)
    # The same import in a plain child: the failure is real, and the package still imports.
    probe = subprocess.run([sys.executable, "-c", "import splatkern._extension as e; print(e.LOAD_ERROR)"],
                           env={**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])},
                           capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr
    load_error = probe.stdout.strip()
    assert "_C.abi3.so" in load_error, load_error

    child = _pytest("tests/test_api.py", "-k", "default_amplitude", expect="CPU", site=site)
    output = child.stdout + child.stderr
    assert child.returncode == 1, output
    assert "the installed splatkern._C lacks the CPU kernels that this machine must have" in output
    assert f"splatkern._extension.LOAD_ERROR: {load_error}" in output
    assert "passed" not in output  # stopped before any test ran


def test_a_skip_this_machine_does_not_explain_fails_a_run_that_states_its_kernels(tmp_path):
    (tmp_path / "test_skipping.py").write_text(_SKIPPING_TESTS)
    (tmp_path / "test_skipped_module.py").write_text(_SKIPPED_MODULE)
    # conftest.py as a plugin: its hooks judge test files outside tests/
    run = lambda *args, expect: _pytest("-p", "conftest", "-rs", *args, expect=expect, cwd=tmp_path)  # noqa: E731

    explained = run("test_skipping.py", "-k", "isa", expect="CPU")
    assert explained.returncode == 0, explained.stdout + explained.stderr
    assert "1 expected here: this CPU has no avx9000" in explained.stdout

    unexplained = run("test_skipping.py", "test_skipped_module.py", expect="CPU")
    assert unexplained.returncode == 1, unexplained.stdout + unexplained.stderr
    assert "1 NOT EXPECTED here: backend 'cpu' is not available for cpu tensors here" in unexplained.stdout
    assert "1 NOT EXPECTED here: could not import 'a_module_the_install_lacks'" in unexplained.stdout
    assert "2 skip(s) for a reason this machine does not explain" in unexplained.stdout
    assert "3 skipped" in unexplained.stdout  # the skips are all the run did
