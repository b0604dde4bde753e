// cross_entropy with the extras of issue 17 (softcap, z_loss, lse): fastloss::cross_entropy_ext.
// The op is device-generic: it is composed of the partial cross-entropy steps (ops/ce_partial.h: one
// slice covering all classes) over the dispatcher, so the same code serves CPU and CUDA and picks up the
// fused stats/grad kernels when they are registered. It lives with its autograd in one file: there is no
// device kernel of its own.
//   input viewed as rows (R, C) contiguous in C: a contiguous 2-D input as is; (C,) as one row; K-D
//   (N, C, d1..dk) moved to (N*d1*..*dk, C) -- a copy -- and the gradient moved back (a view).
//   stats -> finish -> reduction -> grad_coef -> grad (out of place: the input stays).
// The forward makes d(loss)/d(input) for every reduction (linear in grad_output, 'none' included);
// backward scales it. lse is returned per row in the accumulate dtype (float32 for half/bfloat16/float32,
// float64 for float64) and is not differentiated (it leaves forward untracked, see autograd_common.h).
// Probability targets: d/d(target) and d/d(weight) are composed of ATen ops over the capped logits in
// backward (rare; input-sized temporaries), as csrc/autograd/cross_entropy.cpp does without the extras.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "autograd/autograd_common.h"
#include "common/common.h"
#include "ops/cross_entropy.h"

namespace fastloss {
namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using StatsSig = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, int64_t, int64_t, int64_t, double,
                        std::optional<double>);
using FinishSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t,
                                                     double, double);
using GradCoefSig = Tensor(const Tensor&, const Tensor&, const Tensor&);
using GradSig = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, const Tensor&, int64_t, int64_t,
                       std::optional<double>);
using ExtSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const std::optional<Tensor>&, int64_t, int64_t,
                                          double, std::optional<double>, double, std::optional<c10::ScalarType>);
FASTLOSS_OP(stats_op, "fastloss::ce_partial_stats", StatsSig)
FASTLOSS_OP(finish_op, "fastloss::ce_partial_finish", FinishSig)
FASTLOSS_OP(grad_coef_op, "fastloss::ce_partial_grad_coef", GradCoefSig)
FASTLOSS_OP(grad_op, "fastloss::ce_partial_grad", GradSig)
FASTLOSS_OP(ext_op, "fastloss::cross_entropy_ext", ExtSig)

constexpr const char* kOp = "cross_entropy";

// t in dtype dt; a new tensor even when t already is (an op below autograd must not return its input,
// and aten::to returns self then).
Tensor as_dtype(const Tensor& t, c10::ScalarType dt) { return t.scalar_type() == dt ? t.clone() : t.to(dt); }

void check_extras(std::optional<double> softcap, double z_loss) {
  // ValueError, as torch's own argument checks (e.g. label_smoothing)
  TORCH_CHECK_VALUE(!softcap || (std::isfinite(*softcap) && *softcap > 0), kOp,
                    ": softcap must be a positive finite number or None (got ", softcap.value_or(0.0), ")");
  TORCH_CHECK_VALUE(std::isfinite(z_loss) && z_loss >= 0, kOp, ": z_loss must be a finite number >= 0 (got ", z_loss,
                    ")");
}

// (N, C, d1..dk) / (N, C) / (C,) -> (R, C) contiguous; class targets -> (R,), probability targets -> (R, C).
Tensor to_rows(const Tensor& x, int64_t C) {
  if (x.dim() == 1) return x.reshape({1, C}).contiguous();
  if (x.dim() == 2) return x.contiguous();
  return x.movedim(1, -1).reshape({-1, C}).contiguous();
}

// Rows (R, C) back to the input's layout (a view).
Tensor from_rows(const Tensor& g, const Tensor& input) {
  if (input.dim() <= 2) return g.view(input.sizes());
  std::vector<int64_t> moved{input.size(0)};
  for (int64_t d = 2; d < input.dim(); ++d) moved.push_back(input.size(d));
  moved.push_back(input.size(1));
  return g.view(moved).movedim(-1, 1);
}

struct ExtResult {
  Tensor loss, lse, grad_rows;  // grad_rows (R, C) in the input's dtype, undefined unless asked
};

