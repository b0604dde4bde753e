// CPU kernel of ctc_loss (schema and plan in ops/ctc.cpp, conventions in ops/ctc.h). Parallel over the
// batch; each sample runs alone on one thread:
//   alpha: Tn rows of 2L+1 log-space states (kept when the gradient is wanted, else two rows), each
//          row stored relative to its maximum with the offsets summed in double (see normalize),
//   beta:  backward in time in two rows, and at each t the gradient row of C classes:
//          exp(lp[t, c]) minus the occupancies exp(alpha + beta + nll - lp) of the states labelled c.
// Moves: log_probs read once per sample row for the gradient plus the gathered label columns
// (2L+1 per t, twice); the gradient written once. float rows use the vectorized exp/log of
// common/cpu_vec.h (one log-sum-exp of three terms per state and step); double uses std::exp/log.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/alloc.h"
#include "common/cpu_vec.h"
#include "ops/ctc.h"

namespace fastloss {
namespace cpu {
namespace {

using at::Tensor;

// Row primitives: the vectorized table for float, plain loops for double (same formulas).
template <typename A>
struct CtcRows {
  static void lse3(const A* x0, const A* x1, const A* x2, const A* mask, const A* add, int64_t n, A* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = ctc_lse3(x0[i], x1[i], x2[i] + mask[i]) + add[i];
  }
  static void exp_add(const A* x, const A* y, A shift, int64_t n, A* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = std::exp(x[i] + (y ? y[i] : A(0)) + shift);
  }
};

template <>
struct CtcRows<float> {
  static void lse3(const float* x0, const float* x1, const float* x2, const float* mask, const float* add, int64_t n,
                   float* out) {
    vec_ops().ctc_lse3(x0, x1, x2, mask, add, n, out);
  }
  static void exp_add(const float* x, const float* y, float shift, int64_t n, float* out) {
    vec_ops().exp_add(x, y, shift, n, out);
  }
};

// Shifts a row of states by its maximum (kept finite: an all -inf or NaN row is left alone) and
// returns the shift. Every alpha/beta row is stored this way, its offset summed in double: float32
// rows then round at the size of the row's spread (~|log_probs|), not at the size of alpha itself
// (~T log C), which keeps long sequences' occupancies ~40x closer to float64 than torch's float32.
template <typename A>
double normalize(A* row, int64_t n) {
  A m = -std::numeric_limits<A>::infinity();
  if constexpr (std::is_same_v<A, float>) {
    vec_ops().max_wsum(row, nullptr, n, false, &m, nullptr);
  } else {
    for (int64_t i = 0; i < n; ++i) m = row[i] > m ? row[i] : m;
  }
  if (!std::isfinite(m)) return 0.0;
  for (int64_t i = 0; i < n; ++i) row[i] -= m;
  return static_cast<double>(m);
}

template <typename scalar_t, typename target_t>
struct CtcSample {
  using A = acc_t<scalar_t>;
  const CtcPlan& p;
  const scalar_t* lp;  // (T, N, C)
  const target_t* tg;
  scalar_t* grad;  // (T, N, C) or null
  // per-thread scratch
  std::vector<int64_t> lab;
  std::vector<A> mask, alpha, lpg, beta0, beta1, tmp, occ, row, lprow;
  std::vector<double> aoff;  // alpha_t(s) = stored row t + aoff[t]

  const scalar_t* lp_row(int64_t t, int64_t n) const { return lp + (t * p.N + n) * p.C; }

  void gather(int64_t t, int64_t n, int64_t Sp) {
    const scalar_t* r = lp_row(t, n);
    for (int64_t s = 0; s < Sp; ++s) lpg[s] = static_cast<A>(r[lab[s]]);
  }

