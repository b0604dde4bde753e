// Autograd of fastloss::linear_cross_entropy, for every device (TORCH_LIBRARY_IMPL(fastloss, Autograd)).
//   mean / sum: the forward op makes the gradients of the inputs that require grad in the same pass over the
//     logits (grad_now, decided here from requires_grad); backward scales them by grad_output
//     (autograd/autograd_common.h, in place where the graph is not kept).
//   'none': forward keeps the losses only; backward recomputes the logits chunk by chunk with each row's
//     coefficients scaled by its grad_output (linear_cross_entropy_backward).
// Differentiated: input, linear_weight, linear_bias. Not: probability targets and class weights (fastloss.functional
// refuses them when they require grad), the lse output.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd/autograd_common.h"

namespace fastloss {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using LceSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&,
                                                                  const std::optional<Tensor>&, const Tensor&,
                                                                  const std::optional<Tensor>&, int64_t, int64_t,
                                                                  double, std::optional<double>, double, int64_t,
                                                                  int64_t, bool, std::array<bool, 3>);
using LceBwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                     const std::optional<Tensor>&, const Tensor&,
                                                     const std::optional<Tensor>&, int64_t, int64_t, double,
                                                     std::optional<double>, double, int64_t, int64_t, bool,
                                                     std::array<bool, 3>);
FASTLOSS_OP(lce_op, "fastloss::_linear_cross_entropy_forward", LceSig)
FASTLOSS_OP(lce_bwd_op, "fastloss::_linear_cross_entropy_backward", LceBwdSig)

std::optional<Tensor> opt(const Tensor& t) { return t.defined() ? std::optional<Tensor>(t) : std::nullopt; }
std::optional<Tensor> opt(const std::optional<Tensor>& t) { return t && t->defined() ? t : std::nullopt; }

