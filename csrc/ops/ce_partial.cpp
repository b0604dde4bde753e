// Schemas of the partial (class-slice) cross-entropy steps (see ops/ce_partial.h), the O(R) steps
// (finish, grad_coef) for every device, and ATen reference versions of the two O(R * Cs) steps.
// REFERENCE (temporary): ce_partial_stats / ce_partial_grad[_] below are composed of ATen ops and
// registered as CompositeExplicitAutograd, so the layers above can be built and tested; the fused CPU
// and CUDA kernels registered for those dispatch keys take precedence over them.
#include "ops/ce_partial.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "common/common.h"
#include "common/errors.h"

namespace fastloss {
namespace {

using at::Tensor;

bool prob_target(const Tensor& logits, const Tensor& target) {
  return target.dim() == 2 && target.is_floating_point();
}

Tensor capped(const Tensor& logits, std::optional<double> softcap) {
  Tensor z = logits.to(acc_dtype(logits.scalar_type()));
  return softcap ? at::tanh(z / *softcap) * *softcap : z;
}

Tensor stats_ref(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                 int64_t class_offset, int64_t num_classes, int64_t ignore_index, double eps,
                 std::optional<double> softcap) {
  TORCH_CHECK(logits.dim() == 2, "fastloss.ce_partial_stats: expected 2-D logits, got ", logits.dim(), " dims");
  const Tensor z = capped(logits, softcap);
  const int64_t R = z.size(0), Cs = z.size(1);
  const auto adt = z.scalar_type();
  const Tensor zero = at::zeros({R}, z.options());
  Tensor m = Cs ? std::get<0>(z.max(1)) : at::full({R}, -std::numeric_limits<double>::infinity(), z.options());
  const Tensor m_safe = at::where(m == -std::numeric_limits<double>::infinity(), zero, m);
  Tensor s = at::exp(z - m_safe.unsqueeze(1)).sum(1);
  const Tensor w = (weight && weight->defined()) ? weight->to(adt) : Tensor();
  Tensor a, b, c;
  if (prob_target(logits, target)) {
    Tensor t = target.to(adt) * (1.0 - eps) + eps / double(num_classes);
    if (w.defined()) t = t * w;
    a = t.sum(1);
    b = (t * z).sum(1);
    c = zero;
  } else {
    const Tensor t = target.to(at::kLong);
    const Tensor local = t - class_offset;
    const Tensor inside = (t != ignore_index) & (local >= 0) & (local < Cs);
    const Tensor li = local.clamp(0, std::max<int64_t>(Cs - 1, 0));
    a = Cs ? at::where(inside, z.gather(1, li.unsqueeze(1)).squeeze(1), zero) : zero;
    b = w.defined() ? at::where(inside, w.index_select(0, li), zero) : inside.to(adt);
    c = eps > 0 ? (w.defined() ? (z * w).sum(1) : z.sum(1)) : zero;
  }
  return at::stack({m, s, a, b, c}, 1);
}

Tensor grad_ref(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, const Tensor& coef,
                int64_t class_offset, int64_t ignore_index, std::optional<double> softcap) {
  TORCH_CHECK(logits.dim() == 2, "fastloss.ce_partial_grad: expected 2-D logits, got ", logits.dim(), " dims");
  const Tensor z = capped(logits, softcap);
  const auto adt = z.scalar_type();
  const int64_t Cs = z.size(1);
  const Tensor k = coef.to(adt);
  const Tensor lse = k.select(1, 0).unsqueeze(1), A = k.select(1, 1).unsqueeze(1), B1 = k.select(1, 2).unsqueeze(1),
               B0 = k.select(1, 3).unsqueeze(1);
  const Tensor w = (weight && weight->defined()) ? weight->to(adt) : Tensor();
  Tensor g = at::exp(z - lse) * A;
  if (prob_target(logits, target)) {
    const Tensor t = target.to(adt) * B1 + B0;
    g = g - (w.defined() ? t * w : t);
  } else {
    g = g - (w.defined() ? B1 * w : B1);
    const Tensor t = target.to(at::kLong);
    const Tensor local = t - class_offset;
    const Tensor valid = t != ignore_index;
    const Tensor inside = valid & (local >= 0) & (local < Cs);
    if (Cs) {
      const Tensor li = local.clamp(0, Cs - 1).unsqueeze(1);
      g = g.scatter_add(1, li, at::where(inside.unsqueeze(1), -B0, at::zeros_like(B0)));
    }
    g = at::where(valid.unsqueeze(1), g, at::zeros({}, g.options()));
  }
  if (softcap) g = g * (1.0 - (z / *softcap).square());
  return g.to(logits.scalar_type());
}

void grad_inplace_ref(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                      const Tensor& coef, int64_t class_offset, int64_t ignore_index, std::optional<double> softcap) {
  logits.copy_(grad_ref(logits, target, weight, coef, class_offset, ignore_index, softcap));
}

std::tuple<Tensor, Tensor, Tensor> finish(const Tensor& stats, const Tensor& target, const Tensor& W,
                                          int64_t num_classes, int64_t ignore_index, double eps, double z_loss) {
  TORCH_CHECK(stats.dim() == 2 && stats.size(1) == 5, "fastloss.ce_partial_finish: expected stats of shape (R, 5), got ",
              stats.sizes());
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

Tensor merge_partial_stats(const Tensor& x, const Tensor& y) {
  const double ninf = -std::numeric_limits<double>::infinity();
  const Tensor M = at::maximum(x.select(1, 0), y.select(1, 0));
  const Tensor M_safe = at::where(M == ninf, at::zeros_like(M), M);
  // a slice whose max is -inf adds s = 0 (exp(-inf - M) = 0 for finite M; M_safe avoids -inf - -inf)
  const Tensor s = x.select(1, 1) * at::exp(x.select(1, 0) - M_safe) + y.select(1, 1) * at::exp(y.select(1, 0) - M_safe);
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
  // REFERENCE (temporary, see the top of this file)
  m.impl("ce_partial_stats", &stats_ref);
  m.impl("ce_partial_grad", &grad_ref);
  m.impl("ce_partial_grad_", &grad_inplace_ref);
}

}  // namespace fastloss