  // Returns nll of sample n; writes its gradient rows (times `factor`) when grad != null.
  double run(int64_t n, int64_t Tn, int64_t L, int64_t off, A factor) {
    const A ninf = -std::numeric_limits<A>::infinity();
    const int64_t Sp = 2 * L + 1, W = Sp + 2;
    lab.assign(Sp, p.blank);
    mask.assign(Sp + 2, ninf);
    for (int64_t i = 0; i < L; ++i) lab[2 * i + 1] = static_cast<int64_t>(tg[off + i]);
    for (int64_t s = 3; s < Sp; s += 2) mask[s] = lab[s] != lab[s - 2] ? A(0) : ninf;
    lpg.resize(Sp);
    double nll;
    if (Tn == 0) {
      nll = L == 0 ? -0.0 : std::numeric_limits<double>::infinity();
    } else {
      // alpha rows: [2 x -inf pad | Sp states]; the whole table when the gradient needs it
      const bool keep = grad != nullptr;
      alpha.assign(static_cast<size_t>((keep ? Tn : 2) * W), ninf);
      A* a0 = alpha.data();
      a0[2] = static_cast<A>(lp_row(0, n)[p.blank]);
      if (L > 0) a0[3] = static_cast<A>(lp_row(0, n)[lab[1]]);
      aoff.resize(keep ? Tn : 1);
      double M = normalize(a0 + 2, Sp);
      aoff[0] = M;
      for (int64_t t = 1; t < Tn; ++t) {
        A* prev = alpha.data() + (keep ? t - 1 : (t - 1) % 2) * W;
        A* cur = alpha.data() + (keep ? t : t % 2) * W;
        gather(t, n, Sp);
        CtcRows<A>::lse3(prev + 2, prev + 1, prev, mask.data(), lpg.data(), Sp, cur + 2);
        M += normalize(cur + 2, Sp);
        if (keep) aoff[t] = M;
      }
      const A* last = alpha.data() + (keep ? Tn - 1 : (Tn - 1) % 2) * W + 2;
      nll = -(M + static_cast<double>(L == 0 ? last[0] : ctc_lse2(last[Sp - 1], last[Sp - 2])));
    }
    if (grad) write_grad(n, Tn, L, nll, factor);
    return nll;
  }

