// Shared declarations of the splatkern op: input checks used by every C++ backend.
#pragma once

#include <torch/library.h>
#include <ATen/core/Tensor.h>

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

// Checks the flattened inputs of splat_forward: means [B, N, 2], sigmas [B, N], amps [B, N],
// one floating dtype, one device, contiguous, height/width >= 1, and every value finite with
// sigmas > 0. Errors name the argument and surface in Python as ValueError / TypeError.
void check_forward_inputs(const at::Tensor& means, const at::Tensor& sigmas, const at::Tensor& amps,
                          int64_t height, int64_t width);

// The same for splat_backward, plus grad_image [B, H, W] of the inputs' dtype and index [B, H, W] int32.
void check_backward_inputs(const at::Tensor& grad_image, const at::Tensor& means,
                           const at::Tensor& sigmas, const at::Tensor& amps, const at::Tensor& index);

}  // namespace splatkern
