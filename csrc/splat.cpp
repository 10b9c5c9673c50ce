// The op's schema, defined once, and the input checks every C++ kernel runs.
// Kernels register per dispatch key elsewhere: splat_cpu.cpp (CPU), splat_cuda.cu (CUDA).
#include "splat.h"

#include <Python.h>
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <iterator>


// Importing the built module (splatkern._C) runs the static registrations below.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace splatkern {

namespace text {
std::string number(double value) {
  char out[32];
  std::snprintf(out, sizeof out, "%.17g", value);
  return out;
}

std::string piece(c10::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t k = 0; k < sizes.size(); ++k) out += (k ? ", " : "") + std::to_string(sizes[k]);
  return out + "]";
}
}  // namespace text

void raise_marker_flaws(int32_t flaws) {
  for (size_t bit = 0; bit < std::size(kFlawMessages); ++bit) {
    TORCH_CHECK_VALUE(!(flaws >> bit & 1), kFlawMessages[bit]);
  }
}

Composite parse_composite(c10::string_view composite, double temperature) {
  int32_t mode = 0;
  while (mode < int32_t(std::size(kCompositeNames)) && composite != kCompositeNames[mode]) ++mode;
  TORCH_CHECK_VALUE(mode < int32_t(std::size(kCompositeNames)),
                    message(kUnknownComposite, ", got '", std::string(composite), "'"));
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0,
                    message(kBadTemperature, ", got ", text::number(temperature)));
  return static_cast<Composite>(mode);
}

void raise_bad_index(bool found, int64_t n_markers) {
  TORCH_CHECK_VALUE(!found, message(kBadIndexBefore, n_markers, kBadIndexAfter));
}

namespace {

void check_marker_layout(const at::Tensor& means, const at::Tensor& sigmas, const at::Tensor& amps) {
  TORCH_CHECK_VALUE(means.dim() == 3 && means.size(2) == 2,
                    message("splat_render: means must have shape [B, N, 2], got ", means.sizes()));
  TORCH_CHECK_VALUE(sigmas.dim() == 2 && sigmas.size(0) == means.size(0) && sigmas.size(1) == means.size(1),
                    message("splat_render: sigmas must have shape [B, N] = ", means.sizes().slice(0, 2), ", got ",
                            sigmas.sizes()));
  TORCH_CHECK_VALUE(amps.sizes() == sigmas.sizes(), message("splat_render: amps must have shape [B, N] = ",
                                                            sigmas.sizes(), ", got ", amps.sizes()));
  TORCH_CHECK_TYPE(means.scalar_type() == at::kFloat || means.scalar_type() == at::kDouble,
                   message("splat_render: the kernels take float32 or float64 means, got ", means.scalar_type()));
  TORCH_CHECK_TYPE(sigmas.scalar_type() == means.scalar_type() && amps.scalar_type() == means.scalar_type(),
                   message("splat_render: means, sigmas and amps must share one dtype, got ", means.scalar_type(),
                           ", ", sigmas.scalar_type(), ", ", amps.scalar_type()));
  TORCH_CHECK_VALUE(sigmas.device() == means.device() && amps.device() == means.device(),
                    message("splat_render: means, sigmas and amps must be on one device, got ", means.device(),
                            ", ", sigmas.device(), ", ", amps.device()));
  TORCH_CHECK_VALUE(means.is_contiguous() && sigmas.is_contiguous() && amps.is_contiguous(),
                    "splat_render: the kernels take contiguous tensors");
}

}  // namespace

void check_forward_layout(const at::Tensor& means, const at::Tensor& sigmas, const at::Tensor& amps,
                          int64_t height, int64_t width) {
  TORCH_CHECK_VALUE(height >= 1 && width >= 1,
                    message("splat_render: height and width must be >= 1, got ", height, " x ", width));
  check_marker_layout(means, sigmas, amps);
}