  void write_grad(int64_t n, int64_t Tn, int64_t L, double nll, A factor) {
    const A ninf = -std::numeric_limits<A>::infinity();
    const int64_t C = p.C, Sp = 2 * L + 1, W = Sp + 2;
    auto zero_rows = [&](int64_t t0, int64_t t1, A v) {
      for (int64_t t = t0; t < t1; ++t) {
        scalar_t* g = grad + (t * p.N + n) * C;
        for (int64_t c = 0; c < C; ++c) g[c] = static_cast<scalar_t>(v);
      }
    };
    zero_rows(Tn, p.T, A(0));  // no gradient past the input length
    if (Tn == 0) return;
    const double inf = std::numeric_limits<double>::infinity();
    if (!(nll < inf)) {  // impossible alignment (or NaN): torch's formula is NaN in every class there;
      // zero_infinity zeroes an impossible one
      zero_rows(0, Tn, p.zero_infinity && nll == inf ? A(0) : std::numeric_limits<A>::quiet_NaN());
      return;
    }
    beta0.assign(W, ninf);
    beta1.assign(W, ninf);
    tmp.resize(Sp);
    occ.resize(Sp);
    row.resize(C);
    if (!std::is_same_v<scalar_t, float>) lprow.resize(C);
    A* next = beta1.data();  // beta_{t+1}: [Sp states | 2 x -inf pad]
    A* cur = beta0.data();
    double B = 0;  // beta_t(s) = cur[s] + B
    for (int64_t t = Tn - 1; t >= 0; --t) {
      gather(t, n, Sp);
      if (t == Tn - 1) {
        cur[Sp - 1] = lpg[Sp - 1];
        if (L > 0) cur[Sp - 2] = lpg[Sp - 2];
      } else {
        CtcRows<A>::lse3(next, next + 1, next + 2, mask.data() + 2, lpg.data(), Sp, cur);
      }
      B += normalize(cur, Sp);
      // occupancies exp(alpha + beta + nll - lp) (the large offsets cancel in double), then the row
      const A* at = alpha.data() + t * W + 2;
      for (int64_t s = 0; s < Sp; ++s) tmp[s] = cur[s] - lpg[s];
      CtcRows<A>::exp_add(at, tmp.data(), static_cast<A>(aoff[t] + B + nll), Sp, occ.data());
      const scalar_t* r = lp_row(t, n);
      const A* lpa;
      if constexpr (std::is_same_v<scalar_t, float>) {
        lpa = r;
      } else {
        for (int64_t c = 0; c < C; ++c) lprow[c] = static_cast<A>(r[c]);
        lpa = lprow.data();
      }
      CtcRows<A>::exp_add(lpa, nullptr, A(0), C, row.data());
      for (int64_t s = 0; s < Sp; ++s) row[lab[s]] -= occ[s];
      scalar_t* g = grad + (t * p.N + n) * C;
      if constexpr (std::is_same_v<scalar_t, float>) {
        vec_ops().scale(row.data(), C, factor, g);
      } else {
        for (int64_t c = 0; c < C; ++c) g[c] = static_cast<scalar_t>(row[c] * factor);
      }
      std::swap(cur, next);
    }
  }
};

template <typename scalar_t, typename target_t>
void ctc_cpu_impl(const CtcPlan& p, Tensor& loss, Tensor& grad) {
  using A = acc_t<scalar_t>;
  const int64_t N = p.N;
  const int64_t* il = p.meta[0].const_data_ptr<int64_t>();
  const int64_t* tl = p.meta[1].const_data_ptr<int64_t>();
  const int64_t* off = p.meta[2].const_data_ptr<int64_t>();
  std::vector<double> nll(N);
  scalar_t* g = grad.defined() && grad.numel() > 0 ? grad.mutable_data_ptr<scalar_t>() : nullptr;
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    CtcSample<scalar_t, target_t> w{p, p.log_probs.const_data_ptr<scalar_t>(), p.targets.const_data_ptr<target_t>(), g};
    for (int64_t n = begin; n < end; ++n)
      nll[n] =
          w.run(n, il[n], tl[n], off[n], static_cast<A>(ctc_grad_factor(p.reduction == Reduction::Mean, tl[n], N)));
  });
  const double inf = std::numeric_limits<double>::infinity();
  for (int64_t n = 0; n < N; ++n)
    if (p.zero_infinity && nll[n] == inf) nll[n] = 0;
  scalar_t* out = loss.mutable_data_ptr<scalar_t>();
  if (p.reduction == Reduction::None) {
    for (int64_t n = 0; n < N; ++n) out[n] = static_cast<scalar_t>(nll[n]);
    return;
  }
  double s = 0;  // fixed order
  for (int64_t n = 0; n < N; ++n) s += p.reduction == Reduction::Mean ? nll[n] / ctc_target_norm(tl[n]) : nll[n];
  out[0] = static_cast<scalar_t>(p.reduction == Reduction::Mean ? s / static_cast<double>(N) : s);
}

std::tuple<Tensor, Tensor> ctc_loss_cpu(const Tensor& log_probs, const Tensor& targets, const Tensor& input_lengths,
                                        const Tensor& target_lengths, int64_t blank, int64_t reduction,
                                        bool zero_infinity, bool grad_now) {
  const CtcPlan p = plan_ctc(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity);
  Tensor loss = at::empty(p.reduction == Reduction::None ? std::vector<int64_t>{p.N} : std::vector<int64_t>{},
                          p.log_probs.options());
  Tensor grad = grad_buffer(p.log_probs, grad_now);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.log_probs.scalar_type(), "fastloss_ctc_cpu", [&] {
    if (p.targets.scalar_type() == at::kInt)
      ctc_cpu_impl<scalar_t, int32_t>(p, loss, grad);
    else
      ctc_cpu_impl<scalar_t, int64_t>(p, loss, grad);
  });
  return {loss, grad};
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fastloss, CPU, m) { m.impl("_ctc_loss_forward", &cpu::ctc_loss_cpu); }

}  // namespace fastloss
