// CPU kernels of the cross_entropy family.
//
// cross_entropy, rows contiguous in the class dimension (2-D input, or K-D with no spatial extent):
// one task per block of rows (at::parallel_for); per row, pass 1 reads the logits (max, and the
// weighted sum for label smoothing), pass 2 re-reads them from cache and stores e = exp(x - max),
// pass 3 turns e into the gradient in place. Memory traffic: logits read once from DRAM, gradient
// written once; exp is evaluated once per element. half/bfloat16 rows are widened to a per-thread
// float scratch row first. K-D inputs (N, C, d1..dk) go through a strided path over blocks of
// spatial positions. Class-index targets are validated (and the mean's denominator summed) before
// any row is touched.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/alloc.h"
#include "common/cpu_reduce.h"
#include "common/cpu_rows.h"
#include "common/errors.h"
#include "ops/cross_entropy_ops.h"

namespace fastloss {
namespace cpu {
namespace {

using at::Tensor;

// ---------------------------------------------------------------------------------------------
// Class-index targets: validation and the mean's denominator sum_i w[t_i] over non-ignored rows.
template <typename acc, typename target_t>
acc class_target_denominator(const Tensor& target, const acc* w, int64_t ignore_index, int64_t C, const char* op) {
  const target_t* t = target.const_data_ptr<target_t>();
  const int64_t n = target.numel();
  for (int64_t i = 0; i < n; ++i) {  // sequential: the error names the first bad position
    const int64_t v = static_cast<int64_t>(t[i]);
    if (v == ignore_index) continue;
    if (v < 0 || v >= C) raise_target_out_of_bounds(op, v, C, ignore_index, i);
  }
  return fixed_order_sum<acc>(n, [&](int64_t i) {
    const int64_t v = static_cast<int64_t>(t[i]);
    return v == ignore_index ? acc(0) : (w ? w[v] : acc(1));
  });
}

struct CEArgs {
  int64_t rows, C, inner, outer, x_row_stride;
  int64_t ignore_index;
  double eps;
  bool prob;
};

// Rows contiguous in C (inner == 1). Writes row_loss[r], lse[r] (if non-null), grad rows (if non-null).
template <typename scalar_t, typename target_t>
void ce_rows(const CEArgs& a, const scalar_t* x, const void* target, const acc_t<scalar_t>* w, acc_t<scalar_t> W,
             acc_t<scalar_t> scale, acc_t<scalar_t>* row_loss, acc_t<scalar_t>* lse_out, scalar_t* grad) {
  using acc = acc_t<scalar_t>;
  using Ops = RowOps<acc>;
  const int64_t C = a.C;
  const acc eps = static_cast<acc>(a.eps), Cf = static_cast<acc>(C);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  at::parallel_for(0, a.rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc> xbuf, qbuf, ebuf;
    for (int64_t r = begin; r < end; ++r) {
      scalar_t* grow = grad ? grad + r * C : nullptr;
      const acc* xr = widen_row<scalar_t, acc>(x + r * a.x_row_stride, C, xbuf);
      // e (and then the gradient) lives in the output row when it is already acc-typed.
      acc* e = nullptr;
      if (grow) {
        if constexpr (std::is_same_v<scalar_t, acc>) {
          e = grow;
        } else {
          ebuf.resize(static_cast<size_t>(C));
          e = ebuf.data();
        }
      }
      acc m, sx = 0, loss;
      if (!a.prob) {
        const int64_t t = static_cast<int64_t>(static_cast<const target_t*>(target)[r]);
        if (t == a.ignore_index) {
          row_loss[r] = 0;
          if (lse_out) lse_out[r] = 0;
          if (grow) std::fill(grow, grow + C, scalar_t(0));
          continue;
        }
        const bool smooth = eps != acc(0);
        Ops::max_wsum(xr, w, C, smooth, &m, &sx);
        const acc s = Ops::exp_sum(xr, m, C, e);
        const acc log_s = std::log(s), lse = m + log_s;
        const auto g = row_grad<acc>(false, m, log_s, sx, acc(0), xr[t], w ? w[t] : acc(1), W, eps, C, scale);
        loss = g.loss;
        if (lse_out) lse_out[r] = lse;
        if (grow) {
          Ops::axpw(e, C, g.A / s, g.B1, smooth ? w : nullptr, e);
          e[t] -= g.B0;
        }
      } else {
        const scalar_t* qraw = static_cast<const scalar_t*>(target) + r * C;
        const acc* qr = widen_row<scalar_t, acc>(qraw, C, qbuf);
        acc s1, s2;
        Ops::max_wsum(xr, nullptr, C, false, &m, nullptr);
        Ops::prob_sums(xr, qr, w, C, acc(1) - eps, eps / Cf, &s1, &s2);
        const acc s = Ops::exp_sum(xr, m, C, e);
        const acc log_s = std::log(s), lse = m + log_s;
        const auto g = row_grad<acc>(true, m, log_s, s1, s2, acc(0), acc(1), W, eps, C, scale);
        loss = g.loss;
        if (lse_out) lse_out[r] = lse;
        if (grow) Ops::prob_grad(e, qr, w, C, g.A / s, g.B1, g.B0, e);
      }
      row_loss[r] = loss;
      if (grow) narrow_row<scalar_t, acc>(e, C, grow);
    }
  });
}

// K-D inputs: element (n, c, s) at n*C*D + c*D + s. Blocks of kS spatial positions are processed
// together so the inner loops run over contiguous memory.
template <typename scalar_t, typename target_t>
void ce_strided(const CEArgs& a, const scalar_t* x, const void* target, const acc_t<scalar_t>* w, acc_t<scalar_t> W,
                acc_t<scalar_t> scale, acc_t<scalar_t>* row_loss, acc_t<scalar_t>* lse_out, scalar_t* grad) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t kS = 64;
  const int64_t C = a.C, D = a.inner;
  const acc eps = static_cast<acc>(a.eps), Cf = static_cast<acc>(C);
  const int64_t sblocks = (D + kS - 1) / kS;
  at::parallel_for(0, a.outer * sblocks, 1, [&](int64_t begin, int64_t end) {
    acc m[kS], s[kS], s1[kS], s2[kS], ls[kS];
    RowGrad<acc> rg[kS];
    int64_t tt[kS];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / sblocks, s0 = (job % sblocks) * kS, ns = std::min(kS, D - s0);
      const scalar_t* xb = x + n * C * D + s0;
      const scalar_t* qb = a.prob ? static_cast<const scalar_t*>(target) + n * C * D + s0 : nullptr;
      scalar_t* gb = grad ? grad + n * C * D + s0 : nullptr;
      for (int64_t j = 0; j < ns; ++j) {
        m[j] = -std::numeric_limits<acc>::infinity();
        s[j] = s1[j] = s2[j] = 0;
        tt[j] = a.prob ? 0 : static_cast<int64_t>(static_cast<const target_t*>(target)[n * D + s0 + j]);
      }
      for (int64_t c = 0; c < C; ++c) {
        const acc wc = w ? w[c] : acc(1);
        for (int64_t j = 0; j < ns; ++j) {
          const acc v = static_cast<acc>(xb[c * D + j]);
          m[j] = v > m[j] ? v : m[j];
          if (a.prob) {
            const acc t = (static_cast<acc>(qb[c * D + j]) * (acc(1) - eps) + eps / Cf) * wc;
            s1[j] += t;
            s2[j] += t * v;
          } else {
            s1[j] += wc * v;
          }
        }
      }
      for (int64_t c = 0; c < C; ++c)
        for (int64_t j = 0; j < ns; ++j) s[j] += std::exp(static_cast<acc>(xb[c * D + j]) - m[j]);
      for (int64_t j = 0; j < ns; ++j) {
        const int64_t r = n * D + s0 + j;
        ls[j] = std::log(s[j]);
        if (lse_out) lse_out[r] = m[j] + ls[j];
        if (!a.prob && tt[j] == a.ignore_index) {
          rg[j] = RowGrad<acc>{acc(0), acc(0), acc(0), acc(0)};
        } else {
          const acc x_t = a.prob ? acc(0) : static_cast<acc>(xb[tt[j] * D + j]);
          const acc w_t = (a.prob || !w) ? acc(1) : w[tt[j]];
          rg[j] = row_grad<acc>(a.prob, m[j], ls[j], s1[j], s2[j], x_t, w_t, W, eps, C, scale);
        }
        row_loss[r] = rg[j].loss;
      }
      if (!gb) continue;
      for (int64_t c = 0; c < C; ++c) {
        const acc wc = w ? w[c] : acc(1);
        for (int64_t j = 0; j < ns; ++j) {
          const acc p = std::exp((static_cast<acc>(xb[c * D + j]) - m[j]) - ls[j]);
          acc g;
          if (a.prob) {
            g = p * rg[j].A - wc * (static_cast<acc>(qb[c * D + j]) * rg[j].B1 + rg[j].B0);
          } else if (tt[j] == a.ignore_index) {
            g = 0;
          } else {
            g = p * rg[j].A - rg[j].B1 * wc - (c == tt[j] ? rg[j].B0 : acc(0));
          }
          gb[c * D + j] = static_cast<scalar_t>(g);
        }
      }
    }
  });
}

