// Autograd of the pointwise family (ops/pointwise.h: l1 ... sigmoid_focal).
// With mean/sum the forward already wrote the gradients asked for in grad_now (one pass reads the
// inputs and writes the gradient); backward scales them by grad_output, in place when it can
// (autograd/autograd_common.cpp). Anything else (reduction 'none', a weight's gradient, l1/mse with
// a weight) comes from pointwise_loss_backward, one pass over the inputs and grad_output.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "autograd/autograd_common.h"
#include "ops/pointwise.h"

namespace fastloss {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using PwSig = std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                                         int64_t, double, int64_t, std::array<bool, 3>,
                                                         std::optional<c10::ScalarType>, const std::optional<Tensor>&,
                                                         double);
using PwBwdSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&,
                                                    const std::optional<Tensor>&, int64_t, double, int64_t,
                                                    const Tensor&, std::array<bool, 3>, const std::optional<Tensor>&,
                                                    double);
FASTLOSS_OP(pw_op, "fastloss::pointwise_loss", PwSig)
FASTLOSS_OP(pw_bwd_op, "fastloss::pointwise_loss_backward", PwBwdSig)

class PointwiseFn : public torch::autograd::Function<PointwiseFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& a, const Tensor& b, const std::optional<Tensor>& c,
                               int64_t kind, double param, int64_t reduction, std::array<bool, 3> grad_now,
                               std::optional<c10::ScalarType> out_dtype, const std::optional<Tensor>& d,
                               double param2,
                               variable_list* aux) {
    at::AutoDispatchBelowADInplaceOrView below;
    auto [loss, ga, gb, gc] = pw_op().call(a, b, c, kind, param, reduction, grad_now, out_dtype, d, param2);
    ctx->set_materialize_grads(false);
    const bool has_c = c.has_value() && c->defined(), has_d = d.has_value() && d->defined();
    // kind, reduction, has_c, has_d in one entry (fewer map inserts: ~us on a small loss)
    ctx->saved_data["cfg"] = kind | reduction << 8 | int64_t(has_c) << 16 | int64_t(has_d) << 17;
    ctx->saved_data["param"] = param;
    ctx->saved_data["param2"] = param2;
    save_now(ctx, grad_now);
    // the inputs only when backward may have to compute a gradient the forward did not write
    const Tensor none;
    if (needs_unfused<3>({&a, &b, has_c ? &*c : &none}, grad_now))
      ctx->save_for_backward({a, b, c.value_or(Tensor()), loss, ga, gb, gc, d.value_or(Tensor())});
    else
      ctx->save_for_backward({Tensor(), Tensor(), Tensor(), Tensor(), ga, gb, gc, Tensor()});
    *aux = {ga, gb, gc};
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const int64_t cfg = ctx->saved_data["cfg"].toInt();
    const int64_t kind = cfg & 0xff, reduction = (cfg >> 8) & 0xff;
    const bool has_c = (cfg >> 16) & 1, has_d = (cfg >> 17) & 1;
    refuse_double_backward(pw_name(to_pw_kind(kind)) + 9);  // drop "fastloss."
    variable_list out(11);  // one per forward argument, aux included
    const Tensor& grad_loss = grads[0];
    if (!grad_loss.defined()) return out;
    auto saved = ctx->get_saved_variables();
    // needs_input_grad counts tensor arguments only: a 0, b 1, c 2 (when given)
    const std::array<bool, 3> need{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   has_c && ctx->needs_input_grad(2)};
    const std::array<bool, 3> rest = take_fused_grads(need, load_now<3>(ctx), &saved[4], grad_loss, out);
    if (any_of(rest.data(), 3)) {
      const std::optional<Tensor> c = has_c ? std::optional<Tensor>(saved[2]) : std::nullopt;
      TORCH_CHECK(saved[0].defined(), "fastloss: internal error: pointwise backward needs inputs it did not save");
      const std::optional<Tensor> d = has_d ? std::optional<Tensor>(saved[7]) : std::nullopt;
      auto [ga, gb, gc] = pw_bwd_op().call(grad_loss, saved[0], saved[1], c, kind, ctx->saved_data["param"].toDouble(),
                                           reduction, saved[3], rest, d, ctx->saved_data["param2"].toDouble());
      if (rest[0]) out[0] = ga;
      if (rest[1]) out[1] = gb;
      if (rest[2]) out[2] = gc;
    }
    return out;
  }
};

std::tuple<Tensor, Tensor, Tensor, Tensor> pointwise_autograd(const Tensor& a, const Tensor& b,
                                                              const std::optional<Tensor>& c, int64_t kind,
                                                              double param, int64_t reduction,
                                                              std::array<bool, 3> grad_now,
                                                              std::optional<c10::ScalarType> out_dtype,
                                                              const std::optional<Tensor>& d, double param2) {
  if (!records_graph(a, b, c, d))
    return call_below_autograd(pw_op(), a, b, c, kind, param, reduction, grad_now, out_dtype, d, param2);
  return apply_with_aux<PointwiseFn, 3>(a, b, c, kind, param, reduction, grad_now, out_dtype, d, param2);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, Autograd, m) { m.impl("pointwise_loss", &pointwise_autograd); }

}  // namespace fastloss
