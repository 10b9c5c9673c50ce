"""Session setup, the guard against a green run on a broken build, and shared fixtures.

On machines without CUDA, Triton's interpreter runs the Triton kernels on CPU. TRITON_INTERPRET
must be set before anything imports triton (setting it later leaves tl.max and tl.sum broken), and
pytest imports this file before any test module. Importing torch does not import triton. A value
set by the caller is kept.

A test of a backend this install lacks skips, so a broken extension would turn half the suite into
skips. SPLATKERN_EXPECT_KERNELS (set by .ci/run as setup.py's build decision; "CPU" or "CPU,CUDA")
says which compiled kernels this machine must have: the run stops at once, naming the extension's
load error, when one is missing, and fails at the end when a test skipped for a reason that this
machine does not explain (EXPECTED_SKIPS). Every run prints its skips grouped by reason.
"""

import os
from collections import Counter
from pathlib import Path

import pytest
import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from splatkern import _extension  # noqa: E402 - after TRITON_INTERPRET is settled

EXPECT_KERNELS = "SPLATKERN_EXPECT_KERNELS"
# Skip reasons that name what this machine lacks rather than what the install lacks (prefixes). A
# test marked gpu skipping where there is no CUDA device is expected too, whatever its reason.
EXPECTED_SKIPS = (
    "this CPU has no ",  # an instruction set, in the ISA test
    "CPU peak memory: ",  # an OS without a peak-RSS counter
    "real MNIST not found",  # a data set, not part of the build
    "Triton interpreter: ",  # cases left to cuda-triton where, with no GPU, Triton runs interpreted
)
# ... and where the machine is not expected to build CUDA kernels, the skips that name their absence.
NO_CUDA_KERNEL_SKIPS = ("without CUDA kernels",)


def expected_kernels() -> frozenset[str] | None:
    """The dispatch keys SPLATKERN_EXPECT_KERNELS names, or None where it is unset (no expectation)."""
    value = os.environ.get(EXPECT_KERNELS)
    if value is None:
        return None
    keys = frozenset(key.strip().upper() for key in value.split(",") if key.strip())
    if not keys <= {"CPU", "CUDA"}:
        raise pytest.UsageError(f"{EXPECT_KERNELS}={value!r}: expected a comma-separated subset of CPU, CUDA")
    return keys


def pytest_report_header(config):
    wanted = expected_kernels()
    have = ", ".join(sorted(_extension.KERNEL_KEYS)) or "none"
    return (f"splatkern kernels: {have}; {EXPECT_KERNELS}="
            + (",".join(sorted(wanted)) if wanted is not None else "unset (skips are reported, not judged)"))


def pytest_sessionstart(session):
    wanted = expected_kernels()
    missing = sorted((wanted or frozenset()) - _extension.KERNEL_KEYS)
    if missing:
        why = _extension.LOAD_ERROR or "it loaded, but was built without them"
        pytest.exit(f"{EXPECT_KERNELS}={os.environ[EXPECT_KERNELS]}: the installed splatkern._C lacks the "
                    f"{' and '.join(missing)} kernels that this machine must have; "
                    f"splatkern._extension.LOAD_ERROR: {why}", returncode=pytest.ExitCode.TESTS_FAILED)


# (reason, expected) of every skipped test or module of the session.
_skips: list[tuple[str, bool]] = []


def _skip_is_expected(reason: str, gpu_test: bool, wanted: frozenset[str]) -> bool:
    return ((gpu_test and not torch.cuda.is_available()) or reason.startswith(EXPECTED_SKIPS)
            or ("CUDA" not in wanted and any(text in reason for text in NO_CUDA_KERNEL_SKIPS)))


def _note_skip(report) -> None:
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    wanted = expected_kernels()
    gpu_test = "gpu" in getattr(report, "keywords", ())  # a collected module's report has no keywords
    _skips.append((reason, wanted is None or _skip_is_expected(reason, gpu_test, wanted)))


def pytest_runtest_logreport(report):
    _note_skip(report)


def pytest_collectreport(report):
    _note_skip(report)


def pytest_sessionfinish(session, exitstatus):
    if expected_kernels() is not None and exitstatus == pytest.ExitCode.OK and not all(ok for _, ok in _skips):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if not _skips:
        return
    judged = expected_kernels() is not None
    terminalreporter.section("skips by reason")
    for (reason, ok), count in sorted(Counter(_skips).items(), key=lambda item: (item[0][1], -item[1])):
        label = ("expected here: " if ok else "NOT EXPECTED here: ") if judged else ""
        terminalreporter.line(f"{count:5d} {label}{reason}")
    unexplained = sum(not ok for _, ok in _skips)
    if judged and unexplained:
        terminalreporter.line(f"{unexplained} skip(s) for a reason this machine does not explain "
                              f"({EXPECT_KERNELS}={os.environ[EXPECT_KERNELS]}): the run fails", red=True)


# --- fixtures -------------------------------------------------------------------------------------

# Real MNIST in torchvision's layout, beside the clone (CI and this machine keep shared/ there).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"real MNIST not found at {SHARED_DATA}/MNIST/raw (expected beside the repository)")
    return SHARED_DATA


@pytest.fixture
def one_torch_thread():
    """Batches of 16 gain little from a second thread, and where other work holds a core, OpenMP
    threads waiting on each other slow a training test several times over."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
