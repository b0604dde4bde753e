// Schemas of the partial (class-slice) cross-entropy steps (see ops/ce_partial.h), the O(R) steps
// (finish, merge, grad_coef) for every device as ATen ops, and the argument checks of the two O(R * Cs)
// steps, whose fused kernels are cpu/ce_partial.cpp and cuda/ce_partial.cu.
#include "ops/ce_partial.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "common/common.h"
#include "common/errors.h"

namespace fastloss {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor> finish(const Tensor& stats, const Tensor& target, const Tensor& W,
                                          int64_t num_classes, int64_t ignore_index, double eps, double z_loss) {
  TORCH_CHECK(stats.dim() == 2 && stats.size(1) == 5,
              "fastloss.ce_partial_finish: expected stats of shape (R, 5), got ", stats.sizes());
  const Tensor m = stats.select(1, 0), s = stats.select(1, 1), a = stats.select(1, 2), b = stats.select(1, 3),
               c = stats.select(1, 4);
  const Tensor log_s = at::log(s), lse = m + log_s;
  const Tensor zero = at::zeros({}, stats.options());
  const double C = static_cast<double>(num_classes);
  Tensor loss, A, B1, B0, valid;
  if (target.dim() == 2 && target.is_floating_point()) {  // probability targets: S1 = a, S2 = b
    loss = num_classes == 0 ? at::zeros_like(m) : (m * a - b) + log_s * a;  // torch: an empty class sum is 0
    A = a;
    B1 = at::full_like(m, 1.0 - eps);
    B0 = at::full_like(m, num_classes ? eps / C : 0.0);
    valid = at::ones_like(m, m.options().dtype(at::kBool));
  } else {  // class targets: z_t = a, w_t = b, sum_c w_c z_c = c
    valid = target != ignore_index;
    const Tensor bt = b * (1.0 - eps);
    loss = bt * ((m - a) + log_s);
    A = bt;
    B1 = at::zeros_like(m);
    B0 = bt;
    if (eps != 0) {  // torch adds the smoothing term only when eps > 0 (W and c may be inf otherwise)
      const double bs = eps / C;
      const Tensor Wc = W.to(stats.scalar_type());
      loss = loss + ((Wc * m - c) + Wc * log_s) * bs;
      A = A + Wc * bs;
      B1 = at::full_like(m, bs);
    }
    loss = at::where(valid, loss, zero);
    A = at::where(valid, A, zero);
    B1 = at::where(valid, B1, zero);
    B0 = at::where(valid, B0, zero);
  }
  const Tensor z_term = at::where(valid, lse * lse * z_loss, zero);
  const Tensor Az = at::where(valid, lse * (2.0 * z_loss), zero);
  return {loss, z_term, at::stack({lse, A, B1, B0, Az}, 1)};
}

}  // namespace

bool check_partial_args(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                        const char* op) {
  TORCH_CHECK(logits.dim() == 2, op, ": expected 2-D logits (R, Cs), got ", logits.dim(), " dims");
  check_floating(logits, "logits", op);
  const int64_t R = logits.size(0), Cs = logits.size(1);
  const bool prob = target.dim() == 2 && target.is_floating_point();
  if (prob) {
    TORCH_CHECK(target.sizes() == logits.sizes(), op, ": expected a probability target of shape ", logits.sizes(),
                " (as the logits), got ", target.sizes());
  } else {
    check_class_target_dtype(target, op);
    TORCH_CHECK(target.dim() == 1 && target.size(0) == R, op, ": expected a class target of shape (", R, ",), got ",
                target.sizes());
  }
  if (weight && weight->defined()) {
    check_floating(*weight, "weight", op);
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == Cs, op, ": expected weight of shape (", Cs,
                ",) (the slice's classes), got ", weight->sizes());
    check_same_device(logits, "logits", *weight, "weight", op);
  }
  check_same_device(logits, "logits", target, "target", op);
  return prob;
}

void check_partial_coef(const Tensor& logits, const Tensor& coef, const char* op) {
  TORCH_CHECK(coef.dim() == 2 && coef.size(0) == logits.size(0) && coef.size(1) == 4, op, ": expected coef of shape (",
              logits.size(0), ", 4) (ce_partial_grad_coef), got ", coef.sizes());
  check_same_device(logits, "logits", coef, "coef", op);
}

