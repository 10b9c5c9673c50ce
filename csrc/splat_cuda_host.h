// What the CUDA host code of both ops (splat_cuda.cu, stroke_cuda.cu) shares: the value checks' flag
// word and the launches of the kernels on a stream.
#pragma once

#include "splat.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <limits>

namespace splatkern::cuda_host {

// The value checks' flag word is read back (one host sync) and raised on, except while the stream
// is being captured into a CUDA graph, where a sync is illegal: captured calls skip the check.
inline bool stream_is_capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

// The int32 word a kernel ORs its value-check flags into. A captured call never reads it, so it
// is left uninitialised there: one fill kernel fewer per graph replay.
inline at::Tensor flag_word(const at::Tensor& like, bool capturing) {
  const auto options = like.options().dtype(at::kInt);
  return capturing ? at::empty({1}, options) : at::zeros({1}, options);
}

// Grids are one-dimensional (blockIdx.x = image * tiles_per_image + tile) so the batch is not
// limited by gridDim.y/z (65535).
inline int64_t checked_grid(int64_t blocks, const char* op, const char* what) {
  TORCH_CHECK_VALUE(blocks <= std::numeric_limits<int32_t>::max(),
                    message(op, ": ", what, " needs more CUDA blocks (", blocks,
                            ") than one launch allows; split the batch"));
  return blocks;
}

// Launches `kernel` on `stream`, as the kernel headers' launch_* functions ask; `op` names the op in
// the error for a grid too large.
inline auto launcher(cudaStream_t stream, const char* op) {
  return [stream, op](const char* what, auto kernel, int64_t blocks, dim3 threads, auto... args) {
    kernel<<<checked_grid(blocks, op, what), threads, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
}

}  // namespace splatkern::cuda_host
