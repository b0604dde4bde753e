// The row-wise embedding losses: triplet_margin (three (rows, D) inputs, p-norm distances) and
// cosine_embedding (two inputs and one target per row). Both are "reduce each row to a few sums,
// turn them into a loss and per-row coefficients, then write the gradient of every element from
// those coefficients", so one engine per device (cpu/embedding.cpp, cuda/embedding.cu) runs both,
// and the math below is the single definition both devices compile.
//
// A Math type provides: kIn (inputs), kState (accumulators), init/add/merge over the row, finish()
// -> Row (loss and coefficients, gradients already scaled by the row's factor k), grad() per element.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "common/common.h"
#include "common/elem_math.h"

namespace fastloss {

// Which p-norm the triplet distance uses (chosen on the host, a template argument on the device).
enum class PNorm { Zero, One, Two, Inf, General };

inline PNorm to_pnorm(double p) {
  if (p == 0.0) return PNorm::Zero;
  if (p == 1.0) return PNorm::One;
  if (p == 2.0) return PNorm::Two;
  if (std::isinf(p) && p > 0) return PNorm::Inf;
  return PNorm::General;
}

// (max, count of elements equal to it) merge for the inf-norm, NaN winning as in torch's amax.
// Commutative, so a butterfly of merges leaves the same bits in every lane.
template <typename acc>
C10_HOST_DEVICE inline void max_count_merge(acc& m, acc& c, acc om, acc oc) {
  if (om != om) {
    if (m != m) {
      c += oc;
    } else {
      m = om;
      c = oc;
    }
  } else if (m != m) {
  } else if (om > m) {
    m = om;
    c = oc;
  } else if (om == m) {
    c += oc;
  }
}

// triplet_margin_loss: loss = max(0, margin + d(a,p) - d_neg), d(x,y) = ||x - y + eps||_p, and with
// swap d_neg = min(d(a,n), d(p,n)) (ties split the gradient in half, as torch.minimum).
template <typename acc, PNorm PN>
struct TripletMath {
  static constexpr int kIn = 3;
  static constexpr int kState = PN == PNorm::Inf ? 6 : 3;  // per distance: sum (or max, then count)
  struct Row {
    acc loss;
    acc d[3];   // the three distances (d(p,n) only with swap)
    acc sc[3];  // d(loss)/d(distance) * k * the norm's common factor
  };
  acc margin, p, eps;
  bool swap;

  C10_HOST_DEVICE void init(acc* s) const {
    for (int j = 0; j < kState; ++j) s[j] = acc(0);
  }
  C10_HOST_DEVICE acc term(acc x) const {
    const acc z = elem_abs(x);
    if constexpr (PN == PNorm::Zero)
      return z != acc(0) ? acc(1) : acc(0);
    else if constexpr (PN == PNorm::One)
      return z;
    else if constexpr (PN == PNorm::Two)
      return x * x;
    else
      return std::pow(z, p);  // General (Inf does not use term)
  }
  C10_HOST_DEVICE void add(acc* s, const acc* in) const {
    const acc x[3] = {in[0] - in[1] + eps, in[0] - in[2] + eps, in[1] - in[2] + eps};
    const int nd = swap ? 3 : 2;
    for (int j = 0; j < nd; ++j) {
      if constexpr (PN == PNorm::Inf)
        max_count_merge(s[j], s[3 + j], elem_abs(x[j]), acc(1));
      else
        s[j] += term(x[j]);
    }
  }
  C10_HOST_DEVICE void merge(acc* s, const acc* o) const {
    for (int j = 0; j < 3; ++j) {
      if constexpr (PN == PNorm::Inf)
        max_count_merge(s[j], s[3 + j], o[j], o[3 + j]);
      else
        s[j] += o[j];
    }
  }
  C10_HOST_DEVICE acc dist(acc s) const {
    if constexpr (PN == PNorm::Two)
      return std::sqrt(s);
    else if constexpr (PN == PNorm::General)
      return std::pow(s, acc(1) / p);
    else
      return s;  // Zero (count), One (sum), Inf (max)
  }
  // The norm's factor in d(dist)/dx = factor * u(x) (see grad): torch's norm_backward, which
  // gives 0 where the norm is 0.
  C10_HOST_DEVICE acc norm_factor(acc d, acc count) const {
    if constexpr (PN == PNorm::Zero)
      return acc(0);
    else if constexpr (PN == PNorm::One)
      return acc(1);
    else if constexpr (PN == PNorm::Two)
      return d == acc(0) ? acc(0) : acc(1) / d;
    else if constexpr (PN == PNorm::Inf)
      return acc(1) / count;
    else
      return d == acc(0) ? acc(0) : std::pow(d, acc(1) - p);
  }
  C10_HOST_DEVICE acc u(acc x, acc d) const {
    if constexpr (PN == PNorm::Zero)
      return acc(0);
    else if constexpr (PN == PNorm::One)
      return elem_sign(x);
    else if constexpr (PN == PNorm::Two)
      return x;
    else if constexpr (PN == PNorm::Inf) {
      const acc z = elem_abs(x);
      return z == d || z != z ? elem_sign(x) : acc(0);
    } else {
      return x == acc(0) ? acc(0) : elem_sign(x) * std::pow(elem_abs(x), p - acc(1));
    }
  }
  C10_HOST_DEVICE Row finish(const acc* s, acc /*target*/, acc k) const {
    Row r;
    for (int j = 0; j < 3; ++j) r.d[j] = dist(s[j]);
    acc dneg = r.d[1], w_an = acc(1), w_pn = acc(0);
    if (swap) {
      if (r.d[2] < r.d[1]) {
        dneg = r.d[2];
        w_an = acc(0);
        w_pn = acc(1);
      } else if (r.d[2] == r.d[1]) {
        w_an = w_pn = acc(0.5);
      } else if (!(r.d[1] < r.d[2])) {  // a NaN: torch.minimum returns NaN
        dneg = r.d[1] + r.d[2];
        w_pn = acc(1);
      }
    }
    const acc z = margin + r.d[0] - dneg;
    r.loss = z > acc(0) || z != z ? z : acc(0);
    const acc e = z > acc(0) ? k : acc(0);  // strict: clamp_min passes no gradient at 0
    const acc cnt[3] = {PN == PNorm::Inf ? s[3] : acc(1), PN == PNorm::Inf ? s[4] : acc(1),
                        PN == PNorm::Inf ? s[5] : acc(1)};
    r.sc[0] = e == acc(0) ? acc(0) : e * norm_factor(r.d[0], cnt[0]);
    r.sc[1] = e == acc(0) || w_an == acc(0) ? acc(0) : -e * w_an * norm_factor(r.d[1], cnt[1]);
    r.sc[2] = e == acc(0) || w_pn == acc(0) ? acc(0) : -e * w_pn * norm_factor(r.d[2], cnt[2]);
    return r;
  }
  // g[0..2]: gradients of anchor, positive, negative at one element.
  C10_HOST_DEVICE void grad(const Row& r, const acc* in, acc* g) const {
    const acc g_ap = r.sc[0] == acc(0) ? acc(0) : r.sc[0] * u(in[0] - in[1] + eps, r.d[0]);
    const acc g_an = r.sc[1] == acc(0) ? acc(0) : r.sc[1] * u(in[0] - in[2] + eps, r.d[1]);
    const acc g_pn = r.sc[2] == acc(0) ? acc(0) : r.sc[2] * u(in[1] - in[2] + eps, r.d[2]);
    g[0] = g_ap + g_an;
    g[1] = g_pn - g_ap;
    g[2] = -g_an - g_pn;
  }
};

// cosine_embedding_loss: cos = <x1,x2> / sqrt((|x1|^2 + 1e-12)(|x2|^2 + 1e-12)); target 1 gives
// 1 - cos, target -1 max(0, cos - margin), any other target 0.
template <typename acc>
struct CosineMath {
  static constexpr int kIn = 2;
  static constexpr int kState = 3;  // <x1,x2>, |x1|^2, |x2|^2
  struct Row {
    acc loss;
    acc a, b1, b2;  // g1 = a x2 - b1 x1, g2 = a x1 - b2 x2
  };
  acc margin;