namespace {

PartialArgs partial_args(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, bool prob) {
  PartialArgs a;
  const auto adt = acc_dtype(logits.scalar_type());
  a.x = logits.contiguous();
  a.prob = prob;
  const bool own = !prob || target.scalar_type() == logits.scalar_type() || target.scalar_type() == adt;
  a.target = own ? target.contiguous() : target.to(adt).contiguous();
  a.weight = as_acc(weight, adt);
  a.R = a.x.size(0);
  a.Cs = a.x.size(1);
  return a;
}

}  // namespace

PartialArgs partial_stats_args(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                               int64_t class_offset, int64_t num_classes, int64_t ignore_index, double eps,
                               std::optional<double> softcap, const char* op) {
  PartialArgs a = partial_args(logits, target, weight, check_partial_args(logits, target, weight, op));
  a.class_offset = class_offset;
  a.num_classes = num_classes;
  a.ignore_index = ignore_index;
  a.eps = eps;
  a.softcap = softcap;
  return a;
}

PartialArgs partial_grad_args(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                              const Tensor& coef, int64_t class_offset, int64_t ignore_index,
                              std::optional<double> softcap, const char* op) {
  const bool prob = check_partial_args(logits, target, weight, op);
  check_partial_coef(logits, coef, op);
  PartialArgs a = partial_args(logits, target, weight, prob);
  a.coef = coef.to(acc_dtype(logits.scalar_type())).contiguous();
  a.class_offset = class_offset;
  a.num_classes = 0;  // not used by the gradient
  a.ignore_index = ignore_index;
  a.eps = 0;
  a.softcap = softcap;
  return a;
}

Tensor merge_partial_stats(const Tensor& x, const Tensor& y) {
  const double ninf = -std::numeric_limits<double>::infinity();
  const Tensor M = at::maximum(x.select(1, 0), y.select(1, 0));
  const Tensor M_safe = at::where(M == ninf, at::zeros_like(M), M);
  // a slice whose max is -inf adds s = 0 (exp(-inf - M) = 0 for finite M; M_safe avoids -inf - -inf)
  const Tensor s =
      x.select(1, 1) * at::exp(x.select(1, 0) - M_safe) + y.select(1, 1) * at::exp(y.select(1, 0) - M_safe);
  return at::cat({M.unsqueeze(1), s.unsqueeze(1), x.narrow(1, 2, 3) + y.narrow(1, 2, 3)}, 1);
}

Tensor make_grad_coef(const Tensor& coef, const Tensor& s_ce, const Tensor& s_z) {
  const Tensor sc = s_ce.to(coef.scalar_type()), sz = s_z.to(coef.scalar_type());
  return at::stack({coef.select(1, 0), coef.select(1, 1) * sc + coef.select(1, 4) * sz, coef.select(1, 2) * sc,
                    coef.select(1, 3) * sc},
                   1);
}

TORCH_LIBRARY_FRAGMENT(fastloss, m) {
  m.def(
      "ce_partial_stats(Tensor logits, Tensor target, Tensor? weight, int class_offset, int num_classes, "
      "int ignore_index, float label_smoothing, float? softcap) -> Tensor");
  m.def(
      "ce_partial_finish(Tensor stats, Tensor target, Tensor W, int num_classes, int ignore_index, "
      "float label_smoothing, float z_loss) -> (Tensor ce_loss, Tensor z_term, Tensor coef)");
  m.def("ce_partial_merge(Tensor a, Tensor b) -> Tensor");
  m.def("ce_partial_grad_coef(Tensor coef, Tensor s_ce, Tensor s_z) -> Tensor");
  m.def(
      "ce_partial_grad(Tensor logits, Tensor target, Tensor? weight, Tensor coef, int class_offset, int ignore_index, "
      "float? softcap) -> Tensor");
  m.def(
      "ce_partial_grad_(Tensor(a!) logits, Tensor target, Tensor? weight, Tensor coef, int class_offset, "
      "int ignore_index, float? softcap) -> ()");
}

TORCH_LIBRARY_IMPL(fastloss, CompositeExplicitAutograd, m) {
  m.impl("ce_partial_finish", &finish);
  m.impl("ce_partial_merge", &merge_partial_stats);
  m.impl("ce_partial_grad_coef", &make_grad_coef);
}

}  // namespace fastloss