ExtResult ext_forward(const Tensor& input, const Tensor& target, const std::optional<Tensor>& weight, int64_t reduction,
                      int64_t ignore_index, double eps, std::optional<double> softcap, double z_loss,
                      std::optional<c10::ScalarType> out_dtype, bool compute_grad) {
  check_extras(softcap, z_loss);
  const CrossEntropyPlan p = plan_cross_entropy(input, target, weight, reduction, ignore_index, eps, true, kOp);
  const int64_t C = p.classes;
  const Tensor x = to_rows(input, C);
  const Tensor t = p.prob_target ? to_rows(target, C) : target.reshape({-1});
  const auto adt = acc_dtype(input.scalar_type());
  const auto opts = input.options().dtype(adt);
  const Tensor stats = stats_op().call(x, t, weight, 0, C, ignore_index, eps, softcap);
  const bool has_w = weight.has_value() && weight->defined();
  const Tensor W = has_w ? weight->sum(adt) : at::scalar_tensor(double(C), opts);
  auto [ce, zt, coef] = finish_op().call(stats, t, W, C, ignore_index, eps, z_loss);
  const int64_t R = x.size(0);
  Tensor loss, s_ce, s_z;
  const Tensor one = at::ones({}, opts);
  switch (p.reduction) {
    case Reduction::None:
      loss = (ce + zt).view(p.row_shape);
      s_ce = s_z = one;
      break;
    case Reduction::Sum:
      loss = ce.sum() + zt.sum();
      s_ce = s_z = one;
      break;
    case Reduction::Mean: {
      // ce by the sum of the targets' weights (non-ignored; R for probability targets, as torch), the
      // z-term by the number of non-ignored rows (never weighted). All ignored: 0/0 = NaN, as torch.
      const Tensor d_ce = p.prob_target ? at::scalar_tensor(double(R), opts) : stats.select(1, 3).sum();
      const Tensor d_z = p.prob_target ? at::scalar_tensor(double(R), opts) : (t != ignore_index).sum(adt);
      s_ce = one / d_ce;
      s_z = one / d_z;
      loss = ce.sum() * s_ce + zt.sum() * s_z;
      break;
    }
  }
  ExtResult r;
  r.loss = as_dtype(loss, out_dtype.value_or(input.scalar_type()));
  r.lse = coef.select(1, 0).reshape(p.row_shape).contiguous();  // a column of coef: strided
  if (compute_grad) {
    const Tensor coef4 = grad_coef_op().call(coef, s_ce, s_z);
    r.grad_rows = grad_op().call(x, t, weight, coef4, 0, ignore_index, softcap);
  }
  return r;
}

// The registered op (CPU and CUDA keys; also what autograd calls below itself when no graph is recorded).
std::tuple<Tensor, Tensor> cross_entropy_ext(const Tensor& input, const Tensor& target,
                                             const std::optional<Tensor>& weight, int64_t reduction,
                                             int64_t ignore_index, double eps, std::optional<double> softcap,
                                             double z_loss, std::optional<c10::ScalarType> out_dtype) {
  ExtResult r = ext_forward(input, target, weight, reduction, ignore_index, eps, softcap, z_loss, out_dtype, false);
  return {r.loss, r.lse};
}

// Capped logits rows in the accumulate dtype (probability targets' backward only).
Tensor capped_rows(const Tensor& input, int64_t C, std::optional<double> softcap, c10::ScalarType adt) {
  Tensor z = to_rows(input, C).to(adt);
  return softcap ? at::tanh(z / *softcap) * *softcap : z;
}