class LinearCrossEntropyFn : public torch::autograd::Function<LinearCrossEntropyFn> {
 public:
  // needs_input_grad counts the tensors given: input 0, linear_weight 1, linear_bias 2 (when given); backward returns
  // one entry per argument.
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& linear_weight,
                               const std::optional<Tensor>& bias, const Tensor& target,
                               const std::optional<Tensor>& weight, int64_t reduction, int64_t ignore_index,
                               double label_smoothing, std::optional<double> softcap, double z_loss, int64_t budget,
                               int64_t row_cap, bool acc_weight_grad, variable_list* aux) {
    const Tensor linear_bias = bias.value_or(Tensor());
    const std::array<bool, 3> want = {input.requires_grad(), linear_weight.requires_grad(),
                                      linear_bias.defined() && linear_bias.requires_grad()};
    const bool fused = reduction != 0;
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, lse, gx, gw, gb] = lce_op().call(input, linear_weight, bias, target, weight, reduction, ignore_index,
                                                 label_smoothing, softcap, z_loss, budget, row_cap, acc_weight_grad,
                                                 fused ? want : std::array<bool, 3>{false, false, false});
    ctx->set_materialize_grads(false);
    ctx->saved_data["cfg"] = reduction | int64_t(acc_weight_grad) << 8 | int64_t(linear_bias.defined()) << 9;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["label_smoothing"] = label_smoothing;
    ctx->saved_data["softcap"] = softcap ? *softcap : 0.0;
    ctx->saved_data["z_loss"] = z_loss;
    ctx->saved_data["budget"] = budget;
    ctx->saved_data["row_cap"] = row_cap;
    save_now<3>(ctx, fused ? want : std::array<bool, 3>{false, false, false});
    if (fused)
      ctx->save_for_backward({gx, gw, gb, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()});
    else
      ctx->save_for_backward(
          {Tensor(), Tensor(), Tensor(), input, linear_weight, linear_bias, target, weight.value_or(Tensor())});
    *aux = {lse, gx, gw, gb};
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_double_backward("linear_cross_entropy");
    variable_list out(14);  // one per forward argument, aux included
    const Tensor& grad_loss = grads[0];
    if (!grad_loss.defined()) return out;
    const int64_t cfg = ctx->saved_data["cfg"].toInt();
    const std::array<bool, 3> need = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      ((cfg >> 9) & 1) && ctx->needs_input_grad(2)};
    const std::array<bool, 3> now = load_now<3>(ctx);
    auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> rest = take_fused_grads<3>(need, now, saved.data(), grad_loss, out);
    if (!any_of(rest.data(), 3)) return out;
    // 'none' (or a gradient the forward did not make): recompute chunk by chunk
    TORCH_CHECK(saved[3].defined(),
                "fastloss.linear_cross_entropy: backward asked for a gradient the forward did not make");
    const double cap = ctx->saved_data["softcap"].toDouble();
    auto [gx, gw, gb] =
        lce_bwd_op().call(grad_loss, saved[3], saved[4], opt(saved[5]), saved[6], opt(saved[7]), cfg & 0xff,
                          ctx->saved_data["ignore_index"].toInt(), ctx->saved_data["label_smoothing"].toDouble(),
                          cap > 0 ? std::optional<double>(cap) : std::nullopt, ctx->saved_data["z_loss"].toDouble(),
                          ctx->saved_data["budget"].toInt(), ctx->saved_data["row_cap"].toInt(), (cfg >> 8) & 1, rest);
    if (rest[0]) out[0] = gx;
    if (rest[1]) out[1] = gw;
    if (rest[2]) out[2] = gb;
    return out;
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> linear_cross_entropy_autograd(
    const Tensor& input, const Tensor& linear_weight, const std::optional<Tensor>& linear_bias, const Tensor& target,
    const std::optional<Tensor>& weight, int64_t reduction, int64_t ignore_index, double label_smoothing,
    std::optional<double> softcap, double z_loss, int64_t budget, int64_t row_cap, bool acc_weight_grad,
    std::array<bool, 3> grad_now) {
  // Without a graph, grad_now is the caller's (fastloss.functional passes none; a compiled graph replays the flags its
  // trace decided); with a graph the Function decides it from requires_grad.
  if (!records_graph(input, linear_weight, linear_bias, target, weight))
    return call_below_autograd(lce_op(), input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
                               label_smoothing, softcap, z_loss, budget, row_cap, acc_weight_grad, grad_now);
  return apply_with_aux<LinearCrossEntropyFn, 4>(input, linear_weight, opt(linear_bias), target, opt(weight), reduction,
                                                 ignore_index, label_smoothing, softcap, z_loss, budget, row_cap,
                                                 acc_weight_grad);
}

// fastloss::linear_cross_entropy, the public op: (loss, lse). Below autograd no gradient is computed.
template <bool Autograd>
std::tuple<Tensor, Tensor> linear_cross_entropy_public(const Tensor& input, const Tensor& linear_weight,
                                                       const std::optional<Tensor>& linear_bias, const Tensor& target,
                                                       const std::optional<Tensor>& weight, int64_t reduction,
                                                       int64_t ignore_index, double label_smoothing,
                                                       std::optional<double> softcap, double z_loss, int64_t budget,
                                                       int64_t row_cap, bool acc_weight_grad) {
  const std::array<bool, 3> none{false, false, false};
  auto r =
      Autograd
          ? linear_cross_entropy_autograd(input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
                                          label_smoothing, softcap, z_loss, budget, row_cap, acc_weight_grad, none)
          : call_below_autograd(lce_op(), input, linear_weight, linear_bias, target, weight, reduction, ignore_index,
                                label_smoothing, softcap, z_loss, budget, row_cap, acc_weight_grad, none);
  return {std::get<0>(r), std::get<1>(r)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CompositeExplicitAutograd, m) {
  m.impl("linear_cross_entropy", &linear_cross_entropy_public<false>);
}

TORCH_LIBRARY_IMPL(fastloss, Autograd, m) {
  m.impl("linear_cross_entropy", &linear_cross_entropy_public<true>);
  m.impl("_linear_cross_entropy_forward", &linear_cross_entropy_autograd);
}

}  // namespace fastloss
