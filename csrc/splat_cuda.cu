// The CUDA backend of splat_forward / splat_backward: checks, allocations and the launches of the
// kernels in splat_cuda_kernels.cuh on the current stream of the inputs' device.
#include "splat.h"
#include "splat_cuda_host.h"
#include "splat_cuda_kernels.cuh"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

namespace splatkern {
namespace {

using cuda_host::flag_word;
using cuda_host::stream_is_capturing;
using kernels::kTerms;
using kernels::Terms;

// Launches on `stream` in splat_render's words.
auto launcher(cudaStream_t stream) { return cuda_host::launcher(stream, "splat_render"); }

// splat_forward_cuda for the soft composites, after its checks: the image, and the per-pixel state
// [B, kSoftStatePlanes, H, W] their backward reads (csrc/splat.cpp), all zeros where N = 0.
std::tuple<at::Tensor, at::Tensor> soft_forward_cuda(const at::Tensor& means, const at::Tensor& sigmas,
                                                     const at::Tensor& amps, int64_t height, int64_t width,
                                                     Composite composite, double temperature) {
  const int64_t batch = means.size(0), n_markers = means.size(1);
  if (n_markers == 0) {
    return {at::zeros({batch, height, width}, means.options()),
            at::zeros({batch, kSoftStatePlanes, height, width}, means.options())};
  }
  at::Tensor image = at::empty({batch, height, width}, means.options());
  at::Tensor state = at::empty({batch, kSoftStatePlanes, height, width}, means.options());
  if (batch == 0) return {image, state};

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool capturing = stream_is_capturing(stream);
  at::Tensor flaws = flag_word(means, capturing);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "splat_soft_forward_cuda", [&] {
    kernels::launch_soft_forward(launcher(stream), composite, temperature, means.const_data_ptr<scalar_t>(),
                                 sigmas.const_data_ptr<scalar_t>(), amps.const_data_ptr<scalar_t>(), batch,
                                 int(n_markers), int(height), int(width), image.mutable_data_ptr<scalar_t>(),
                                 state.mutable_data_ptr<scalar_t>(), flaws.mutable_data_ptr<int32_t>());
  });
  if (!capturing) raise_marker_flaws(flaws.item<int32_t>());  // the call's one host sync
  return {image, state};
}

std::tuple<at::Tensor, at::Tensor> splat_forward_cuda(const at::Tensor& means, const at::Tensor& sigmas,
                                                      const at::Tensor& amps, int64_t height, int64_t width,
                                                      bool /*deterministic: the forward always is*/,
                                                      c10::string_view composite_name, double temperature) {
  const Composite composite = parse_composite(composite_name, temperature);
  check_forward_layout(means, sigmas, amps, height, width);
  const c10::cuda::CUDAGuard device_guard(means.device());
  const int64_t batch = means.size(0), n_markers = means.size(1);
  TORCH_CHECK_VALUE(n_markers <= std::numeric_limits<int32_t>::max() && height <= std::numeric_limits<int32_t>::max() &&
                        width <= std::numeric_limits<int32_t>::max(),
                    "splat_render: N, height and width must each fit in int32 on CUDA");
  if (composite != kMax) return soft_forward_cuda(means, sigmas, amps, height, width, composite, temperature);
  if (n_markers == 0) {
    return {at::zeros({batch, height, width}, means.options()),
            at::full({batch, height, width}, -1, means.options().dtype(at::kInt))};
  }
  at::Tensor image = at::empty({batch, height, width}, means.options());
  at::Tensor index = at::empty({batch, height, width}, means.options().dtype(at::kInt));
  if (batch == 0) return {image, index};

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool capturing = stream_is_capturing(stream);
  at::Tensor flaws = flag_word(means, capturing);
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "splat_forward_cuda", [&] {
    kernels::launch_forward(launcher(stream), means.const_data_ptr<scalar_t>(), sigmas.const_data_ptr<scalar_t>(),
                            amps.const_data_ptr<scalar_t>(), batch, int(n_markers), int(height), int(width),
                            image.mutable_data_ptr<scalar_t>(), index.mutable_data_ptr<int32_t>(),
                            flaws.mutable_data_ptr<int32_t>());
  });
  if (!capturing) raise_marker_flaws(flaws.item<int32_t>());  // the call's one host sync
  return {image, index};
}

