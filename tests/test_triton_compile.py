"""The Triton kernels (splat_render's and stroke_render's, every composite's) compile for real GPUs
(sm_80, sm_90) without spilling registers, with no GPU here.

The interpreter (the cpu-triton cases of test_backends.py) checks what the kernels compute, but accepts code that the GPU
compiler rejects, and says nothing of registers. Compiling needs triton without the interpreter,
so it runs in a child process: this file run as a script prints each kernel's resource usage.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

# (height, width, N): the blocks the launchers pick for the two target sizes; 128 x 128 gets
# the largest forward and sum-kernel blocks (larger images the same), smaller images only smaller ones.
SHAPES = [(28, 28, 64), (128, 128, 256)]
ARCHS = [80, 90]
# The soft composites, each compiled with its own blocks (the max kernels above are the "max" mode's).
SOFT_COMPOSITES = ["softor", "over", "smoothmax"]


def compile_all() -> list[dict]:
    """Compile every kernel with the block sizes the launchers pick for SHAPES; report registers and spills."""
    import torch  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    from splatkern import triton_kernels as kernels  # noqa: PLC0415
    from splatkern import triton_strokes as strokes  # noqa: PLC0415
    from splatkern.facts import COMPOSITES  # noqa: PLC0415
    from support import cuobjdump_path  # noqa: PLC0415

    cuobjdump = cuobjdump_path()
    assert cuobjdump is not None, "no cuobjdump beside triton's NVIDIA backend nor on PATH"
    launches = {}  # (kernel, dtype, constants) -> shape, without repeats
    for height, width, n_markers in SHAPES:
        for dtype in (torch.float32, torch.float64):
            flush = kernels._flush_exponent(dtype)
            configs = [
                (kernels._forward_kernel, dict(FLUSH=flush, **kernels._forward_config(height, width, dtype))),
                *(
                    (kernels._backward_kernel, dict(FLUSH=flush, DETERMINISTIC=deterministic, WIDE_KEYS=wide_keys,
                                                    **kernels._backward_config(height, width),
                                                    **({} if deterministic else {"partials_ptr": None})))
                    for deterministic in (False, True)
                    for wide_keys in (False, True)  # int32 keys where they fit, else int64
                ),
                (kernels._sum_partials_kernel, kernels._sum_partials_config(n_markers)),
            ]  # fmt: skip
            for composite in SOFT_COMPOSITES:
                # smoothmax reads 1 / temperature from a tensor; the others are passed None for it
                soft = dict(FLUSH=flush, COMPOSITE=kernels.COMPOSITES.index(composite),
                            **({} if composite == "smoothmax" else {"inv_t_ptr": None}))
                configs.append((kernels._soft_forward_kernel,
                                dict(soft, **kernels._soft_forward_config(height, width, dtype, composite))))
                configs += [
                    (kernels._soft_backward_kernel, dict(soft, DETERMINISTIC=deterministic,
                                                         **kernels._soft_backward_config(height, width, dtype, composite),
                                                         **({} if deterministic else {"partials_ptr": None})))
                    for deterministic in (False, True)
                ]  # fmt: skip
            for composite in COMPOSITES:
                # Triton specialises an int argument of 1 into a constant: P = 1 compiles apart
                for vertices in ({}, {"n_vertices": 1}):
                    stroke = dict(FLUSH=flush, REACH=strokes._reach_per_sigma(dtype),
                                  COMPOSITE=COMPOSITES.index(composite), **vertices,
                                  **strokes._config(height, width),
                                  **({} if composite == "smoothmax" else {"inv_t_ptr": None}))
                    configs.append((strokes._forward_kernel,
                                    dict(stroke, UNIT_AMPS=composite in ("softor", "over"))))
                    configs += [
                        (strokes._backward_kernel, dict(stroke, DETERMINISTIC=deterministic,
                                                        **({} if deterministic else {"partials_ptr": None}),
                                                        **({} if composite == "max" else {"bad_index_ptr": None})))
                        for deterministic in (False, True)
                    ]  # fmt: skip
            configs += [(strokes._sum_partials_kernel, dict(BLOCK_V=256, num_warps=4, **vertices))
                        for vertices in ({}, {"n_vertices": 1})]
            for kernel, constants in configs:
                key = (kernel, dtype, tuple(sorted(constants.items())))
                launches.setdefault(key, (height, width, n_markers))

    reports = []
    for (kernel, dtype, constants), shape in launches.items():
        constants = dict(constants)
        num_warps = constants.pop("num_warps")
        scalar = {torch.float32: "fp32", torch.float64: "fp64"}[dtype]
        signature = {
            name: "constexpr" if name in constants
            else "*i32" if name in ("index_ptr", "flaws_ptr", "bad_index_ptr")
            or (name == "saved_ptr" and constants.get("COMPOSITE") == 0)  # a stroke winner map
            else f"*{scalar}" if name.endswith("_ptr")
            else "i32"
            for name in kernel.arg_names
        }  # fmt: skip
        for arch in ARCHS:
            compiled = triton.compile(
                ASTSource(fn=kernel, signature=signature, constexprs=constants),
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": num_warps},
            )
            cubin = Path(os.environ["CUBIN_DIR"]) / "kernel.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            usage = subprocess.run([cuobjdump, "--dump-resource-usage", cubin], capture_output=True, text=True).stdout
            found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
            reports.append(
                dict(module=kernel.__module__, kernel=kernel.__name__, composite=COMPOSITES[constants.get("COMPOSITE", 0)], shape=shape,
                     arch=arch, dtype=scalar,
                     registers=int(found[1]), stack=int(found[2]), local=int(found[3]))
            )  # fmt: skip
    return reports


def test_kernels_compile_for_gpus_without_spills(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "0", "CUBIN_DIR": str(tmp_path)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), env.get("PYTHONPATH")]))
    child = subprocess.run([sys.executable, __file__], capture_output=True, text=True, env=env, timeout=600)
    assert child.returncode == 0, child.stderr[-4000:]
    reports = json.loads(child.stdout)
    assert {(r["module"], r["kernel"]) for r in reports} == {
        *(("splatkern.triton_kernels", name) for name in ("_forward_kernel", "_backward_kernel",
                                                          "_sum_partials_kernel", "_soft_forward_kernel",
                                                          "_soft_backward_kernel")),
        *(("splatkern.triton_strokes", name) for name in ("_forward_kernel", "_backward_kernel",
                                                          "_sum_partials_kernel")),
    }
    spilling = [r for r in reports if r["stack"] or r["local"]]
    assert not spilling, spilling


if __name__ == "__main__":
    print(json.dumps(compile_all()))