void check_backward_layout(const at::Tensor& grad_image, const at::Tensor& means, const at::Tensor& sigmas,
                           const at::Tensor& amps, const at::Tensor& saved, Composite composite) {
  check_marker_layout(means, sigmas, amps);
  TORCH_CHECK_VALUE(grad_image.dim() == 3 && grad_image.size(0) == means.size(0),
                    message("splat_backward: grad_image must have shape [B, H, W], got ", grad_image.sizes()));
  TORCH_CHECK_TYPE(grad_image.scalar_type() == means.scalar_type(),
                   "splat_backward: grad_image must have the dtype of means");
  if (composite != kMax) {  // `saved` is the soft state
    const int64_t height = grad_image.size(1), width = grad_image.size(2);
    TORCH_CHECK_VALUE(saved.dim() == 4 && saved.size(0) == means.size(0) && saved.size(1) == kSoftStatePlanes &&
                          saved.size(2) == height && saved.size(3) == width,
                      message("splat_backward: the soft state must have shape [B, ", kSoftStatePlanes,
                              ", H, W] for grad_image ", grad_image.sizes(), ", got ", saved.sizes()));
    TORCH_CHECK_TYPE(saved.scalar_type() == means.scalar_type(),
                     "splat_backward: the soft state must have the dtype of means");
    TORCH_CHECK_VALUE(grad_image.device() == means.device() && saved.device() == means.device(),
                      "splat_backward: all tensors must be on one device");
    TORCH_CHECK_VALUE(grad_image.is_contiguous() && saved.is_contiguous(),
                      "splat_backward: the kernels take contiguous tensors");
    return;
  }
  TORCH_CHECK_VALUE(saved.sizes() == grad_image.sizes(),
                    message("splat_backward: index must have the shape of grad_image ", grad_image.sizes(),
                            ", got ", saved.sizes()));
  TORCH_CHECK_TYPE(saved.scalar_type() == at::kInt, "splat_backward: index must be int32");
  TORCH_CHECK_VALUE(grad_image.device() == means.device() && saved.device() == means.device(),
                    "splat_backward: all tensors must be on one device");
  TORCH_CHECK_VALUE(grad_image.is_contiguous() && saved.is_contiguous(),
                    "splat_backward: the kernels take contiguous tensors");
}

TORCH_LIBRARY(splatkern, m) {
  // Flattened batch: means [B, N, 2], sigmas/amps [B, N] -> image [B, H, W] and `saved`, what the
  // backward reads besides the markers:
  // - composite "max": the int32 winner map [B, H, W] (the public op's index), -1 where N = 0;
  // - the soft composites: their per-pixel state [B, kSoftStatePlanes = 2, H, W] in the markers' dtype,
  //   O(B H W) memory that spares the backward a pass over the markers to rebuild it. With v_n the
  //   marker values at a pixel:
  //     softor, over: plane 0 Q = the product of the factors (1 - v_n) that are not 0 (1 if none);
  //       plane 1 Z = how many are 0 (v_n = 1 exactly), a whole number in the dtype. Then
  //       d out / d v_n = Q / (1 - v_n) if Z = 0; Q for the marker with v_n = 1 if Z = 1; else 0.
  //     smoothmax: plane 0 L = M + t log sum_n exp((v_n - M) / t), t times the log-sum-exp of v / t
  //       (M the max of all N values, 0 included for a marker that is 0 there); plane 1 the image
  //       value out. Then w_n = exp((v_n - L) / t) and d out / d v_n = w_n (1 + (v_n - out) / t).
  //   With N = 0 the state is all zeros and nothing reads it.
  // `deterministic` asks the backward of GPU backends for a bit-reproducible reduction; the CPU
  // kernel is always deterministic. It sits in the forward schema so autograd can pass it on, as do
  // `composite` and `temperature` (read by smoothmax only).
  // splat_backward trusts the markers' values and a soft state (its forward made them) but not a
  // winner map, which it gathers by for "max": a value outside [0, N) raises.
  m.def("splat_forward(Tensor means, Tensor sigmas, Tensor amps, int height, int width, bool deterministic, "
        "str composite=\"max\", float temperature=1.0) -> (Tensor image, Tensor saved)");
  m.def("splat_backward(Tensor grad_image, Tensor means, Tensor sigmas, Tensor amps, Tensor saved, "
        "bool deterministic, str composite=\"max\", float temperature=1.0) "
        "-> (Tensor grad_means, Tensor grad_sigmas, Tensor grad_amps)");
}

}  // namespace splatkern
