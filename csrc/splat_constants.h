// What host and device code of every C++ backend share, with no torch dependency: the flush cut-off
// of the axis factors and the value checks' flag bits. The CUDA kernels' CPU emulation
// (tests/cuda_emulator.cpp) includes it too.
#pragma once

#include <cstdint>
#include <limits>

namespace splatkern {

// Per-axis exponents d^2 / (2 s^2) above this are flushed: their factor exp(-d^2 / (2 s^2)) would
// fall below sqrt(smallest normal), so the product of two kept factors is a normal number and
// no kernel ever touches denormals (up to ~100x slower on x86). The value is
// -0.5 * log(smallest normal) = (1 - min_exponent) / 2 * ln 2: ~43.67 (float), ~354.2 (double).
// Written without std::log so CUDA device code can use it too; every C++ backend reads it here.
template <typename scalar_t>
constexpr scalar_t kFlushExponent =
    scalar_t((1 - std::numeric_limits<scalar_t>::min_exponent) / 2) * scalar_t(0.693147180559945309417232121458);

// What a value check found, one bit each; device kernels OR them into an int32 flag word.
enum MarkerFlaw : int32_t {
  kMeansNonfinite = 1,
  kSigmasNonfinite = 2,
  kSigmasNonpositive = 4,
  kAmpsNonfinite = 8,
};

}  // namespace splatkern
