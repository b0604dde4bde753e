// Autograd of the cross_entropy family, for every device (TORCH_LIBRARY_IMPL(fastloss, Autograd)).
//   cross_entropy: the forward op already computed d(loss)/d(input) (compute_grad); backward scales
//     it by grad_output (autograd/autograd_common.cpp). Probability targets: d/d(target) by its own
//     op; d/d(weight) (torch differentiates weight only there) composed of ATen ops -- documented,
//     and it materializes input-sized temporaries, but only in this rare case.
//   nll_loss: backward op writes the gradient (zeros but one entry per row).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd/autograd_common.h"
#include "ops/cross_entropy.h"

namespace fastloss {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using CeSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const std::optional<Tensor>&, int64_t,
                                                 int64_t, double, bool, bool, std::optional<c10::ScalarType>);
using CeTargetBwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&, int64_t,
                              double);
using NllSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const std::optional<Tensor>&, int64_t, int64_t,
                                          std::optional<c10::ScalarType>);
using NllBwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&, int64_t, int64_t,
                         const Tensor&);
FASTLOSS_OP(ce_op, "fastloss::_cross_entropy_forward", CeSig)
FASTLOSS_OP(ce_target_bwd_op, "fastloss::_cross_entropy_target_backward", CeTargetBwdSig)
FASTLOSS_OP(nll_op, "fastloss::nll_loss", NllSig)
FASTLOSS_OP(nll_bwd_op, "fastloss::nll_loss_backward", NllBwdSig)

// d(loss)/d(w_c) for probability targets: sum over rows of g_r * scale * t'_rc * (lse_r - x_rc).
Tensor prob_weight_grad(const Tensor& grad_loss, const Tensor& input, const Tensor& target, const Tensor& lse,
                        int64_t reduction, double eps) {
  const ClassView v = class_view(input);
  const auto adt = lse.scalar_type();
  Tensor x = input.reshape({v.outer, v.classes, v.inner}).to(adt);
  Tensor t = target.reshape({v.outer, v.classes, v.inner}).to(adt) * (1.0 - eps) + eps / double(v.classes);
  Tensor g = grad_loss.to(adt);
  g = g.numel() > 1 ? g.reshape({v.outer, 1, v.inner}) : g.reshape({});
  if (reduction == static_cast<int64_t>(Reduction::Mean))
    g = input.numel() ? g / double(v.rows()) : g * std::numeric_limits<double>::quiet_NaN();
  return (t * (lse.reshape({v.outer, 1, v.inner}) - x) * g).sum(at::IntArrayRef{0, 2}).to(input.scalar_type());
}

class CrossEntropyFn : public torch::autograd::Function<CrossEntropyFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& target,
                               const std::optional<Tensor>& weight, int64_t reduction, int64_t ignore_index,
                               double label_smoothing, bool compute_grad, bool save_lse,
                               std::optional<c10::ScalarType> out_dtype, variable_list* aux) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, grad, lse] = ce_op().call(input, target, weight, reduction, ignore_index, label_smoothing, compute_grad,
                                          save_lse, out_dtype);
    // Only the loss is differentiated: no zero gradients get built for the other two outputs.
    ctx->set_materialize_grads(false);
    const ClassView v = class_view(input);
    ctx->saved_data["classes"] = v.classes;
    ctx->saved_data["inner"] = v.inner;
    // reduction, compute_grad, has_weight in one entry (fewer map inserts: ~us on a small loss)
    ctx->saved_data["cfg"] =
        reduction | int64_t(compute_grad) << 8 | int64_t(weight.has_value() && weight->defined()) << 9;
    ctx->saved_data["label_smoothing"] = label_smoothing;
    if (save_lse)  // probability targets whose target or weight needs a gradient
      ctx->save_for_backward({grad, input, target, lse, weight.value_or(Tensor())});
    else
      ctx->save_for_backward({grad, Tensor(), Tensor(), Tensor(), Tensor()});
    *aux = {grad, lse};
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_double_backward("cross_entropy");
    variable_list out(10);  // one per forward argument, aux included
    const Tensor& grad_loss = grads[0];
    if (!grad_loss.defined()) return out;
    // needs_input_grad counts tensor arguments only: input 0, target 1, weight 2 (when given).
    auto saved = ctx->get_saved_variables();
    const int64_t cfg = ctx->saved_data["cfg"].toInt();
    const int64_t reduction = cfg & 0xff;
    const bool compute_grad = (cfg >> 8) & 1, has_weight = (cfg >> 9) & 1;
    const double eps = ctx->saved_data["label_smoothing"].toDouble();
    if (ctx->needs_input_grad(0)) {
      TORCH_CHECK(compute_grad,
                  "fastloss.cross_entropy: the input gradient was not computed in forward (the op was called "
                  "with compute_grad=False)");
      out[0] =
          scale_saved_grad(saved[0], grad_loss, ctx->saved_data["classes"].toInt(), ctx->saved_data["inner"].toInt());
    }
    const std::optional<Tensor> weight = saved[4].defined() ? std::optional<Tensor>(saved[4]) : std::nullopt;
    if (ctx->needs_input_grad(1))
      out[1] = ce_target_bwd_op().call(grad_loss, saved[1], saved[3], weight, reduction, eps);
    if (has_weight && ctx->needs_input_grad(2))
      out[2] = prob_weight_grad(grad_loss, saved[1], saved[2], saved[3], reduction, eps);
    return out;
  }
};

