"""The built CUDA kernels keep the form their speed rests on, read from their SASS.

Per marker-pixel pair the float forward should issue one multiply, one compare and two predicated
updates, with no select: selects run on the ALU pipe, which on sm_90 has half the lanes of the FP32
pipes and bounded the kernel (README, "Performance (GPU)"). ptxas decides this, not the source, and turns
predicated moves back into selects unless it is kept from it (csrc/splat_cuda_kernels.cuh, keep_greater);
this reads the extension's own machine code for each architecture it was built for, with no GPU.
The float backward (atomic and deterministic) keeps each thread's pixels in registers (no spills)
and reads them with vector loads, and the soft composites' and the strokes' kernels spill nothing either.
"""

import importlib.util
import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from splatkern import _extension
from support import cuobjdump_path

INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def cuobjdump() -> str:
    found = cuobjdump_path()
    if found is None:
        pytest.skip("no cuobjdump: neither triton's NVIDIA backend nor a CUDA toolkit on PATH")
    return found


def sass_by_arch(library: Path, kernel: str) -> dict[str, list[tuple[int, str, str, str]]]:
    """{"sm_90": [(address, predicate, opcode, operands), ...]} of the kernel whose mangled name holds
    `kernel` (its name and template arguments: "forward_kernelIfE" is forward_kernel<float>)."""
    sass = subprocess.run([cuobjdump(), "-sass", library], capture_output=True, text=True, check=True).stdout
    kernels, arch, name = {}, None, None
    for line in sass.splitlines():
        if found := re.search(r"arch = (sm_\d+)", line):
            arch = found[1]
        elif found := re.search(r"Function : (\S+)", line):
            name = found[1]
        elif name and kernel in name and (found := INSTRUCTION.search(line)):
            kernels.setdefault(arch, []).append((int(found[1], 16), found[2] or "", found[3], found[4]))
    return kernels


def largest_inner_loop(instructions: list[tuple[int, str, str, str]]) -> list[tuple[int, str, str, str]]:
    """The longest loop that holds no other: the instructions from a backward branch's target to the branch."""
    spans = []
    for address, _, opcode, operands in instructions:
        if opcode == "BRA" and (target := re.search(r"0x([0-9a-f]+)", operands)) and int(target[1], 16) < address:
            spans.append((int(target[1], 16), address))
    inner = [(a, b) for a, b in spans if not any(a <= c and d <= b and (c, d) != (a, b) for c, d in spans)]
    start, end = max(inner, key=lambda span: span[1] - span[0])
    return [i for i in instructions if start <= i[0] <= end]


def built_library() -> Path:
    if "CUDA" not in _extension.KERNEL_KEYS:
        pytest.skip("the extension was built without CUDA kernels (no nvcc or a CPU-only torch at build time)")
    return Path(importlib.util.find_spec("splatkern._C").origin)


# Columns per lane, and the most instructions per pair its loop may take: the factor loads, the loop
# counter and register moves add 0.9-1.0 per pair to the 4 with one column of 8 rows per thread
# (nvcc 13.0; 1.3 with 4 rows), 0.6 with two columns.
FORWARD_LOOPS = [pytest.param(1, 5.2, id="one-column"), pytest.param(2, 4.7, id="two-columns")]


@pytest.mark.parametrize("columns, most_per_pair", FORWARD_LOOPS)
def test_float_forward_loop_has_no_selects_and_one_alu_instruction_per_pair(columns, most_per_pair):
    by_arch = sass_by_arch(built_library(), f"forward_kernelIfLi{columns}E")
    assert by_arch, f"no float forward kernel of {columns} column(s) per lane found in the extension's SASS"
    for arch, instructions in by_arch.items():
        loop = largest_inner_loop(instructions)
        opcodes = Counter(opcode.split(".")[0] for _, _, opcode, _ in loop)
        predicated = Counter(opcode.split(".")[0] for _, predicate, opcode, _ in loop if predicate)
        pairs = opcodes["FMUL"]
        assert pairs >= 16 * columns, (arch, opcodes)  # the unrolled compositing loop, not the factor loop
        assert opcodes["FSEL"] == 0 and opcodes["SEL"] == 0, (arch, opcodes)
        assert opcodes["FSETP"] == pairs and predicated["FADD"] == pairs and predicated["IMAD"] == pairs, (arch, opcodes)
        assert len(loop) <= most_per_pair * pairs, (arch, len(loop) / pairs, opcodes)


@pytest.mark.parametrize("mode, kernel", [("atomic", "backward_kernelIfLb0E"), ("deterministic", "backward_kernelIfLb1E")])
def test_float_backward_keeps_its_pixels_in_registers(mode, kernel):
    """Each thread's 8 winners and upstream gradients, and its run's sums, live in registers: no
    local-memory loads or stores (spills), which would cost a memory round trip per pixel."""
    by_arch = sass_by_arch(built_library(), kernel)
    assert by_arch, f"no float {mode} backward kernel found in the extension's SASS"
    for arch, instructions in by_arch.items():
        local = [opcode for _, _, opcode, _ in instructions if opcode.split(".")[0] in ("LDL", "STL")]
        assert not local, (arch, Counter(local))
        assert sum(opcode.startswith("LDG.E.128") for _, _, opcode, _ in instructions) == 4, arch  # the vector loads


@pytest.mark.parametrize("kernel", ["forward_soft_kernel", "backward_soft_kernel"])
def test_soft_composite_kernels_keep_their_state_in_registers(kernel):
    """The soft composites' kernels (every mode, dtype and column count) keep each thread's per-pixel
    state, upstream gradients and per-marker sums in registers: no local-memory loads or stores. Their
    names share no substring with the max kernels' that the tests above look for."""
    by_arch = sass_by_arch(built_library(), kernel)
    assert by_arch, f"no {kernel} found in the extension's SASS"
    for arch, instructions in by_arch.items():
        local = [opcode for _, _, opcode, _ in instructions if opcode.split(".")[0] in ("LDL", "STL")]
        assert not local, (arch, Counter(local))


@pytest.mark.parametrize("kernel", ["stroke_forward_kernel", "stroke_backward_kernel", "stroke_finish_kernel"])
def test_stroke_kernels_keep_their_state_in_registers(kernel):
    """stroke_render's kernels (every mode and dtype) keep each thread's composite state, segment terms
    and sums in registers: no local-memory loads or stores."""
    by_arch = sass_by_arch(built_library(), kernel)
    assert by_arch, f"no {kernel} found in the extension's SASS"
    for arch, instructions in by_arch.items():
        local = [opcode for _, _, opcode, _ in instructions if opcode.split(".")[0] in ("LDL", "STL")]
        assert not local, (arch, Counter(local))
