// The public ops of the pointwise family (fastloss::l1_loss ... fastloss::sigmoid_focal_loss, schemas in
// ops/pointwise.cpp) and their autograd (ops/pointwise.h: l1 ... sigmoid_focal).
// Each public op maps its typed arguments onto the one engine op, fastloss::_pointwise_forward (kind, the
// tensors a, b, c, d and param, param2), here -- PwNamed<K>, one line per loss -- and decides grad_now
// itself: the internal op's flags are never a caller's.
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
FASTLOSS_OP(pw_op, "fastloss::_pointwise_forward", PwSig)
FASTLOSS_OP(pw_bwd_op, "fastloss::_pointwise_backward", PwBwdSig)

class PointwiseFn : public torch::autograd::Function<PointwiseFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& a, const Tensor& b, const std::optional<Tensor>& c,
                               int64_t kind, double param, int64_t reduction, std::array<bool, 3> grad_now,
                               std::optional<c10::ScalarType> out_dtype, const std::optional<Tensor>& d, double param2,
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

// The engine op's own Autograd kernel (the flags as given), for the tests that drive it directly.
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

// The engine's arguments of one public call.
struct PwArgs {
  const Tensor& a;
  const Tensor& b;
  std::optional<Tensor> c, d;
  double param = 0.0, param2 = 0.0;
};

// kinds whose gradient has no useful bound (1/x, exp(x), pos_weight ...): not fused in float16 -- the fused
// gradient is stored before grad_output scales it, and float16 could overflow there (BCE's 1 / (x (1 - x))
// at x ~ 1e-5) where torch's one expression stays finite
bool pw_unbounded_grad(PwKind k) {
  return k == PwKind::BCE || k == PwKind::BCEWithLogits || k == PwKind::PoissonNLL || k == PwKind::GaussianNLL ||
         k == PwKind::SigmoidFocal;
}

// One call of a public op. Autograd (the Autograd key): with mean/sum the forward also writes the gradients
// that will be needed (backward then only scales them), except for l1/mse with a weight under 'mean', whose
// denominator sum(weight) is known only at the end of the pass. Below autograd (CompositeExplicitAutograd:
// CPU, CUDA, inference mode, ...) or when no graph is recorded: the loss alone.
template <bool Autograd>
Tensor pw_call(PwKind k, const PwArgs& x, int64_t reduction, std::optional<c10::ScalarType> out_dtype) {
  const int64_t kind = static_cast<int64_t>(k);
  if (Autograd && records_graph(x.a, x.b, x.c, x.d)) {
    const bool has_c = x.c.has_value() && x.c->defined();
    const bool fused = reduction != 0 && !(has_c && (k == PwKind::L1 || k == PwKind::MSE) && reduction == 1) &&
                       !(x.a.scalar_type() == at::kHalf && pw_unbounded_grad(k)) && at::GradMode::is_enabled();
    const std::array<bool, 3> grad_now{fused && x.a.requires_grad(), fused && x.b.requires_grad(),
                                       fused && has_c && x.c->requires_grad()};
    return std::get<0>(
        apply_with_aux<PointwiseFn, 3>(x.a, x.b, x.c, kind, x.param, reduction, grad_now, out_dtype, x.d, x.param2));
  }
  return std::get<0>(call_below_autograd(pw_op(), x.a, x.b, x.c, kind, x.param, reduction,
                                         std::array<bool, 3>{false, false, false}, out_dtype, x.d, x.param2));
}

using OptT = const std::optional<Tensor>&;
using OptDt = std::optional<c10::ScalarType>;

// The table: each loss's typed arguments as the engine's (see the kind table in ops/pointwise.h).
// run<true> is the op's Autograd kernel, run<false> its CompositeExplicitAutograd one.
template <PwKind K>
struct PwNamed;