  C10_HOST_DEVICE void init(acc* s) const { s[0] = s[1] = s[2] = acc(0); }
  C10_HOST_DEVICE void add(acc* s, const acc* in) const {
    s[0] += in[0] * in[1];
    s[1] += in[0] * in[0];
    s[2] += in[1] * in[1];
  }
  C10_HOST_DEVICE void merge(acc* s, const acc* o) const {
    s[0] += o[0];
    s[1] += o[1];
    s[2] += o[2];
  }
  C10_HOST_DEVICE Row finish(const acc* s, acc target, acc k) const {
    constexpr float kEps = 1e-12f;  // torch's EPSILON is a float: 9.99999996e-13 in float64 too
    const acc m1 = s[1] + acc(kEps), m2 = s[2] + acc(kEps);
    const acc den = std::sqrt(m1 * m2);
    const acc cos = s[0] / den;
    Row r;
    acc coef = acc(0);
    if (target == acc(1)) {
      r.loss = acc(1) - cos;
      coef = -k;
    } else if (target == acc(-1)) {
      const acc z = cos - margin;
      r.loss = z > acc(0) || z != z ? z : acc(0);
      coef = z > acc(0) ? k : acc(0);
    } else {
      r.loss = acc(0);
    }
    r.a = coef / den;
    r.b1 = coef * cos / m1;
    r.b2 = coef * cos / m2;
    return r;
  }
  C10_HOST_DEVICE void grad(const Row& r, const acc* in, acc* g) const {
    g[0] = r.a * in[1] - r.b1 * in[0];
    g[1] = r.a * in[0] - r.b2 * in[1];
  }
};

// Calls f(std::integral_constant<PNorm, P>{}) for the runtime norm.
template <typename F>
decltype(auto) dispatch_pnorm(PNorm pn, F&& f) {
  switch (pn) {
    case PNorm::Zero: return f(std::integral_constant<PNorm, PNorm::Zero>{});
    case PNorm::One: return f(std::integral_constant<PNorm, PNorm::One>{});
    case PNorm::Two: return f(std::integral_constant<PNorm, PNorm::Two>{});
    case PNorm::Inf: return f(std::integral_constant<PNorm, PNorm::Inf>{});
    default: return f(std::integral_constant<PNorm, PNorm::General>{});
  }
}

// Inputs of one shape (..., D), viewed as (rows, D) and made contiguous once; the loss has the
// leading shape for 'none' (a 0-d input is one row of one element).
struct RowPlan {
  Reduction reduction;
  int64_t rows = 1, D = 1;
  std::vector<int64_t> row_shape;
  std::vector<at::Tensor> in;  // contiguous
  at::Tensor target;           // cosine: one value per row, the input's dtype, contiguous
  c10::ScalarType out_dtype;
};

RowPlan plan_rows(const char* op, std::vector<at::Tensor> inputs, const c10::optional<at::Tensor>& target,
                  int64_t reduction, c10::optional<c10::ScalarType> out_dtype);

// The backward's per-row factor: grad_loss per row ('none') or grad_loss / rows (mean) or
// grad_loss (sum), in the accumulate type on grad_loss's device (no host sync).
at::Tensor row_backward_factor(const RowPlan& p, const at::Tensor& grad_loss, const char* op);

}  // namespace fastloss
