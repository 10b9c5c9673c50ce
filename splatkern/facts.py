"""Facts that the Python, Triton and C++ code of splatkern share, each stated once.

Standard library only: setup.py loads this file by path, before torch or the package is importable,
and writes ``c_header()`` to csrc/splat_facts.h, the only place the C++ and CUDA code read these
facts from. tests/test_facts.py checks that the built extension and the header on disk agree with it.
"""

from __future__ import annotations

import math

# The value checks, in the order they are reported when several hold. Kernels OR the bit
# ``FLAW_BIT[name]`` into a flag word when they find the flaw; an op's messages (``FLAW_MESSAGES`` for
# splat_render, ``STROKE_FLAW_MESSAGES`` for stroke_render) hold bit ``1 << k``'s error at ``k``.
# ``{op}`` is the op's name, ``{points}`` its argument of coordinates.
MARKER_FLAWS = (
    ("means_nonfinite", "{op}: {points} must be finite (found NaN or inf)"),
    ("sigmas_nonfinite", "{op}: sigmas must be finite (found NaN or inf)"),
    ("sigmas_nonpositive", "{op}: sigmas must be > 0 (found a value <= 0)"),
    ("amps_nonfinite", "{op}: amps must be finite (found NaN or inf)"),
    # checked only where the composite needs it (UNIT_AMP_COMPOSITES)
    ("amps_outside_unit", "{op}: amps must lie in [0, 1] for composite 'softor' and 'over' (found a value outside)"),
)
FLAW_BIT = {name: 1 << bit for bit, (name, _) in enumerate(MARKER_FLAWS)}
FLAW_MESSAGES = tuple(text.format(op="splat_render", points="means") for _, text in MARKER_FLAWS)
STROKE_FLAW_MESSAGES = tuple(text.format(op="stroke_render", points="paths") for _, text in MARKER_FLAWS)

# How primitives are composited per pixel (splatkern/reference.py's composite_reference states each
# rule). The kernels take a mode as its index here.
COMPOSITES = ("max", "softor", "over", "smoothmax")
# The modes whose values are coverages: they need 0 <= amps <= 1.
UNIT_AMP_COMPOSITES = ("softor", "over")
# Errors about the ops' non-tensor arguments, after "<op>: " (the op's name); every language appends
# ", got <value>".
UNKNOWN_COMPOSITE = "composite must be one of " + ", ".join(f"'{name}'" for name in COMPOSITES)
BAD_TEMPERATURE = "temperature must be a finite number > 0"
INDEX_NEEDS_MAX = "return_index=True needs composite='max' (the other modes have no winner)"
# The fused forward of a soft composite returns, beside the image, the per-pixel state its backward
# reads, [B, SOFT_STATE_PLANES, H, W] (csrc/splat.cpp states what each plane holds).
SOFT_STATE_PLANES = 2
# The deterministic stroke backwards (CUDA, Triton) sum per block of tiles, each block its own row of
# per-segment partials, added in block order after; the rows take at most this many bytes, or one row
# per image where that is more (as many as the atomic sums). One row per tile would take
# B x tiles x S K x terms scalars: 1.3 GB for B = 64, S = 16, P = 8 at 1024 x 1024 in float32.
DETERMINISTIC_PARTIALS_BYTES = 64 << 20

# The fused backends' backward has no derivative: differentiating it again raises NotImplementedError.
NO_DOUBLE_BACKWARD = (
    "double backward is not supported by splatkern's fused backends (their backward has no derivative); "
    'use backend="reference" for second derivatives'
)

# The backward gathers markers (or segments) by the winner map, so it rejects values outside [0, N);
# the error starts with the backward op's name: "splat_backward: " or "stroke_backward: ".
BAD_INDEX = "index holds values outside [0, {n_markers})"