class CrossEntropyExtFn : public torch::autograd::Function<CrossEntropyExtFn> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& input, const Tensor& target,
                               const std::optional<Tensor>& weight, int64_t reduction, int64_t ignore_index, double eps,
                               std::optional<double> softcap, double z_loss, std::optional<c10::ScalarType> out_dtype,
                               variable_list* aux) {
    at::AutoDispatchBelowADInplaceOrView below;
    // The gradient flags are decided here, from what requires grad (not by the Python caller).
    const bool compute_grad = input.requires_grad();
    const bool prob = target.is_floating_point() && input.dim() >= 1 && input.sizes() == target.sizes();
    const bool has_w = weight.has_value() && weight->defined();
    const bool other_grads = prob && (target.requires_grad() || (has_w && weight->requires_grad()));
    ExtResult r =
        ext_forward(input, target, weight, reduction, ignore_index, eps, softcap, z_loss, out_dtype, compute_grad);
    ctx->set_materialize_grads(false);
    ctx->saved_data["classes"] = class_view(input).classes;
    ctx->saved_data["cfg"] = reduction | int64_t(compute_grad) << 8 | int64_t(has_w) << 9;
    ctx->saved_data["label_smoothing"] = eps;
    if (softcap) ctx->saved_data["softcap"] = *softcap;
    if (other_grads)
      ctx->save_for_backward({r.grad_rows, input, target, r.lse, weight.value_or(Tensor())});
    else
      ctx->save_for_backward({r.grad_rows, input, Tensor(), Tensor(), Tensor()});
    *aux = {r.lse};
    return {r.loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    refuse_double_backward("cross_entropy");
    variable_list out(11);  // one per forward argument, aux included
    const Tensor& grad_loss = grads[0];
    if (!grad_loss.defined()) return out;
    auto saved = ctx->get_saved_variables();
    const Tensor& input = saved[1];
    const int64_t cfg = ctx->saved_data["cfg"].toInt();
    const int64_t reduction = cfg & 0xff;
    const bool compute_grad = (cfg >> 8) & 1, has_w = (cfg >> 9) & 1;
    const double eps = ctx->saved_data["label_smoothing"].toDouble();
    const int64_t C = ctx->saved_data["classes"].toInt();
    if (ctx->needs_input_grad(0)) {
      TORCH_CHECK(compute_grad, "fastloss.cross_entropy: the input gradient was not computed in forward");
      // rows (R, C): grad_output per row ('none') or one factor
      out[0] = from_rows(scale_saved_grad(saved[0], grad_loss, C, 1), input);
    }
    const bool need_t = ctx->needs_input_grad(1), need_w = has_w && ctx->needs_input_grad(2);
    if ((need_t || need_w) && saved[2].defined()) {
      // Probability targets: loss_r = sum_c w_c t'_rc (lse_r - z_rc), t' = (1-eps) q + eps/C (+ z-term,
      // which does not depend on q or w). z: the capped logits.
      const Tensor& lse = saved[3];
      const auto adt = lse.scalar_type();
      std::optional<double> softcap;
      if (ctx->saved_data.count("softcap")) softcap = ctx->saved_data["softcap"].toDouble();
      const Tensor diff = lse.reshape({-1, 1}) - capped_rows(input, C, softcap, adt);  // (R, C)
      const int64_t R = diff.size(0);
      Tensor g = grad_loss.to(adt).reshape({-1, 1});  // (R, 1) or (1, 1)
      if (reduction == static_cast<int64_t>(Reduction::Mean))
        g = R ? g / double(R) : g * std::numeric_limits<double>::quiet_NaN();
      const Tensor w = has_w ? saved[4].to(adt) : Tensor();
      if (need_t) {
        Tensor gt = diff * g * (1.0 - eps);
        if (has_w) gt = gt * w;
        out[1] = from_rows(gt.to(saved[2].scalar_type()).contiguous(), saved[2]);
      }
      if (need_w) {
        const Tensor tp = to_rows(saved[2], C).to(adt) * (1.0 - eps) + eps / double(C);
        out[2] = (tp * diff * g).sum(0).to(saved[4].scalar_type());
      }
    }
    return out;
  }
};

std::tuple<Tensor, Tensor> cross_entropy_ext_autograd(const Tensor& input, const Tensor& target,
                                                      const std::optional<Tensor>& weight, int64_t reduction,
                                                      int64_t ignore_index, double eps, std::optional<double> softcap,
                                                      double z_loss, std::optional<c10::ScalarType> out_dtype) {
  if (!records_graph(input, target, weight))
    return call_below_autograd(ext_op(), input, target, weight, reduction, ignore_index, eps, softcap, z_loss,
                               out_dtype);
  return apply_with_aux<CrossEntropyExtFn, 1>(input, target, weight, reduction, ignore_index, eps, softcap, z_loss,
                                              out_dtype);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastloss, m) {
  // cross_entropy with softcap (z = softcap * tanh(x / softcap)) and z-loss (z_loss * lse^2 per non-ignored
  // row, mean over non-ignored rows); returns the loss and the per-row lse of the capped logits (the shape
  // of the 'none' loss, accumulate dtype, not differentiated).
  m.def(
      "cross_entropy_ext(Tensor input, Tensor target, Tensor? weight, int reduction, int ignore_index, "
      "float label_smoothing, float? softcap, float z_loss, ScalarType? out_dtype) -> (Tensor loss, Tensor lse)");
}

TORCH_LIBRARY_IMPL(fastloss, CPU, m) { m.impl("cross_entropy_ext", &cross_entropy_ext); }
TORCH_LIBRARY_IMPL(fastloss, CUDA, m) { m.impl("cross_entropy_ext", &cross_entropy_ext); }
TORCH_LIBRARY_IMPL(fastloss, Autograd, m) { m.impl("cross_entropy_ext", &cross_entropy_ext_autograd); }

}  // namespace fastloss