template <PwKind K>  // l1_loss, mse_loss: (self, target, weight, reduction)
struct PwWeighted {
  template <bool AG>
  static Tensor run(const Tensor& a, const Tensor& b, OptT w, int64_t red, OptDt dt) {
    return pw_call<AG>(K, {a, b, w}, red, dt);
  }
};
template <>
struct PwNamed<PwKind::L1> : PwWeighted<PwKind::L1> {
  static constexpr const char* name = "l1_loss";
};
template <>
struct PwNamed<PwKind::MSE> : PwWeighted<PwKind::MSE> {
  static constexpr const char* name = "mse_loss";
};
template <>
struct PwNamed<PwKind::SmoothL1> {
  static constexpr const char* name = "smooth_l1_loss";
  template <bool AG>  // beta == 0 is exactly l1_loss (torch's rule)
  static Tensor run(const Tensor& a, const Tensor& b, int64_t red, double beta, OptDt dt) {
    return pw_call<AG>(beta == 0.0 ? PwKind::L1 : PwKind::SmoothL1, {a, b, {}, {}, beta}, red, dt);
  }
};
template <>
struct PwNamed<PwKind::Huber> {
  static constexpr const char* name = "huber_loss";
  template <bool AG>
  static Tensor run(const Tensor& a, const Tensor& b, OptT w, int64_t red, double delta, OptDt dt) {
    return pw_call<AG>(PwKind::Huber, {a, b, w, {}, delta}, red, dt);
  }
};
template <>
struct PwNamed<PwKind::MarginRanking> {
  static constexpr const char* name = "margin_ranking_loss";
  template <bool AG>
  static Tensor run(const Tensor& x1, const Tensor& x2, const Tensor& y, double margin, int64_t red, OptDt dt) {
    return pw_call<AG>(PwKind::MarginRanking, {x1, x2, y, {}, margin}, red, dt);
  }
};
template <>
struct PwNamed<PwKind::HingeEmbedding> {
  static constexpr const char* name = "hinge_embedding_loss";
  template <bool AG>
  static Tensor run(const Tensor& a, const Tensor& b, double margin, int64_t red, OptDt dt) {
    return pw_call<AG>(PwKind::HingeEmbedding, {a, b, {}, {}, margin}, red, dt);
  }
};
template <>
struct PwNamed<PwKind::SoftMargin> {
  static constexpr const char* name = "soft_margin_loss";
  template <bool AG>
  static Tensor run(const Tensor& a, const Tensor& b, int64_t red, OptDt dt) {
    return pw_call<AG>(PwKind::SoftMargin, {a, b}, red, dt);
  }
};
template <>
struct PwNamed<PwKind::KLDiv> {
  static constexpr const char* name = "kl_div";
  template <bool AG>
  static Tensor run(const Tensor& a, const Tensor& b, int64_t red, bool log_target, OptDt dt) {
    return pw_call<AG>(PwKind::KLDiv, {a, b, {}, {}, log_target ? 1.0 : 0.0}, red, dt);
  }
};
template <>
struct PwNamed<PwKind::BCE> : PwWeighted<PwKind::BCE> {
  static constexpr const char* name = "binary_cross_entropy";
};
template <>
struct PwNamed<PwKind::BCEWithLogits> {
  static constexpr const char* name = "binary_cross_entropy_with_logits";
  template <bool AG>  // the engine's param says whether d (pos_weight) is given
  static Tensor run(const Tensor& a, const Tensor& b, OptT w, OptT pos_weight, int64_t red, OptDt dt) {
    const bool has_pw = pos_weight.has_value() && pos_weight->defined();
    return pw_call<AG>(PwKind::BCEWithLogits, {a, b, w, pos_weight, has_pw ? 1.0 : 0.0}, red, dt);
  }
};
template <>
struct PwNamed<PwKind::PoissonNLL> {
  static constexpr const char* name = "poisson_nll_loss";
  template <bool AG>  // param2: log_input + 2 full
  static Tensor run(const Tensor& a, const Tensor& b, bool log_input, bool full, double eps, int64_t red, OptDt dt) {
    return pw_call<AG>(PwKind::PoissonNLL, {a, b, {}, {}, eps, double(int(log_input) + 2 * int(full))}, red, dt);
  }
};
template <>
struct PwNamed<PwKind::GaussianNLL> {
  static constexpr const char* name = "gaussian_nll_loss";
  template <bool AG>
  static Tensor run(const Tensor& a, const Tensor& b, const Tensor& var, bool full, double eps, int64_t red, OptDt dt) {
    return pw_call<AG>(PwKind::GaussianNLL, {a, b, var, {}, eps, full ? 1.0 : 0.0}, red, dt);
  }
};
template <>
struct PwNamed<PwKind::SigmoidFocal> {
  static constexpr const char* name = "sigmoid_focal_loss";
  template <bool AG>
  static Tensor run(const Tensor& a, const Tensor& b, double alpha, double gamma, int64_t red, OptDt dt) {
    return pw_call<AG>(PwKind::SigmoidFocal, {a, b, {}, {}, alpha, gamma}, red, dt);
  }
};

// Registers run<AG> of every kind's public op (MSE ... SigmoidFocal; L1 first).
template <bool AG, int64_t... K>
void register_pw_named(torch::Library& m, std::integer_sequence<int64_t, K...>) {
  (m.impl(PwNamed<static_cast<PwKind>(K)>::name, TORCH_FN(&PwNamed<static_cast<PwKind>(K)>::template run<AG>)), ...);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastloss, Autograd, m) {
  register_pw_named<true>(m, std::make_integer_sequence<int64_t, kPwKinds>{});
  m.impl("_pointwise_forward", &pointwise_autograd);
}
TORCH_LIBRARY_IMPL(fastloss, CompositeExplicitAutograd, m) {
  register_pw_named<false>(m, std::make_integer_sequence<int64_t, kPwKinds>{});
}

}  // namespace fastloss
