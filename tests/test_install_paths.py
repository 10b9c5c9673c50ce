"""The ways a user installs splatkern, each in throwaway venvs (.ci/install_paths.sh): build isolation
against the installed torch, the clear stop without torch, --no-build-isolation and editable installs,
a wheel in a fresh venv, a base install without extras, and a wheel beside another torch version.

A release check, deselected from the default run (pyproject.toml's addopts): it installs torch twice
and builds the extension four times, more than CI's time allows beside the suite. Run it with
``pytest -m release tests/test_install_paths.py``.
"""

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "install_paths.sh"


@pytest.mark.release
def test_every_install_path_works():
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=3600)
    summary = result.stdout[result.stdout.rfind("--- install paths"):]
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert summary.count("PASS ") == 6 and "FAIL" not in summary, summary
