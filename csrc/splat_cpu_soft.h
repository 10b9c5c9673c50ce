// The CPU kernels of the soft composites (softor, over, smoothmax), called by splat_cpu.cpp's entry
// points after their checks, for N >= 1 markers.
#pragma once

#include "splat.h"

#include <tuple>

namespace splatkern {
namespace cpu {

// The image [B, H, W] of markers [B, N, ...] under `composite` (not kMax), and the per-pixel state
// [B, kSoftStatePlanes, H, W] its backward reads (csrc/splat.cpp).
std::tuple<at::Tensor, at::Tensor> soft_forward(const at::Tensor& means, const at::Tensor& sigmas,
                                                const at::Tensor& amps, int64_t height, int64_t width,
                                                Composite composite, double temperature);

// The gradients of that image w.r.t. means, sigmas and amps, given the image's gradient [B, H, W]
// and the forward's state.
std::tuple<at::Tensor, at::Tensor, at::Tensor> soft_backward(const at::Tensor& grad_image, const at::Tensor& means,
                                                             const at::Tensor& sigmas, const at::Tensor& amps,
                                                             const at::Tensor& state, Composite composite,
                                                             double temperature);

}  // namespace cpu
}  // namespace splatkern