# Per-axis exponents d^2 / (2 s^2) above these are flushed: their factor exp(-d^2 / (2 s^2)) would
# fall below sqrt(smallest normal), so the product of two kept factors is a normal number and no
# kernel touches denormals (slow on x86). The value is -0.5 * log(smallest normal).
SMALLEST_NORMAL = {"float32": 2.0**-126, "float64": 2.0**-1022}
FLUSH_EXPONENT = {dtype: -0.5 * math.log(tiny) for dtype, tiny in SMALLEST_NORMAL.items()}

_CPP_TYPES = {"float32": "float", "float64": "double"}


def _c_string(text: str) -> str:
    if not text.isascii() or not text.isprintable():
        raise ValueError(f"facts: C string literals here take printable ASCII, got {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _camel(name: str) -> str:
    return "k" + "".join(word.capitalize() for word in name.split("_"))


def c_header() -> str:
    """csrc/splat_facts.h: the facts above for C++ host and CUDA device code, with no torch dependency."""
    flaw_bits = "\n".join(f"  {_camel(name)} = {bit}," for name, bit in FLAW_BIT.items())
    flaw_messages = "\n".join(f"    {_c_string(message)}," for message in FLAW_MESSAGES)
    stroke_flaw_messages = "\n".join(f"    {_c_string(message)}," for message in STROKE_FLAW_MESSAGES)
    before_count, after_count = BAD_INDEX.split("{n_markers}")
    composites = "\n".join(f"  {_camel(name)} = {k}," for k, name in enumerate(COMPOSITES))
    # The kernels compute in float or double: each type takes its value, rounded from the double
    # here as Triton rounds it.
    *conditional, (_, last_value) = FLUSH_EXPONENT.items()
    flush = "".join(f"std::is_same_v<scalar_t, {_CPP_TYPES[dtype]}> ? scalar_t({value!r}) : " for dtype, value in conditional)
    flush += f"scalar_t({last_value!r})"
    return f"""\
// Generated by setup.py from splatkern/facts.py, where each fact is explained: edit that file.
#pragma once

#include <cstdint>
#include <type_traits>

namespace splatkern {{

// What a value check found, one bit each; kernels OR them into an int32 flag word.
enum MarkerFlaw : int32_t {{
{flaw_bits}
}};

// kFlawMessages[k] is splat_render's error of flaw bit 1 << k, kStrokeFlawMessages[k] stroke_render's.
inline constexpr const char* kFlawMessages[] = {{
{flaw_messages}
}};
inline constexpr const char* kStrokeFlawMessages[] = {{
{stroke_flaw_messages}
}};

// The compositing modes, as the ops' `composite` argument names them in this order.
enum Composite : int32_t {{
{composites}
}};
inline constexpr const char* kCompositeNames[] = {{{", ".join(_c_string(name) for name in COMPOSITES)}}};
// Whether composite k needs 0 <= amps <= 1 (flaw kAmpsOutsideUnit otherwise).
inline constexpr bool kCompositeNeedsUnitAmps[] = {{{", ".join("true" if name in UNIT_AMP_COMPOSITES else "false" for name in COMPOSITES)}}};
// After "<op>: ".
inline constexpr const char* kUnknownComposite = {_c_string(UNKNOWN_COMPOSITE)};
inline constexpr const char* kBadTemperature = {_c_string(BAD_TEMPERATURE)};
// The planes of a soft composite's per-pixel state (csrc/splat.cpp).
inline constexpr int64_t kSoftStatePlanes = {SOFT_STATE_PLANES};
// The deterministic stroke backwards' partial sums take at most this many bytes (facts.py).
inline constexpr int64_t kDeterministicPartialsBytes = {DETERMINISTIC_PARTIALS_BYTES};

inline constexpr const char* kNoDoubleBackward = {_c_string(NO_DOUBLE_BACKWARD)};

// The bad-index error is the backward op's name, ": ", kBadIndexBefore + N + kBadIndexAfter.
inline constexpr const char* kBadIndexBefore = {_c_string(before_count)};
inline constexpr const char* kBadIndexAfter = {_c_string(after_count)};

// Per-axis exponents above this are flushed to zero.
template <typename scalar_t>
constexpr scalar_t kFlushExponent = {flush};

}}  // namespace splatkern
"""
