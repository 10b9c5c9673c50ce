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

namespace {

// The words of the op that draws a primitive: its name, its backward's, its coordinates argument and
// their shape, and its per-primitive arguments' shape.
struct OpWords {
  const char* op;
  const char* backward;
  const char* points;
  const char* points_shape;
  const char* per_primitive_shape;
  int64_t point_dims;  // primitive dims after B: 1 (N) or 2 (S, P)
};

const OpWords& words(Primitive primitive) {
  static const OpWords markers{"splat_render", "splat_backward", "means", "[B, N, 2]", "[B, N]", 1};
  static const OpWords strokes{"stroke_render", "stroke_backward", "paths", "[B, S, P, 2]", "[B, S, P]", 2};
  return primitive == Primitive::kMarkers ? markers : strokes;
}

}  // namespace

void raise_marker_flaws(int32_t flaws, Primitive primitive) {
  const auto& messages = primitive == Primitive::kMarkers ? kFlawMessages : kStrokeFlawMessages;
  for (size_t bit = 0; bit < std::size(messages); ++bit) {
    TORCH_CHECK_VALUE(!(flaws >> bit & 1), messages[bit]);
  }
}

Composite parse_composite(c10::string_view composite, double temperature, Primitive primitive) {
  const char* op = words(primitive).op;
  int32_t mode = 0;
  while (mode < int32_t(std::size(kCompositeNames)) && composite != kCompositeNames[mode]) ++mode;
  TORCH_CHECK_VALUE(mode < int32_t(std::size(kCompositeNames)),
                    message(op, ": ", kUnknownComposite, ", got '", std::string(composite), "'"));
  TORCH_CHECK_VALUE(std::isfinite(temperature) && temperature > 0,
                    message(op, ": ", kBadTemperature, ", got ", text::number(temperature)));
  return static_cast<Composite>(mode);
}

void raise_bad_index(bool found, int64_t n_markers, Primitive primitive) {
  TORCH_CHECK_VALUE(!found, message(words(primitive).backward, ": ", kBadIndexBefore, n_markers, kBadIndexAfter));
}

namespace {

void check_primitive_layout(Primitive primitive, const at::Tensor& points, const at::Tensor& sigmas,
                            const at::Tensor& amps) {
  const OpWords& w = words(primitive);
  const int64_t dims = w.point_dims + 1;  // B and the primitive dims
  TORCH_CHECK_VALUE(points.dim() == dims + 1 && points.size(dims) == 2 && (dims == 2 || points.size(2) >= 1),
                    message(w.op, ": ", w.points, " must have shape ", w.points_shape,
                            dims == 2 ? "" : " with P >= 1", ", got ", points.sizes()));
  TORCH_CHECK_VALUE(sigmas.sizes() == points.sizes().slice(0, dims),
                    message(w.op, ": sigmas must have shape ", w.per_primitive_shape, " = ",
                            points.sizes().slice(0, dims), ", got ", sigmas.sizes()));
  TORCH_CHECK_VALUE(amps.sizes() == sigmas.sizes(), message(w.op, ": amps must have shape ", w.per_primitive_shape,
                                                            " = ", sigmas.sizes(), ", got ", amps.sizes()));
  TORCH_CHECK_TYPE(points.scalar_type() == at::kFloat || points.scalar_type() == at::kDouble,
                   message(w.op, ": the kernels take float32 or float64 ", w.points, ", got ", points.scalar_type()));
  TORCH_CHECK_TYPE(sigmas.scalar_type() == points.scalar_type() && amps.scalar_type() == points.scalar_type(),
                   message(w.op, ": ", w.points, ", sigmas and amps must share one dtype, got ", points.scalar_type(),
                           ", ", sigmas.scalar_type(), ", ", amps.scalar_type()));
  TORCH_CHECK_VALUE(sigmas.device() == points.device() && amps.device() == points.device(),
                    message(w.op, ": ", w.points, ", sigmas and amps must be on one device, got ", points.device(),
                            ", ", sigmas.device(), ", ", amps.device()));
  TORCH_CHECK_VALUE(points.is_contiguous() && sigmas.is_contiguous() && amps.is_contiguous(),
                    message(w.op, ": the kernels take contiguous tensors"));
}

void check_canvas(Primitive primitive, int64_t height, int64_t width) {
  TORCH_CHECK_VALUE(height >= 1 && width >= 1,
                    message(words(primitive).op, ": height and width must be >= 1, got ", height, " x ", width));
}

void check_backward(Primitive primitive, const at::Tensor& grad_image, const at::Tensor& points,
                    const at::Tensor& sigmas, const at::Tensor& amps, const at::Tensor& saved, Composite composite) {
  const OpWords& w = words(primitive);
  check_primitive_layout(primitive, points, sigmas, amps);
  TORCH_CHECK_VALUE(grad_image.dim() == 3 && grad_image.size(0) == points.size(0),
                    message(w.backward, ": grad_image must have shape [B, H, W], got ", grad_image.sizes()));
  TORCH_CHECK_TYPE(grad_image.scalar_type() == points.scalar_type(),
                   message(w.backward, ": grad_image must have the dtype of ", w.points));
  TORCH_CHECK_VALUE(grad_image.device() == points.device() && saved.device() == points.device(),
                    message(w.backward, ": all tensors must be on one device"));
  TORCH_CHECK_VALUE(grad_image.is_contiguous() && saved.is_contiguous(),
                    message(w.backward, ": the kernels take contiguous tensors"));
  if (composite != kMax) {  // `saved` is the soft state
    const int64_t height = grad_image.size(1), width = grad_image.size(2);
    TORCH_CHECK_VALUE(saved.dim() == 4 && saved.size(0) == points.size(0) && saved.size(1) == kSoftStatePlanes &&
                          saved.size(2) == height && saved.size(3) == width,
                      message(w.backward, ": the soft state must have shape [B, ", kSoftStatePlanes,
                              ", H, W] for grad_image ", grad_image.sizes(), ", got ", saved.sizes()));
    TORCH_CHECK_TYPE(saved.scalar_type() == points.scalar_type(),
                     message(w.backward, ": the soft state must have the dtype of ", w.points));
    return;
  }
  TORCH_CHECK_VALUE(saved.sizes() == grad_image.sizes(),
                    message(w.backward, ": index must have the shape of grad_image ", grad_image.sizes(), ", got ",
                            saved.sizes()));
  TORCH_CHECK_TYPE(saved.scalar_type() == at::kInt, message(w.backward, ": index must be int32"));
}

}  // namespace

