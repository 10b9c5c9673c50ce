// The CUDA backend of stroke_forward / stroke_backward: checks, allocations and the launches of the
// kernels in stroke_cuda_kernels.cuh on the current stream of the inputs' device.
#include "splat.h"
#include "splat_cuda_host.h"
#include "stroke_cuda_kernels.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <limits>

namespace splatkern {
namespace {

using cuda_host::flag_word;
using cuda_host::stream_is_capturing;

// S max(P - 1, 1) segment ids, each vertex and each pixel index into int32 on CUDA.
void check_sizes(const at::Tensor& paths, int64_t height, int64_t width) {
  constexpr int64_t kMost = std::numeric_limits<int32_t>::max();
  const int64_t n_strokes = paths.size(1), n_vertices = paths.size(2);
  TORCH_CHECK_VALUE(n_strokes * std::max<int64_t>(n_vertices, 2) <= kMost && height <= kMost && width <= kMost,
                    "stroke_render: S * P, height and width must each fit in int32 on CUDA");
}

std::tuple<at::Tensor, at::Tensor> stroke_forward_cuda(const at::Tensor& paths, const at::Tensor& sigmas,
                                                       const at::Tensor& amps, int64_t height, int64_t width,
                                                       bool /*deterministic: the forward always is*/,
                                                       c10::string_view composite_name, double temperature) {
  const Composite composite = parse_composite(composite_name, temperature, Primitive::kStrokes);
  check_stroke_forward_layout(paths, sigmas, amps, height, width);
  check_sizes(paths, height, width);
  const c10::cuda::CUDAGuard device_guard(paths.device());
  const int64_t batch = paths.size(0), n_strokes = paths.size(1), n_vertices = paths.size(2);
  const auto int_options = paths.options().dtype(at::kInt);
  if (n_strokes == 0) {
    return {at::zeros({batch, height, width}, paths.options()),
            composite == kMax ? at::full({batch, height, width}, -1, int_options)
                              : at::zeros({batch, kSoftStatePlanes, height, width}, paths.options())};
  }
  at::Tensor image = at::empty({batch, height, width}, paths.options());
  at::Tensor saved = composite == kMax ? at::empty({batch, height, width}, int_options)
                                       : at::empty({batch, kSoftStatePlanes, height, width}, paths.options());
  if (batch == 0) return {image, saved};

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool capturing = stream_is_capturing(stream);
  at::Tensor flaws = flag_word(paths, capturing);
  AT_DISPATCH_FLOATING_TYPES(paths.scalar_type(), "stroke_forward_cuda", [&] {
    kernels::launch_stroke_forward(cuda_host::launcher(stream, "stroke_render"), composite, temperature,
                                   paths.const_data_ptr<scalar_t>(), sigmas.const_data_ptr<scalar_t>(),
                                   amps.const_data_ptr<scalar_t>(), batch, int(n_strokes), int(n_vertices),
                                   int(height), int(width), image.mutable_data_ptr<scalar_t>(),
                                   composite == kMax ? saved.mutable_data_ptr<int32_t>() : nullptr,
                                   composite == kMax ? nullptr : saved.mutable_data_ptr<scalar_t>(),
                                   flaws.mutable_data_ptr<int32_t>());
  });
  if (!capturing) raise_marker_flaws(flaws.item<int32_t>(), Primitive::kStrokes);  // the call's one host sync
  return {image, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> stroke_backward_cuda(const at::Tensor& grad_image,
                                                                    const at::Tensor& paths, const at::Tensor& sigmas,
                                                                    const at::Tensor& amps, const at::Tensor& saved,
                                                                    bool deterministic,
                                                                    c10::string_view composite_name,
                                                                    double temperature) {
  const Composite composite = parse_composite(composite_name, temperature, Primitive::kStrokes);
  check_stroke_backward_layout(grad_image, paths, sigmas, amps, saved, composite);
  const int64_t height = grad_image.size(1), width = grad_image.size(2);
  check_sizes(paths, height, width);
  const c10::cuda::CUDAGuard device_guard(paths.device());
  const int64_t batch = paths.size(0), n_strokes = paths.size(1), n_vertices = paths.size(2);
  if (n_strokes == 0 || batch == 0 || height * width == 0) {
    return {at::zeros_like(paths), at::zeros_like(sigmas), at::zeros_like(amps)};
  }
  // The finishing kernel writes every element.
  at::Tensor grad_paths = at::empty_like(paths);
  at::Tensor grad_sigmas = at::empty_like(sigmas);
  at::Tensor grad_amps = at::empty_like(amps);
  const int64_t n_segments = n_strokes * std::max<int64_t>(n_vertices - 1, 1);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // Only the max mode reads a winner map, hence checks it: one host sync there.
  const bool check_index = composite == kMax && !stream_is_capturing(stream);
  at::Tensor bad_index = flag_word(paths, !check_index);
  AT_DISPATCH_FLOATING_TYPES(paths.scalar_type(), "stroke_backward_cuda", [&] {
    const auto plan = kernels::stroke_backward_plan<scalar_t>(deterministic, batch, height, width, n_segments);
    at::Tensor sums = at::zeros({plan.sums}, paths.options());
    kernels::launch_stroke_backward(
        cuda_host::launcher(stream, "stroke_render"), plan, composite, temperature, deterministic,
        grad_image.const_data_ptr<scalar_t>(), paths.const_data_ptr<scalar_t>(), sigmas.const_data_ptr<scalar_t>(),
        amps.const_data_ptr<scalar_t>(), composite == kMax ? saved.const_data_ptr<int32_t>() : nullptr,
        composite == kMax ? nullptr : saved.const_data_ptr<scalar_t>(), batch, int(n_strokes), int(n_vertices),
        int(height), int(width), sums.mutable_data_ptr<scalar_t>(), grad_paths.mutable_data_ptr<scalar_t>(),
        grad_sigmas.mutable_data_ptr<scalar_t>(), grad_amps.mutable_data_ptr<scalar_t>(),
        bad_index.mutable_data_ptr<int32_t>());
  });
  if (check_index) raise_bad_index(bad_index.item<int32_t>() != 0, n_segments, Primitive::kStrokes);  // one host sync
  return {grad_paths, grad_sigmas, grad_amps};
}

}  // namespace

TORCH_LIBRARY_IMPL(splatkern, CUDA, m) {
  m.impl("stroke_forward", &stroke_forward_cuda);
  m.impl("stroke_backward", &stroke_backward_cuda);
}

}  // namespace splatkern
