// Shared declarations of the splatkern op: input checks used by every C++ backend.
#pragma once

#include "splat_facts.h"

#include <torch/library.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <string>

namespace splatkern {

// Error messages are built from plain std::string pieces. c10::str with several arguments formats
// through a std::ostringstream compiled into this library, and where the extension's compiler is
// not the one torch was built with, throwing such a message can crash the process (SIGSEGV);
// single-string messages raise cleanly.
namespace text {
inline std::string piece(const char* s) { return s; }
inline std::string piece(const std::string& s) { return s; }
inline std::string piece(int64_t v) { return std::to_string(v); }
inline std::string piece(c10::ScalarType t) { return c10::toString(t); }
inline std::string piece(const c10::Device& d) { return d.str(); }
std::string piece(c10::IntArrayRef sizes);  // "[2, 3, 1]"
std::string number(double value);           // as many digits as tell it apart
}  // namespace text

template <typename... Pieces>
std::string message(const Pieces&... pieces) {
  return (std::string() + ... + text::piece(pieces));
}

// The primitives an op draws: its checks' errors name its op and arguments.
enum class Primitive { kMarkers, kStrokes };

// The mode the ops' `composite` argument names, or a ValueError naming the argument; also refuses a
// temperature that is not a finite number > 0 (read by smoothmax only, checked for every mode).
Composite parse_composite(c10::string_view composite, double temperature, Primitive primitive = Primitive::kMarkers);

// Raises the ValueError of the first flaw set in `flaws` (an OR of MarkerFlaw bits), in the words of
// the op that draws `primitive`; 0 passes.
void raise_marker_flaws(int32_t flaws, Primitive primitive = Primitive::kMarkers);

// The layout splat_forward takes: means [B, N, 2], sigmas [B, N], amps [B, N], one floating
// dtype, one device, contiguous, height/width >= 1. Values are each backend's to check (every value
// finite, sigmas > 0): the CPU before its kernel, CUDA inside its forward kernel (raise_marker_flaws).
// Errors name the argument and surface in Python as ValueError / TypeError.
void check_forward_layout(const at::Tensor& means, const at::Tensor& sigmas, const at::Tensor& amps,
                          int64_t height, int64_t width);

// The same for splat_backward, plus grad_image [B, H, W] of the inputs' dtype and the forward's
// `saved` (csrc/splat.cpp): for kMax the winner map [B, H, W] int32, for the soft composites their
// state [B, kSoftStatePlanes, H, W] of the inputs' dtype. The backward trusts the markers' values and
// a soft state (its forward made them); it checks that a winner map lies in [0, N) inside its
// kernel, since it gathers markers by it.
void check_backward_layout(const at::Tensor& grad_image, const at::Tensor& means, const at::Tensor& sigmas,
                           const at::Tensor& amps, const at::Tensor& saved, Composite composite);

// Raises the ValueError for a winner map that held a value outside [0, n_markers), when `found`, in
// the words of the primitive's backward op.
void raise_bad_index(bool found, int64_t n_markers, Primitive primitive = Primitive::kMarkers);

// stroke_forward's and stroke_backward's layouts: as the two above, with paths [B, S, P, 2] (P >= 1)
// and sigmas, amps [B, S, P] in place of the markers; the winner map of kMax lies in [0, S max(P - 1, 1)).
void check_stroke_forward_layout(const at::Tensor& paths, const at::Tensor& sigmas, const at::Tensor& amps,
                                 int64_t height, int64_t width);
void check_stroke_backward_layout(const at::Tensor& grad_image, const at::Tensor& paths, const at::Tensor& sigmas,
                                  const at::Tensor& amps, const at::Tensor& saved, Composite composite);

}  // namespace splatkern