class NllLossFn : public torch::autograd::Function<NllLossFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& target,
                               const std::optional<Tensor>& weight, int64_t reduction, int64_t ignore_index,
                               std::optional<c10::ScalarType> out_dtype, variable_list* aux) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, total_weight] = nll_op().call(input, target, weight, reduction, ignore_index, out_dtype);
    ctx->set_materialize_grads(false);
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->save_for_backward({input, target, weight.value_or(Tensor()), total_weight});
    *aux = {total_weight};
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_double_backward("nll_loss");
    variable_list out(7);  // one per forward argument, aux included
    const Tensor& grad_loss = grads[0];
    if (!grad_loss.defined() || !ctx->needs_input_grad(0)) return out;
    auto saved = ctx->get_saved_variables();
    const std::optional<Tensor> weight = saved[2].defined() ? std::optional<Tensor>(saved[2]) : std::nullopt;
    out[0] = nll_bwd_op().call(grad_loss, saved[0], saved[1], weight, ctx->saved_data["reduction"].toInt(),
                               ctx->saved_data["ignore_index"].toInt(), saved[3]);
    return out;
  }
};

std::tuple<Tensor, Tensor, Tensor> cross_entropy_autograd(const Tensor& input, const Tensor& target,
                                                          const std::optional<Tensor>& weight, int64_t reduction,
                                                          int64_t ignore_index, double label_smoothing,
                                                          bool compute_grad, bool save_lse,
                                                          std::optional<c10::ScalarType> out_dtype) {
  if (!records_graph(input, target, weight))
    return call_below_autograd(ce_op(), input, target, weight, reduction, ignore_index, label_smoothing, compute_grad,
                               save_lse, out_dtype);
  return apply_with_aux<CrossEntropyFn, 2>(input, target, weight, reduction, ignore_index, label_smoothing,
                                           compute_grad, save_lse, out_dtype);
}

std::tuple<Tensor, Tensor> nll_loss_autograd(const Tensor& input, const Tensor& target,
                                             const std::optional<Tensor>& weight, int64_t reduction,
                                             int64_t ignore_index, std::optional<c10::ScalarType> out_dtype) {
  if (!records_graph(input, target, weight))
    return call_below_autograd(nll_op(), input, target, weight, reduction, ignore_index, out_dtype);
  return apply_with_aux<NllLossFn, 1>(input, target, weight, reduction, ignore_index, out_dtype);
}

// fastloss::cross_entropy, the public op: the gradient flags decided here. compute_grad: the input will need
// its gradient; save_lse: probability targets whose target or weight will need one.
template <bool Autograd>
Tensor cross_entropy_public(const Tensor& input, const Tensor& target, const std::optional<Tensor>& weight,
                            int64_t reduction, int64_t ignore_index, double label_smoothing,
                            std::optional<c10::ScalarType> out_dtype) {
  if (Autograd && records_graph(input, target, weight)) {
    const bool grad_mode = at::GradMode::is_enabled();
    const bool prob = target.is_floating_point() && input.dim() >= 1 && input.sizes() == target.sizes();
    const bool weight_grad = weight.has_value() && weight->defined() && weight->requires_grad();
    const bool save_lse = prob && grad_mode && (target.requires_grad() || weight_grad);
    return std::get<0>(cross_entropy_autograd(input, target, weight, reduction, ignore_index, label_smoothing,
                                              grad_mode && input.requires_grad(), save_lse, out_dtype));
  }
  return std::get<0>(call_below_autograd(ce_op(), input, target, weight, reduction, ignore_index, label_smoothing,
                                         false, false, out_dtype));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CompositeExplicitAutograd, m) { m.impl("cross_entropy", &cross_entropy_public<false>); }

TORCH_LIBRARY_IMPL(fastloss, Autograd, m) {
  m.impl("cross_entropy", &cross_entropy_public<true>);
  m.impl("_cross_entropy_forward", &cross_entropy_autograd);
  m.impl("nll_loss", &nll_loss_autograd);
}

}  // namespace fastloss
