// Autograd for the C++ kernels, registered on the ops' Autograd key: the backward of splat_forward
// is splat_backward, which has no derivative of its own. In C++ rather than through
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

const auto& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("splatkern::splat_forward", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                       const at::Tensor&, int64_t, int64_t, bool,
                                                                       c10::string_view, double)>();
  return op;
}

const auto& backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("splatkern::splat_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                                 const at::Tensor&, const at::Tensor&, bool,
                                                                 c10::string_view, double)>();
  return op;
}

class SplatRender : public torch::autograd::Function<SplatRender> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& means, const at::Tensor& sigmas,
                               const at::Tensor& amps, int64_t height, int64_t width, bool deterministic,
                               c10::string_view composite, double temperature) {
    // Below the Autograd key, or this kernel would call itself.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [image, saved] = forward_op().call(means, sigmas, amps, height, width, deterministic, composite, temperature);
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
    auto [grad_means, grad_sigmas, grad_amps] = backward_op().call(
        grad_image.contiguous(), saved[0], saved[1], saved[2], saved[3], ctx->saved_data["deterministic"].toBool(),
        ctx->saved_data["composite"].toStringRef(), ctx->saved_data["temperature"].toDouble());
    return {grad_means, grad_sigmas, grad_amps, undefined(), undefined(), undefined(), undefined(), undefined()};
  }
};

// The backward op's own autograd: its derivative is not implemented, and without this node a
// double backward (create_graph=True) would run and be silently wrong, with only a warning.
class SplatRenderBackward : public torch::autograd::Function<SplatRenderBackward> {
 public:
  static variable_list forward(AutogradContext*, const at::Tensor& grad_image, const at::Tensor& means,
                               const at::Tensor& sigmas, const at::Tensor& amps, const at::Tensor& saved,
                               bool deterministic, c10::string_view composite, double temperature) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [grad_means, grad_sigmas, grad_amps] =
        backward_op().call(grad_image, means, sigmas, amps, saved, deterministic, composite, temperature);
    return {grad_means, grad_sigmas, grad_amps};
  }

  static variable_list backward(AutogradContext*, variable_list) {
    TORCH_CHECK_NOT_IMPLEMENTED(false, kNoDoubleBackward);
    return {};
  }
};

std::tuple<at::Tensor, at::Tensor> splat_forward_autograd(const at::Tensor& means, const at::Tensor& sigmas,
                                                          const at::Tensor& amps, int64_t height, int64_t width,
                                                          bool deterministic, c10::string_view composite,
                                                          double temperature) {
  const variable_list outputs =
      SplatRender::apply(means, sigmas, amps, height, width, deterministic, composite, temperature);
  return {outputs[0], outputs[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> splat_backward_autograd(const at::Tensor& grad_image,
                                                                       const at::Tensor& means, const at::Tensor& sigmas,
                                                                       const at::Tensor& amps, const at::Tensor& saved,
                                                                       bool deterministic, c10::string_view composite,
                                                                       double temperature) {
  const variable_list grads =
      SplatRenderBackward::apply(grad_image, means, sigmas, amps, saved, deterministic, composite, temperature);
  return {grads[0], grads[1], grads[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(splatkern, Autograd, m) {
  m.impl("splat_forward", &splat_forward_autograd);
  m.impl("splat_backward", &splat_backward_autograd);
}

}  // namespace splatkern
