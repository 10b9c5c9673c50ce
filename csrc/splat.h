// Shared declarations of the splatkern op: input checks used by every C++ backend.
#pragma once

#include <torch/library.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <string>

namespace splatkern {

// Per-axis exponents d^2 / (2 s^2) above this are flushed: their factor exp(-d^2 / (2 s^2)) would
// fall below sqrt(smallest normal), so the product of two kept factors is a normal number and
// no kernel ever touches denormals (up to ~100x slower on x86). The value is
// -0.5 * log(smallest normal) = (1 - min_exponent) / 2 * ln 2: ~43.67 (float), ~354.2 (double).
// Written without std::log so CUDA device code can use it too; every C++ backend reads it here.
template <typename scalar_t>
constexpr scalar_t kFlushExponent =
    scalar_t((1 - std::numeric_limits<scalar_t>::min_exponent) / 2) * scalar_t(0.693147180559945309417232121458);

// Error messages are built from plain std::string pieces. c10::str with several arguments formats
// through a std::ostringstream compiled into this library, and on the H100 machine (torch 2.11,
// extension built by /opt/gcc/bin/g++) throwing such a message crashed the process (SIGSEGV) where
// single-string messages raised cleanly.
namespace text {
inline std::string piece(const char* s) { return s; }
inline std::string piece(const std::string& s) { return s; }
inline std::string piece(int64_t v) { return std::to_string(v); }
inline std::string piece(c10::ScalarType t) { return c10::toString(t); }
inline std::string piece(const c10::Device& d) { return d.str(); }
std::string piece(c10::IntArrayRef sizes);  // "[2, 3, 1]"
}  // namespace text

template <typename... Pieces>
std::string message(const Pieces&... pieces) {
  return (std::string() + ... + text::piece(pieces));
}

// What a value check found, one bit each; device kernels OR them into an int32 flag word.
enum MarkerFlaw : int32_t {
  kMeansNonfinite = 1,
  kSigmasNonfinite = 2,
  kSigmasNonpositive = 4,
  kAmpsNonfinite = 8,
};

// Raises the ValueError of the first flaw set in `flaws` (an OR of MarkerFlaw bits); 0 passes.
void raise_marker_flaws(int32_t flaws);

// The layout splat_forward takes: means [B, N, 2], sigmas [B, N], amps [B, N], one floating
// dtype, one device, contiguous, height/width >= 1. Values are each backend's to check (every value
// finite, sigmas > 0): the CPU before its kernel, CUDA inside its forward kernel (raise_marker_flaws).
// Errors name the argument and surface in Python as ValueError / TypeError.
void check_forward_layout(const at::Tensor& means, const at::Tensor& sigmas, const at::Tensor& amps,
                          int64_t height, int64_t width);

// The same for splat_backward, plus grad_image [B, H, W] of the inputs' dtype and index [B, H, W]
// int32. The backward trusts the markers' values (its forward checked them); it checks that index
// lies in [0, N) inside its kernel, since it gathers markers by it.
void check_backward_layout(const at::Tensor& grad_image, const at::Tensor& means, const at::Tensor& sigmas,
                           const at::Tensor& amps, const at::Tensor& index);

// Raises the ValueError for a winner map that held a value outside [0, n_markers), when `found`.
void raise_bad_index(bool found, int64_t n_markers);

}  // namespace splatkern
