// Shared declarations of the splatkern op: input checks used by every C++ backend.
#pragma once

#include <torch/library.h>
#include <ATen/core/Tensor.h>

namespace splatkern {

// Checks the flattened inputs of splat_forward: means [B, N, 2], sigmas [B, N], amps [B, N],
// one floating dtype, one device, contiguous, height/width >= 1, and every value finite with
// sigmas > 0. Errors name the argument and surface in Python as ValueError / TypeError.
void check_forward_inputs(const at::Tensor& means, const at::Tensor& sigmas, const at::Tensor& amps,
                          int64_t height, int64_t width);

// The same for splat_backward, plus grad_image [B, H, W] of the inputs' dtype and index [B, H, W] int32.
void check_backward_inputs(const at::Tensor& grad_image, const at::Tensor& means,
                           const at::Tensor& sigmas, const at::Tensor& amps, const at::Tensor& index);

}  // namespace splatkern
