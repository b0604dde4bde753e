// Autograd of ctc_loss. The forward (grad_now) already wrote d(loss)/d(log_probs) for grad_output = 1
// (per sample for 'none'); backward scales it by grad_output, in place when it can. Without grad_now
// (the forward ran where the gradient was not known to be wanted) backward runs the op again for it.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd/autograd_common.h"

namespace fastloss {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using CtcSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t,
                                          bool, bool);
FASTLOSS_OP(ctc_op, "fastloss::_ctc_loss_forward", CtcSig)

class CtcFn : public torch::autograd::Function<CtcFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& log_probs, const Tensor& targets,
                               const Tensor& input_lengths, const Tensor& target_lengths, int64_t blank,
                               int64_t reduction, bool zero_infinity, bool grad_now, variable_list* aux) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, grad] =
        ctc_op().call(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, grad_now);
    ctx->set_materialize_grads(false);
    ctx->saved_data["blank"] = blank;
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["zero_infinity"] = zero_infinity;
    ctx->saved_data["grad_now"] = grad_now;
    ctx->save_for_backward({log_probs, targets, input_lengths, target_lengths, grad});
    *aux = {grad};
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_double_backward("ctc_loss");
    variable_list out(9);  // one per forward argument, aux included
    const Tensor& grad_loss = grads[0];
    if (!grad_loss.defined() || !ctx->needs_input_grad(0)) return out;
    auto saved = ctx->get_saved_variables();
    Tensor grad = saved[4];
    if (!ctx->saved_data["grad_now"].toBool()) {
      at::AutoDispatchBelowADInplaceOrView below;
      grad = std::get<1>(ctc_op().call(saved[0], saved[1], saved[2], saved[3], ctx->saved_data["blank"].toInt(),
                                       ctx->saved_data["reduction"].toInt(), ctx->saved_data["zero_infinity"].toBool(),
                                       true));
    }
    if (ctx->saved_data["reduction"].toInt() == 0) {
      // one factor per (t, n) row of C classes: grad_output[n] repeated over t
      const int64_t T = grad.size(0), N = grad.size(1);
      out[0] = scale_saved_grad(grad, grad_loss.reshape({1, N}).expand({T, N}).contiguous(), grad.size(2), 1);
    } else {
      out[0] = scale_saved_grad(grad, grad_loss, 1, 1);
    }
    return out;
  }
};

std::tuple<Tensor, Tensor> ctc_autograd(const Tensor& log_probs, const Tensor& targets, const Tensor& input_lengths,
                                        const Tensor& target_lengths, int64_t blank, int64_t reduction,
                                        bool zero_infinity, bool grad_now) {
  if (!records_graph(log_probs, targets, input_lengths, target_lengths))
    return call_below_autograd(ctc_op(), log_probs, targets, input_lengths, target_lengths, blank, reduction,
                               zero_infinity, grad_now);
  return apply_with_aux<CtcFn, 1>(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity,
                                  grad_now);
}

// fastloss::ctc_loss, the public op: grad_now (the gradient in the forward) when log_probs will need it.
template <bool Autograd>
Tensor ctc_public(const Tensor& log_probs, const Tensor& targets, const Tensor& input_lengths,
                  const Tensor& target_lengths, int64_t blank, int64_t reduction, bool zero_infinity) {
  const bool grad_now = Autograd && at::GradMode::is_enabled() && log_probs.requires_grad();
  if (Autograd)
    return std::get<0>(
        ctc_autograd(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity, grad_now));
  return std::get<0>(call_below_autograd(ctc_op(), log_probs, targets, input_lengths, target_lengths, blank, reduction,
                                         zero_infinity, false));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CompositeExplicitAutograd, m) { m.impl("ctc_loss", &ctc_public<false>); }

TORCH_LIBRARY_IMPL(fastloss, Autograd, m) {
  m.impl("ctc_loss", &ctc_public<true>);
  m.impl("_ctc_loss_forward", &ctc_autograd);
}

}  // namespace fastloss
