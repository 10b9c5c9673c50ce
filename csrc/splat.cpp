// The op's schema, defined once, and the input checks every C++ kernel runs.
// Kernels register per dispatch key elsewhere: splat_cpu.cpp (CPU), splat_cuda.cu (CUDA).
#include "splat.h"

#include <Python.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>


// Importing the built module (splatkern._C) runs the static registrations below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace splatkern {

namespace {

struct MarkerFlaws {
  bool means_nonfinite, sigmas_nonfinite, sigmas_nonpositive, amps_nonfinite;
};

// Any device: ATen reductions, read back with one host sync.
MarkerFlaws find_flaws(const at::Tensor& means, const at::Tensor& sigmas, const at::Tensor& amps) {
  const at::Tensor flags = at::stack({at::isfinite(means).all().logical_not(),
                                      at::isfinite(sigmas).all().logical_not(), (sigmas <= 0).any(),
                                      at::isfinite(amps).all().logical_not()})
                               .cpu();
  const bool* f = flags.const_data_ptr<bool>();
  return {f[0], f[1], f[2], f[3]};
}

// CPU: plain passes, without the launch overhead of eight small ATen ops on tiny inputs. x - x is
// 0 exactly for finite x (NaN for NaN and inf); the integer AND keeps the loops vectorisable.
template <typename scalar_t>
bool all_finite(const scalar_t* x, int64_t count) {
  int32_t finite = 1;
  for (int64_t k = 0; k < count; ++k) finite &= static_cast<int32_t>(x[k] - x[k] == scalar_t(0));
  return finite;
}

template <typename scalar_t>
bool all_positive(const scalar_t* x, int64_t count) {
  int32_t positive = 1;
  for (int64_t k = 0; k < count; ++k) positive &= static_cast<int32_t>(x[k] > scalar_t(0));
  return positive;
}

MarkerFlaws find_flaws_cpu(const at::Tensor& means, const at::Tensor& sigmas, const at::Tensor& amps) {
  MarkerFlaws flaws{};
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "splat_find_flaws", [&] {
    const scalar_t* s = sigmas.const_data_ptr<scalar_t>();
    flaws = {!all_finite(means.const_data_ptr<scalar_t>(), means.numel()), !all_finite(s, sigmas.numel()),
             !all_positive(s, sigmas.numel()), !all_finite(amps.const_data_ptr<scalar_t>(), amps.numel())};
  });
  return flaws;
}

void check_markers(const at::Tensor& means, const at::Tensor& sigmas, const at::Tensor& amps) {
  TORCH_CHECK_VALUE(means.dim() == 3 && means.size(2) == 2,
                    "splat_render: means must have shape [B, N, 2], got ", means.sizes());
  TORCH_CHECK_VALUE(sigmas.dim() == 2 && sigmas.size(0) == means.size(0) && sigmas.size(1) == means.size(1),
                    "splat_render: sigmas must have shape [B, N] = ", means.sizes().slice(0, 2),
                    ", got ", sigmas.sizes());
  TORCH_CHECK_VALUE(amps.sizes() == sigmas.sizes(),
                    "splat_render: amps must have shape [B, N] = ", sigmas.sizes(), ", got ", amps.sizes());
  TORCH_CHECK_TYPE(means.scalar_type() == at::kFloat || means.scalar_type() == at::kDouble,
                   "splat_render: the kernels take float32 or float64 means, got ", means.scalar_type());
  TORCH_CHECK_TYPE(sigmas.scalar_type() == means.scalar_type() && amps.scalar_type() == means.scalar_type(),
                   "splat_render: means, sigmas and amps must share one dtype, got ", means.scalar_type(),
                   ", ", sigmas.scalar_type(), ", ", amps.scalar_type());
  TORCH_CHECK_VALUE(sigmas.device() == means.device() && amps.device() == means.device(),
                    "splat_render: means, sigmas and amps must be on one device, got ", means.device(),
                    ", ", sigmas.device(), ", ", amps.device());
  TORCH_CHECK_VALUE(means.is_contiguous() && sigmas.is_contiguous() && amps.is_contiguous(),
                    "splat_render: the kernels take contiguous tensors");
  const MarkerFlaws flaws = means.is_cpu() ? find_flaws_cpu(means, sigmas, amps) : find_flaws(means, sigmas, amps);
  TORCH_CHECK_VALUE(!flaws.means_nonfinite, "splat_render: means must be finite (found NaN or inf)");
  TORCH_CHECK_VALUE(!flaws.sigmas_nonfinite, "splat_render: sigmas must be finite (found NaN or inf)");
  TORCH_CHECK_VALUE(!flaws.sigmas_nonpositive, "splat_render: sigmas must be > 0 (found a value <= 0)");
  TORCH_CHECK_VALUE(!flaws.amps_nonfinite, "splat_render: amps must be finite (found NaN or inf)");
}

}  // namespace

void check_forward_inputs(const at::Tensor& means, const at::Tensor& sigmas, const at::Tensor& amps,
                          int64_t height, int64_t width) {
  TORCH_CHECK_VALUE(height >= 1 && width >= 1, "splat_render: height and width must be >= 1, got ",
                    height, " x ", width);
  check_markers(means, sigmas, amps);
}

void check_backward_inputs(const at::Tensor& grad_image, const at::Tensor& means,
                           const at::Tensor& sigmas, const at::Tensor& amps, const at::Tensor& index) {
  check_markers(means, sigmas, amps);
  TORCH_CHECK_VALUE(grad_image.dim() == 3 && grad_image.size(0) == means.size(0),
                    "splat_backward: grad_image must have shape [B, H, W], got ", grad_image.sizes());
  TORCH_CHECK_VALUE(index.sizes() == grad_image.sizes(), "splat_backward: index must have the shape of grad_image ",
                    grad_image.sizes(), ", got ", index.sizes());
  TORCH_CHECK_TYPE(grad_image.scalar_type() == means.scalar_type(),
                   "splat_backward: grad_image must have the dtype of means");
  TORCH_CHECK_TYPE(index.scalar_type() == at::kInt, "splat_backward: index must be int32");
  TORCH_CHECK_VALUE(grad_image.device() == means.device() && index.device() == means.device(),
                    "splat_backward: all tensors must be on one device");
  TORCH_CHECK_VALUE(grad_image.is_contiguous() && index.is_contiguous(),
                    "splat_backward: the kernels take contiguous tensors");
}

TORCH_LIBRARY(splatkern, m) {
  // Flattened batch: means [B, N, 2], sigmas/amps [B, N] -> image [B, H, W], index [B, H, W] int32.
  // `deterministic` asks the backward of GPU backends for a bit-reproducible reduction; the CPU
  // kernel is always deterministic. It sits in the forward schema so autograd can pass it on.
  m.def("splat_forward(Tensor means, Tensor sigmas, Tensor amps, int height, int width, bool deterministic) "
        "-> (Tensor image, Tensor index)");
  m.def("splat_backward(Tensor grad_image, Tensor means, Tensor sigmas, Tensor amps, Tensor index, "
        "bool deterministic) -> (Tensor grad_means, Tensor grad_sigmas, Tensor grad_amps)");
}

}  // namespace splatkern
