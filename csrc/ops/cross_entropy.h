// cross_entropy / nll_loss: what the CPU and CUDA implementations share — argument checks and shapes
// (one place, so both devices refuse the same inputs with the same words) and the per-row algebra.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <vector>

#include "common/common.h"

namespace fastloss {

// The input seen as (outer, classes, inner): (C,) -> (1, C, 1); (N, C) -> (N, C, 1);
// (N, C, d1..dk) -> (N, C, d1*..*dk). A "row" is one (outer, inner) position: rows = outer * inner.
struct CrossEntropyPlan {
  int64_t outer = 1;
  int64_t classes = 0;
  int64_t inner = 1;
  bool prob_target = false;
  Reduction reduction = Reduction::Mean;
  std::vector<int64_t> row_shape;  // shape of the reduction='none' result
  int64_t rows() const { return outer * inner; }
};

// Validates every argument of cross_entropy (allow_prob = true) or nll_loss (false) and returns the
// view above. Errors name the argument and follow torch's wording where torch has one.
CrossEntropyPlan plan_cross_entropy(const at::Tensor& input, const at::Tensor& target,
                                    const c10::optional<at::Tensor>& weight, int64_t reduction, int64_t ignore_index,
                                    double label_smoothing, bool allow_prob, const char* op);

// The same view of an input the forward already validated (for the backward ops).
struct ClassView {
  int64_t outer, classes, inner;
  int64_t rows() const { return outer * inner; }
};
inline ClassView class_view(const at::Tensor& input) {
  const int64_t C = input.dim() == 1 ? input.size(0) : input.size(1);
  const int64_t outer = input.dim() == 1 ? 1 : input.size(0);
  int64_t inner = 1;
  for (int64_t d = 2; d < input.dim(); ++d) inner *= input.size(d);
  return {outer, C, inner};
}

// Loss shape and dtype for the forward ops; shared by the kernels (the fake kernels mirror it in Python).
std::vector<int64_t> loss_shape(const CrossEntropyPlan& p);

// Per-row algebra for class-index targets t, label smoothing eps over C classes, class weights w
// (w = 1 without weights), W = sum_c w_c, lse = logsumexp_c x_c = m + log_s (m = max_c x_c),
// sx = sum_c w_c x_c:
//   loss = (1-eps) w_t (lse - x_t) + eps/C (W lse - sx)
//   dloss/dx_c = p_c a - eps/C w_c - [c == t] (1-eps) w_t,  a = (1-eps) w_t + eps/C W,  p = softmax(x)
// lse - x_t is formed as (m - x_t) + log_s, as torch's log_softmax does: with large logits, m + log_s
// alone would round away the small part. torch adds the smoothing term only when eps > 0, so
// eps == 0 must not touch W or sx (they may be inf).
template <typename acc>
struct ClassRowCoef {
  acc loss, a, b_smooth, b_target;
};

template <typename acc>
C10_HOST_DEVICE inline ClassRowCoef<acc> class_row_coef(acc m, acc log_s, acc x_t, acc sx, acc w_t, acc W, acc eps,
                                                        acc C) {
  ClassRowCoef<acc> r;
  r.b_target = (acc(1) - eps) * w_t;
  r.loss = r.b_target * ((m - x_t) + log_s);
  r.a = r.b_target;
  r.b_smooth = acc(0);
  if (eps != acc(0)) {
    r.b_smooth = eps / C;
    r.loss += r.b_smooth * ((W * m - sx) + W * log_s);
    r.a += r.b_smooth * W;
  }
  return r;
}

// Probability-target loss, lse S1 - S2 formed the same way.
template <typename acc>
C10_HOST_DEVICE inline acc prob_row_loss(acc m, acc log_s, acc s1, acc s2, int64_t C) {
  return C == 0 ? acc(0) : (m * s1 - s2) + log_s * s1;  // torch: an empty class sum is 0
}

// Probability targets q, t'_c = (1-eps) q_c + eps/C, S1 = sum_c w_c t'_c, S2 = sum_c w_c t'_c x_c:
//   loss = lse S1 - S2,   dloss/dx_c = p_c S1 - w_c t'_c,   dloss/dq_c = (1-eps) w_c (lse - x_c).

// One row's loss and gradient coefficients, the latter already times the reduction's `scale`:
//   class targets:        g_c = p_c A - B1 w_c - [c == t] B0
//   probability targets:  g_c = p_c A - w_c (B1 q_c + B0)
// a1/a2 are the pass-1 sums (class: sum w_c x_c; probabilities: S1, S2). Every kernel, CPU and
// CUDA, row and strided, takes its coefficients from here.
template <typename acc>
struct RowGrad {
  acc loss, A, B1, B0;
};

template <typename acc>
C10_HOST_DEVICE inline RowGrad<acc> row_grad(bool prob, acc m, acc log_s, acc a1, acc a2, acc x_t, acc w_t, acc W,
                                             acc eps, int64_t C, acc scale) {
  RowGrad<acc> r;
  if (prob) {
    r.loss = prob_row_loss<acc>(m, log_s, a1, a2, C);
    r.A = a1 * scale;
    r.B1 = (acc(1) - eps) * scale;
    r.B0 = eps / static_cast<acc>(C) * scale;
  } else {
    const auto k = class_row_coef<acc>(m, log_s, x_t, a1, w_t, W, eps, static_cast<acc>(C));
    r.loss = k.loss;
    r.A = k.a * scale;
    r.B1 = k.b_smooth * scale;
    r.B0 = k.b_target * scale;
  }
  return r;
}

}  // namespace fastloss