// splat_backward_cuda for the soft composites, into the gradients it allocated (zeroed unless
// deterministic), for N >= 1 and at least one pixel, from the state their forward saved. No index to
// check: no host sync.
void soft_backward_cuda(const at::Tensor& grad_image, const at::Tensor& means, const at::Tensor& sigmas,
                        const at::Tensor& amps, const at::Tensor& state, bool deterministic, Composite composite,
                        double temperature, at::Tensor& grad_means, at::Tensor& grad_sigmas, at::Tensor& grad_amps) {
  const int64_t batch = means.size(0), n_markers = means.size(1);
  const int64_t height = grad_image.size(1), width = grad_image.size(2);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "splat_soft_backward_cuda", [&] {
    at::Tensor partials;  // the deterministic pass 1's output
    if (deterministic) {
      partials = at::empty({kernels::soft_deterministic_partials<scalar_t>(batch, height, width, n_markers), kTerms},
                           means.options());
    }
    kernels::launch_soft_backward(launcher(stream), composite, temperature, deterministic,
                                  grad_image.const_data_ptr<scalar_t>(), means.const_data_ptr<scalar_t>(),
                                  sigmas.const_data_ptr<scalar_t>(), amps.const_data_ptr<scalar_t>(),
                                  state.const_data_ptr<scalar_t>(), batch, int(n_markers), int(height), int(width),
                                  grad_means.mutable_data_ptr<scalar_t>(), grad_sigmas.mutable_data_ptr<scalar_t>(),
                                  grad_amps.mutable_data_ptr<scalar_t>(),
                                  deterministic ? reinterpret_cast<Terms<scalar_t>*>(partials.mutable_data_ptr<scalar_t>())
                                                : nullptr);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> splat_backward_cuda(const at::Tensor& grad_image,
                                                                   const at::Tensor& means,
                                                                   const at::Tensor& sigmas, const at::Tensor& amps,
                                                                   const at::Tensor& saved, bool deterministic,
                                                                   c10::string_view composite_name, double temperature) {
  const Composite composite = parse_composite(composite_name, temperature);
  check_backward_layout(grad_image, means, sigmas, amps, saved, composite);
  const c10::cuda::CUDAGuard device_guard(means.device());
  const int64_t batch = means.size(0), n_markers = means.size(1);
  const int64_t height = grad_image.size(1), width = grad_image.size(2), pixels = height * width;
  TORCH_CHECK_VALUE(n_markers <= std::numeric_limits<int32_t>::max() && height <= std::numeric_limits<int32_t>::max() &&
                        width <= std::numeric_limits<int32_t>::max(),
                    "splat_render: N, height and width must each fit in int32 on CUDA");
  at::Tensor grad_means = at::empty_like(means);
  at::Tensor grad_sigmas = at::empty_like(sigmas);
  at::Tensor grad_amps = at::empty_like(amps);
  const bool nothing_to_add = n_markers == 0 || batch == 0 || pixels == 0;
  // The atomic kernel adds into the gradients; the deterministic pass 2 writes every element.
  if (!deterministic || nothing_to_add) at::_foreach_zero_({grad_means, grad_sigmas, grad_amps});  // one launch
  if (nothing_to_add) return {grad_means, grad_sigmas, grad_amps};
  if (composite != kMax) {
    soft_backward_cuda(grad_image, means, sigmas, amps, saved, deterministic, composite, temperature, grad_means,
                       grad_sigmas, grad_amps);
    return {grad_means, grad_sigmas, grad_amps};
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool capturing = stream_is_capturing(stream);
  at::Tensor bad_index = flag_word(means, capturing);
  at::Tensor partials;  // the deterministic pass 1's output
  if (deterministic) partials = at::empty({kernels::deterministic_partials(batch, pixels, n_markers), kTerms}, means.options());
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "splat_backward_cuda", [&] {
    kernels::launch_backward(launcher(stream), deterministic, grad_image.const_data_ptr<scalar_t>(),
                             means.const_data_ptr<scalar_t>(), sigmas.const_data_ptr<scalar_t>(),
                             amps.const_data_ptr<scalar_t>(), saved.const_data_ptr<int32_t>(), batch, int(n_markers),
                             pixels, int(width), grad_means.mutable_data_ptr<scalar_t>(),
                             grad_sigmas.mutable_data_ptr<scalar_t>(), grad_amps.mutable_data_ptr<scalar_t>(),
                             deterministic ? reinterpret_cast<Terms<scalar_t>*>(partials.mutable_data_ptr<scalar_t>()) : nullptr,
                             bad_index.mutable_data_ptr<int32_t>());
  });
  // One host sync, as the input checks already need: a bad winner map fails loudly, as on CPU.
  if (!capturing) raise_bad_index(bad_index.item<int32_t>() != 0, n_markers);  // one host sync
  return {grad_means, grad_sigmas, grad_amps};
}

}  // namespace

TORCH_LIBRARY_IMPL(splatkern, CUDA, m) {
  m.impl("splat_forward", &splat_forward_cuda);
  m.impl("splat_backward", &splat_backward_cuda);
}

}  // namespace splatkern