void check_forward_layout(const at::Tensor& means, const at::Tensor& sigmas, const at::Tensor& amps,
                          int64_t height, int64_t width) {
  check_canvas(Primitive::kMarkers, height, width);
  check_primitive_layout(Primitive::kMarkers, means, sigmas, amps);
}

void check_backward_layout(const at::Tensor& grad_image, const at::Tensor& means, const at::Tensor& sigmas,
                           const at::Tensor& amps, const at::Tensor& saved, Composite composite) {
  check_backward(Primitive::kMarkers, grad_image, means, sigmas, amps, saved, composite);
}

void check_stroke_forward_layout(const at::Tensor& paths, const at::Tensor& sigmas, const at::Tensor& amps,
                                 int64_t height, int64_t width) {
  check_canvas(Primitive::kStrokes, height, width);
  check_primitive_layout(Primitive::kStrokes, paths, sigmas, amps);
}

void check_stroke_backward_layout(const at::Tensor& grad_image, const at::Tensor& paths, const at::Tensor& sigmas,
                                  const at::Tensor& amps, const at::Tensor& saved, Composite composite) {
  check_backward(Primitive::kStrokes, grad_image, paths, sigmas, amps, saved, composite);
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
  // stroke_render's pair (splatkern/stroke_reference.py), in the same conventions: paths [B, S, P, 2]
  // and sigmas/amps [B, S, P] in place of the markers, a stroke playing a marker's part. Its `saved`
  // is, for "max", the winner map of s max(P - 1, 1) + k (stroke s, its segment k), and for the soft
  // composites the state above with the strokes' values as the v_n.
  m.def("stroke_forward(Tensor paths, Tensor sigmas, Tensor amps, int height, int width, bool deterministic, "
        "str composite=\"max\", float temperature=1.0) -> (Tensor image, Tensor saved)");
  m.def("stroke_backward(Tensor grad_image, Tensor paths, Tensor sigmas, Tensor amps, Tensor saved, "
        "bool deterministic, str composite=\"max\", float temperature=1.0) "
        "-> (Tensor grad_paths, Tensor grad_sigmas, Tensor grad_amps)");
}

}  // namespace splatkern
