// Autograd for the C++ kernels, registered on the ops' Autograd key: the backward of splat_forward
// is splat_backward, which has no derivative of its own; stroke_forward and stroke_backward, which
// share their signatures, pair up the same way. In C++ rather than through
// torch.library.register_autograd, whose Python wrapper costs more host time per call than the
// kernels take at small sizes. The Triton backend's autograd is the same rule in Python
// (splatkern/ops.py).
#include "splat.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

namespace splatkern {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor undefined() { return {}; }

// The forward/backward op pair of one primitive.
struct MarkerOps {
  static constexpr const char* kForward = "splatkern::splat_forward";
  static constexpr const char* kBackward = "splatkern::splat_backward";
};
struct StrokeOps {
  static constexpr const char* kForward = "splatkern::stroke_forward";
  static constexpr const char* kBackward = "splatkern::stroke_backward";
};

template <typename Ops>
const auto& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow(Ops::kForward, "")
                             .template typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       const at::Tensor&, int64_t, int64_t, bool,
                                                                       c10::string_view, double)>();
  return op;
}

template <typename Ops>
const auto& backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow(Ops::kBackward, "")
          .template typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const at::Tensor&, bool,
                                                                 c10::string_view, double)>();
  return op;
}

template <typename Ops>
class Render : public torch::autograd::Function<Render<Ops>> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& means, const at::Tensor& sigmas,
                               const at::Tensor& amps, int64_t height, int64_t width, bool deterministic,
                               c10::string_view composite, double temperature) {
    // Below the Autograd key, or this kernel would call itself.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [image, saved] = forward_op<Ops>().call(means, sigmas, amps, height, width, deterministic, composite, temperature);
    ctx->save_for_backward({means, sigmas, amps, saved});
    ctx->saved_data["deterministic"] = deterministic;
    ctx->saved_data["composite"] = std::string(composite);
    ctx->saved_data["temperature"] = temperature;
    ctx->mark_non_differentiable({saved});
    // Otherwise autograd zero-fills a gradient for `saved` on every backward.
    ctx->set_materialize_grads(false);
    return {image, saved};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const at::Tensor& grad_image = grad_outputs[0];
    if (!grad_image.defined()) {  // the image took no part in the loss
      return variable_list(8);
    }
    const variable_list saved = ctx->get_saved_variables();
    auto [grad_means, grad_sigmas, grad_amps] = backward_op<Ops>().call(
        grad_image.contiguous(), saved[0], saved[1], saved[2], saved[3], ctx->saved_data["deterministic"].toBool(),
        ctx->saved_data["composite"].toStringRef(), ctx->saved_data["temperature"].toDouble());
    return {grad_means, grad_sigmas, grad_amps, undefined(), undefined(), undefined(), undefined(), undefined()};
  }
};

// The backward op's own autograd: its derivative is not implemented, and without this node a
// double backward (create_graph=True) would run and be silently wrong, with only a warning.
template <typename Ops>
class RenderBackward : public torch::autograd::Function<RenderBackward<Ops>> {
 public:
  static variable_list forward(AutogradContext*, const at::Tensor& grad_image, const at::Tensor& means,
                               const at::Tensor& sigmas, const at::Tensor& amps, const at::Tensor& saved,
                               bool deterministic, c10::string_view composite, double temperature) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_means, grad_sigmas, grad_amps] =
        backward_op<Ops>().call(grad_image, means, sigmas, amps, saved, deterministic, composite, temperature);
    return {grad_means, grad_sigmas, grad_amps};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false, kNoDoubleBackward);
    return {};
  }
};

template <typename Ops>
std::tuple<at::Tensor, at::Tensor> forward_autograd(const at::Tensor& means, const at::Tensor& sigmas,
                                                          const at::Tensor& amps, int64_t height, int64_t width,
                                                          bool deterministic, c10::string_view composite,
                                                          double temperature) {
  const variable_list outputs =
      Render<Ops>::apply(means, sigmas, amps, height, width, deterministic, composite, temperature);
  return {outputs[0], outputs[1]};
}

template <typename Ops>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_autograd(const at::Tensor& grad_image,
                                                                       const at::Tensor& means, const at::Tensor& sigmas,
                                                                       const at::Tensor& amps, const at::Tensor& saved,
                                                                       bool deterministic, c10::string_view composite,
                                                                       double temperature) {
  const variable_list grads =
      RenderBackward<Ops>::apply(grad_image, means, sigmas, amps, saved, deterministic, composite, temperature);
  return {grads[0], grads[1], grads[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(splatkern, Autograd, m) {
  m.impl("splat_forward", &forward_autograd<MarkerOps>);
  m.impl("splat_backward", &backward_autograd<MarkerOps>);
  m.impl("stroke_forward", &forward_autograd<StrokeOps>);
  m.impl("stroke_backward", &backward_autograd<StrokeOps>);
}

}  // namespace splatkern