// Where class t of row r (= n * D + s) lies in an (N, C, D) tensor; 2-D input without the 64-bit division.
inline int64_t class_offset(int64_t r, int64_t t, int64_t C, int64_t D) {
  if (D == 1) return r * C + t;
  return ((r / D) * C + t) * D + r % D;
}

// The device half of CrossEntropyOps (ops/cross_entropy_ops.h).
struct CpuCrossEntropy {
  static void check_row_length(const char*, int64_t) {}  // 64-bit row walks: no limit

  // Class targets are validated and the mean's denominator summed on the host before any row is touched.
  template <typename scalar_t, typename target_t>
  static Tensor cross_entropy(const CrossEntropyPlan& p, CeBuffers& b, int64_t ignore_index, double eps,
                              c10::ScalarType out_dtype, const char* op) {
    using acc = acc_t<scalar_t>;
    const acc* wp = b.weight.defined() ? b.weight.const_data_ptr<acc>() : nullptr;
    const acc W = wp ? fixed_order_sum<acc>(p.classes, [wp](int64_t i) { return wp[i]; }) : static_cast<acc>(p.classes);
    const acc denom = p.prob_target
                          ? (b.x.numel() == 0 ? acc(0) : static_cast<acc>(p.rows()))
                          : class_target_denominator<acc, target_t>(b.target, wp, ignore_index, p.classes, op);
    const acc scale = p.reduction == Reduction::Mean ? acc(1) / denom : acc(1);
    const CEArgs a{p.rows(), p.classes, p.inner, p.outer, b.x_row_stride, ignore_index, eps, p.prob_target};
    const void* tp = b.target.const_data_ptr();
    acc* lp = b.lse.numel() ? b.lse.mutable_data_ptr<acc>() : nullptr;
    scalar_t* gp = b.grad.numel() ? b.grad.mutable_data_ptr<scalar_t>() : nullptr;
    acc* rl = b.row_loss.mutable_data_ptr<acc>();
    if (b.rows_path)
      ce_rows<scalar_t, target_t>(a, b.x.const_data_ptr<scalar_t>(), tp, wp, W, scale, rl, lp, gp);
    else
      ce_strided<scalar_t, target_t>(a, b.x.const_data_ptr<scalar_t>(), tp, wp, W, scale, rl, lp, gp);
    return finish_loss<acc>(b.row_loss, p.reduction, denom, out_dtype, p.row_shape);
  }

