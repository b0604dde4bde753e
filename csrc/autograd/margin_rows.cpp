// Autograd of the margin_rows family (multi_margin_loss, multilabel_margin_loss). With mean/sum the
// forward already wrote d(loss)/d(input) (grad_now) and backward scales it by grad_output (in place
// when it can); reduction 'none' goes through the backward ops, one pass over input and target.
// Only the input is differentiated: the target holds class indices and torch does not differentiate
// multi_margin_loss's weight (functional.py refuses a weight that requires grad, as torch).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd/autograd_common.h"

namespace fastloss {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptDtype = std::optional<c10::ScalarType>;
using OptTensor = std::optional<Tensor>;

using MmSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t, double, const OptTensor&, int64_t, bool,
                                         OptDtype);
using MmBwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t, double, const OptTensor&, int64_t);
using MlSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t, bool, OptDtype);
using MlBwdSig = Tensor(const Tensor&, const Tensor&, const Tensor&, int64_t);
FASTLOSS_OP(mm_op, "fastloss::_multi_margin_loss_forward", MmSig)
FASTLOSS_OP(mm_bwd_op, "fastloss::_multi_margin_loss_backward", MmBwdSig)
FASTLOSS_OP(ml_op, "fastloss::_multilabel_margin_loss_forward", MlSig)
FASTLOSS_OP(ml_bwd_op, "fastloss::_multilabel_margin_loss_backward", MlBwdSig)

class MultiMarginFn : public torch::autograd::Function<MultiMarginFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& target, int64_t p,
                               double margin, const OptTensor& weight, int64_t reduction, bool grad_now,
                               OptDtype out_dtype, variable_list* aux) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, grad] = mm_op().call(input, target, p, margin, weight, reduction, grad_now, out_dtype);
    ctx->set_materialize_grads(false);
    ctx->saved_data["p"] = p;
    ctx->saved_data["margin"] = margin;
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["grad_now"] = grad_now;
    if (grad_now)  // backward needs only the gradient the forward wrote
      ctx->save_for_backward({grad, Tensor(), Tensor(), Tensor()});
    else
      ctx->save_for_backward({Tensor(), input, target, weight.value_or(Tensor())});
    *aux = {grad};
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_double_backward("multi_margin_loss");
    variable_list out(9);  // one per forward argument, aux included
    const Tensor& grad_loss = grads[0];
    if (!grad_loss.defined() || !ctx->needs_input_grad(0)) return out;
    auto saved = ctx->get_saved_variables();
    if (ctx->saved_data["grad_now"].toBool()) {
      out[0] = scale_saved_grad(saved[0], grad_loss, 1, 1);
    } else {
      const OptTensor weight = saved[3].defined() ? OptTensor(saved[3]) : std::nullopt;
      out[0] = mm_bwd_op().call(grad_loss, saved[1], saved[2], ctx->saved_data["p"].toInt(),
                                ctx->saved_data["margin"].toDouble(), weight, ctx->saved_data["reduction"].toInt());
    }
    return out;
  }
};

class MultilabelMarginFn : public torch::autograd::Function<MultilabelMarginFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& target, int64_t reduction,
                               bool grad_now, OptDtype out_dtype, variable_list* aux) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, grad] = ml_op().call(input, target, reduction, grad_now, out_dtype);
    ctx->set_materialize_grads(false);
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["grad_now"] = grad_now;
    if (grad_now)
      ctx->save_for_backward({grad, Tensor(), Tensor()});
    else
      ctx->save_for_backward({Tensor(), input, target});
    *aux = {grad};
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_double_backward("multilabel_margin_loss");
    variable_list out(6);  // one per forward argument, aux included
    const Tensor& grad_loss = grads[0];
    if (!grad_loss.defined() || !ctx->needs_input_grad(0)) return out;
    auto saved = ctx->get_saved_variables();
    if (ctx->saved_data["grad_now"].toBool())
      out[0] = scale_saved_grad(saved[0], grad_loss, 1, 1);
    else
      out[0] = ml_bwd_op().call(grad_loss, saved[1], saved[2], ctx->saved_data["reduction"].toInt());
    return out;
  }
};

std::tuple<Tensor, Tensor> multi_margin_autograd(const Tensor& input, const Tensor& target, int64_t p, double margin,
                                                 const OptTensor& weight, int64_t reduction, bool grad_now,
                                                 OptDtype out_dtype) {
  if (!records_graph(input, target, weight))
    return call_below_autograd(mm_op(), input, target, p, margin, weight, reduction, grad_now, out_dtype);
  return apply_with_aux<MultiMarginFn, 1>(input, target, p, margin, weight, reduction, grad_now, out_dtype);
}

std::tuple<Tensor, Tensor> multilabel_margin_autograd(const Tensor& input, const Tensor& target, int64_t reduction,
                                                      bool grad_now, OptDtype out_dtype) {
  if (!records_graph(input, target)) return call_below_autograd(ml_op(), input, target, reduction, grad_now, out_dtype);
  return apply_with_aux<MultilabelMarginFn, 1>(input, target, reduction, grad_now, out_dtype);
}

// The public ops: grad_now (the gradient in the forward, mean/sum only) when the input will need it.
template <bool Autograd>
Tensor multi_margin_public(const Tensor& input, const Tensor& target, int64_t p, double margin, const OptTensor& weight,
                           int64_t reduction, OptDtype out_dtype) {
  const bool grad_now = Autograd && fused_grad(input, reduction);
  if (Autograd)
    return std::get<0>(multi_margin_autograd(input, target, p, margin, weight, reduction, grad_now, out_dtype));
  return std::get<0>(call_below_autograd(mm_op(), input, target, p, margin, weight, reduction, false, out_dtype));
}

template <bool Autograd>
Tensor multilabel_margin_public(const Tensor& input, const Tensor& target, int64_t reduction, OptDtype out_dtype) {
  const bool grad_now = Autograd && fused_grad(input, reduction);
  if (Autograd) return std::get<0>(multilabel_margin_autograd(input, target, reduction, grad_now, out_dtype));
  return std::get<0>(call_below_autograd(ml_op(), input, target, reduction, false, out_dtype));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CompositeExplicitAutograd, m) {
  m.impl("multi_margin_loss", &multi_margin_public<false>);
  m.impl("multilabel_margin_loss", &multilabel_margin_public<false>);
}

TORCH_LIBRARY_IMPL(fastloss, Autograd, m) {
  m.impl("multi_margin_loss", &multi_margin_public<true>);
  m.impl("multilabel_margin_loss", &multilabel_margin_public<true>);
  m.impl("_multi_margin_loss_forward", &multi_margin_autograd);
  m.impl("_multilabel_margin_loss_forward", &multilabel_margin_autograd);
}

}  // namespace fastloss
