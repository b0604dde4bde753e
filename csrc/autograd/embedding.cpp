// Autograd of the row-wise embedding losses (triplet_margin, cosine_embedding). With mean/sum the
// forward already wrote the gradients asked for in grad_now, and backward scales them by
// grad_output (in place when it can); reduction 'none' goes through the backward ops.
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

using TripletSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, double,
                                                              double, double, bool, int64_t, std::array<bool, 3>,
                                                              OptDtype);
using TripletBwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                         double, double, double, bool, int64_t, std::array<bool, 3>);
using CosineSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, double, int64_t,
                                                     std::array<bool, 2>, OptDtype);
using CosineBwdSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&, double,
                                                int64_t, std::array<bool, 2>);
FASTLOSS_OP(triplet_op, "fastloss::_triplet_margin_forward", TripletSig)
FASTLOSS_OP(triplet_bwd_op, "fastloss::_triplet_margin_backward", TripletBwdSig)
FASTLOSS_OP(cosine_op, "fastloss::_cosine_embedding_forward", CosineSig)
FASTLOSS_OP(cosine_bwd_op, "fastloss::_cosine_embedding_backward", CosineBwdSig)

class TripletFn : public torch::autograd::Function<TripletFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& a, const Tensor& pos, const Tensor& neg,
                               double margin, double p, double eps, bool swap, int64_t reduction,
                               std::array<bool, 3> grad_now, OptDtype out_dtype, variable_list* aux) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, ga, gp, gn] = triplet_op().call(a, pos, neg, margin, p, eps, swap, reduction, grad_now, out_dtype);
    ctx->set_materialize_grads(false);
    ctx->saved_data["margin"] = margin;
    ctx->saved_data["p"] = p;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["swap"] = swap;
    ctx->saved_data["reduction"] = reduction;
    save_now(ctx, grad_now);
    ctx->save_for_backward({a, pos, neg, ga, gp, gn});
    *aux = {ga, gp, gn};
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_double_backward("triplet_margin_loss");
    variable_list out(11);  // one per forward argument, aux included
    const Tensor& grad_loss = grads[0];
    if (!grad_loss.defined()) return out;
    auto saved = ctx->get_saved_variables();
    const std::array<bool, 3> need{ctx->needs_input_grad(0), ctx->needs_input_grad(1), ctx->needs_input_grad(2)};
    const auto rest = take_fused_grads(need, load_now<3>(ctx), &saved[3], grad_loss, out);
    if (any_of(rest.data(), 3)) {
      auto [ga, gp, gn] =
          triplet_bwd_op().call(grad_loss, saved[0], saved[1], saved[2], ctx->saved_data["margin"].toDouble(),
                                ctx->saved_data["p"].toDouble(), ctx->saved_data["eps"].toDouble(),
                                ctx->saved_data["swap"].toBool(), ctx->saved_data["reduction"].toInt(), rest);
      if (rest[0]) out[0] = ga;
      if (rest[1]) out[1] = gp;
      if (rest[2]) out[2] = gn;
    }
    return out;
  }
};

class CosineFn : public torch::autograd::Function<CosineFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x1, const Tensor& x2, const Tensor& target,
                               double margin, int64_t reduction, std::array<bool, 2> grad_now, OptDtype out_dtype,
                               variable_list* aux) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, g1, g2] = cosine_op().call(x1, x2, target, margin, reduction, grad_now, out_dtype);
    ctx->set_materialize_grads(false);
    ctx->saved_data["margin"] = margin;
    ctx->saved_data["reduction"] = reduction;
    save_now(ctx, grad_now);
    ctx->save_for_backward({x1, x2, target, g1, g2});
    *aux = {g1, g2};
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_double_backward("cosine_embedding_loss");
    variable_list out(8);  // one per forward argument, aux included
    const Tensor& grad_loss = grads[0];
    if (!grad_loss.defined()) return out;
    auto saved = ctx->get_saved_variables();
    // the target only selects the branch: no gradient (as torch)
    const std::array<bool, 2> need{ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    const auto rest = take_fused_grads(need, load_now<2>(ctx), &saved[3], grad_loss, out);
    if (any_of(rest.data(), 2)) {
      auto [g1, g2] =
          cosine_bwd_op().call(grad_loss, saved[0], saved[1], saved[2], ctx->saved_data["margin"].toDouble(),
                               ctx->saved_data["reduction"].toInt(), rest);
      if (rest[0]) out[0] = g1;
      if (rest[1]) out[1] = g2;
    }
    return out;
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> triplet_autograd(const Tensor& a, const Tensor& pos, const Tensor& neg,
                                                            double margin, double p, double eps, bool swap,
                                                            int64_t reduction, std::array<bool, 3> grad_now,
                                                            OptDtype out_dtype) {
  if (!records_graph(a, pos, neg))
    return call_below_autograd(triplet_op(), a, pos, neg, margin, p, eps, swap, reduction, grad_now, out_dtype);
  return apply_with_aux<TripletFn, 3>(a, pos, neg, margin, p, eps, swap, reduction, grad_now, out_dtype);
}

std::tuple<Tensor, Tensor, Tensor> cosine_autograd(const Tensor& x1, const Tensor& x2, const Tensor& target,
                                                   double margin, int64_t reduction, std::array<bool, 2> grad_now,
                                                   OptDtype out_dtype) {
  if (!records_graph(x1, x2, target))
    return call_below_autograd(cosine_op(), x1, x2, target, margin, reduction, grad_now, out_dtype);
  return apply_with_aux<CosineFn, 2>(x1, x2, target, margin, reduction, grad_now, out_dtype);
}

// The public ops: grad_now (gradients in the forward, mean/sum only) for the inputs that will need them.

template <bool Autograd>
Tensor triplet_public(const Tensor& a, const Tensor& pos, const Tensor& neg, double margin, double p, double eps,
                      bool swap, int64_t reduction, OptDtype out_dtype) {
  if (Autograd)
    return std::get<0>(triplet_autograd(
        a, pos, neg, margin, p, eps, swap, reduction,
        {fused_grad(a, reduction), fused_grad(pos, reduction), fused_grad(neg, reduction)}, out_dtype));
  return std::get<0>(call_below_autograd(triplet_op(), a, pos, neg, margin, p, eps, swap, reduction,
                                         std::array<bool, 3>{false, false, false}, out_dtype));
}

template <bool Autograd>
Tensor cosine_public(const Tensor& x1, const Tensor& x2, const Tensor& target, double margin, int64_t reduction,
                     OptDtype out_dtype) {
  if (Autograd)
    return std::get<0>(cosine_autograd(x1, x2, target, margin, reduction,
                                       {fused_grad(x1, reduction), fused_grad(x2, reduction)}, out_dtype));
  return std::get<0>(call_below_autograd(cosine_op(), x1, x2, target, margin, reduction,
                                         std::array<bool, 2>{false, false}, out_dtype));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, CompositeExplicitAutograd, m) {
  m.impl("triplet_margin_loss", &triplet_public<false>);
  m.impl("cosine_embedding_loss", &cosine_public<false>);
}

TORCH_LIBRARY_IMPL(fastloss, Autograd, m) {
  m.impl("triplet_margin_loss", &triplet_public<true>);
  m.impl("cosine_embedding_loss", &cosine_public<true>);
  m.impl("_triplet_margin_forward", &triplet_autograd);
  m.impl("_cosine_embedding_forward", &cosine_autograd);
}

}  // namespace fastloss