  // loss_r = -w_t x[n, t, s] for non-ignored rows; total_weight = the sum of those w_t.
  template <typename scalar_t, typename target_t>
  static std::tuple<Tensor, Tensor> nll_loss(const CrossEntropyPlan& p, const Tensor& x, const Tensor& tgt,
                                             const Tensor& w, Tensor& row_loss, int64_t ignore_index,
                                             c10::ScalarType out_dtype, const char* op) {
    using acc = acc_t<scalar_t>;
    const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    acc* lp = row_loss.mutable_data_ptr<acc>();
    const int64_t C = p.classes, D = p.inner;
    const acc denom = class_target_denominator<acc, target_t>(tgt, wp, ignore_index, C, op);
    const target_t* tp = tgt.const_data_ptr<target_t>();
    at::parallel_for(0, p.rows(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t t = static_cast<int64_t>(tp[r]);
        lp[r] = t == ignore_index ? acc(0) : -(wp ? wp[t] : acc(1)) * static_cast<acc>(xp[class_offset(r, t, C, D)]);
      }
    });
    return std::make_tuple(
        finish_loss<acc>(row_loss, p.reduction, denom, out_dtype, p.row_shape),
        at::scalar_tensor(static_cast<double>(denom), x.options().dtype(acc_dtype(x.scalar_type()))));
  }

  template <typename scalar_t>
  static void target_backward(const Tensor& x, const acc_t<scalar_t>* lp, const acc_t<scalar_t>* wp,
                              RowFactor<acc_t<scalar_t>> f, acc_t<scalar_t> k, const ClassView& v, Tensor& out) {
    using acc = acc_t<scalar_t>;
    const int64_t C = v.classes, D = v.inner;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, v.outer * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t nc = begin; nc < end; ++nc) {
        const int64_t n = nc / C, c = nc % C;
        const acc wc = wp ? wp[c] : acc(1);
        for (int64_t s = 0; s < D; ++s) {
          const int64_t r = n * D + s, e = nc * D + s;
          op[e] = static_cast<scalar_t>(f(r) * k * wc * (lp[r] - static_cast<acc>(xp[e])));
        }
      }
    });
  }

  // 2-D input: each row is written once by nll_backward, zeros and its target entry (no separate zero-fill
  // pass); K-D: zero-filled here, then only the scattered target entries.
  static Tensor nll_grad_buffer(const Tensor& input, const ClassView& v) {
    Tensor out = empty_for_write(input.sizes(), input.options());
    if (v.inner != 1) out.zero_();
    return out;
  }

  template <typename scalar_t, typename target_t>
  static void nll_backward(const Tensor& tgt, const acc_t<scalar_t>* wp, RowFactor<acc_t<scalar_t>> f,
                           const Tensor& total_weight, bool mean, const ClassView& v, int64_t ignore_index,
                           Tensor& out) {
    using acc = acc_t<scalar_t>;
    const int64_t C = v.classes, D = v.inner, rows = tgt.numel();
    const acc scale = mean ? acc(1) / total_weight.item<acc>() : acc(1);
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    const target_t* tp = tgt.const_data_ptr<target_t>();
    // 2-D: split by the elements written (whole rows), so both threads share the zero fill and the first
    // touch of the fresh buffer; K-D: only the scattered target entries
    at::parallel_for(0, rows, D == 1 ? write_row_grain(C) : 4096, [&](int64_t begin, int64_t end) {
      if (D == 1) std::fill(op + begin * C, op + end * C, scalar_t(0));
      for (int64_t r = begin; r < end; ++r) {
        const int64_t t = static_cast<int64_t>(tp[r]);
        if (t == ignore_index || t < 0 || t >= C) continue;
        op[class_offset(r, t, C, D)] = static_cast<scalar_t>(-(wp ? wp[t] : acc(1)) * f(r) * scale);
      }
    });
  }
};

using Ops = CrossEntropyOps<CpuCrossEntropy>;
// The functions the registrations below name.
constexpr auto& cross_entropy_cpu = Ops::cross_entropy;
constexpr auto& cross_entropy_target_backward_cpu = Ops::cross_entropy_target_backward;
constexpr auto& nll_loss_cpu = Ops::nll_loss;
constexpr auto& nll_loss_backward_cpu = Ops::nll_loss_backward;

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("_cross_entropy_forward", &cpu::cross_entropy_cpu);
  m.impl("_cross_entropy_target_backward", &cpu::cross_entropy_target_backward_cpu);
  m.impl("nll_loss", &cpu::nll_loss_cpu);
  m.impl("nll_loss_backward", &cpu::nll_loss_backward_cpu);
}

}  // namespace fastloss
