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
#include "common/cpu_vec.h"
#include "common/errors.h"
#include "ops/cross_entropy.h"

namespace fastloss {
namespace cpu {
namespace {

using at::Tensor;

// ---------------------------------------------------------------------------------------------
// Row primitives in the accumulate type: float goes to the vectorized table, double is scalar.
template <typename acc>
struct RowOps;

template <>
struct RowOps<float> {
  static void max_wsum(const float* x, const float* w, int64_t n, bool want, float* m, float* s) {
    vec_ops().max_wsum(x, w, n, want, m, s);
  }
  static float exp_sum(const float* x, float m, int64_t n, float* e) { return vec_ops().exp_sum(x, m, n, e); }
  static void axpw(const float* e, int64_t n, float a, float b, const float* w, float* out) {
    vec_ops().axpw(e, n, a, b, w, out);
  }
  static void prob_sums(const float* x, const float* q, const float* w, int64_t n, float c1, float c0, float* s1,
                        float* s2) {
    vec_ops().prob_sums(x, q, w, n, c1, c0, s1, s2);
  }
  static void prob_grad(const float* e, const float* q, const float* w, int64_t n, float a, float b1, float b0,
                        float* out) {
    vec_ops().prob_grad(e, q, w, n, a, b1, b0, out);
  }
};

template <>
struct RowOps<double> {
  static void max_wsum(const double* x, const double* w, int64_t n, bool want, double* m, double* s) {
    double mm = -std::numeric_limits<double>::infinity(), ss = 0;
    for (int64_t i = 0; i < n; ++i) {
      mm = x[i] > mm ? x[i] : mm;
      if (want) ss += w ? w[i] * x[i] : x[i];
    }
    *m = mm;
    if (want) *s = ss;
  }
  static double exp_sum(const double* x, double m, int64_t n, double* e) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) {
      double v = std::exp(x[i] - m);
      if (e) e[i] = v;
      s += v;
    }
    return s;
  }
  static void axpw(const double* e, int64_t n, double a, double b, const double* w, double* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = e[i] * a - b * (w ? w[i] : 1.0);
  }
  static void prob_sums(const double* x, const double* q, const double* w, int64_t n, double c1, double c0,
                        double* s1, double* s2) {
    double a = 0, b = 0;
    for (int64_t i = 0; i < n; ++i) {
      double t = q[i] * c1 + c0;
      if (w) t *= w[i];
      a += t;
      b += t * x[i];
    }
    *s1 = a;
    *s2 = b;
  }
  static void prob_grad(const double* e, const double* q, const double* w, int64_t n, double a, double b1,
                        double b0, double* out) {
    for (int64_t i = 0; i < n; ++i) {
      double t = q[i] * b1 + b0;
      if (w) t *= w[i];
      out[i] = e[i] * a - t;
    }
  }
};

// A row of scalar_t as acc values: the row itself when the types agree, else widened into `buf`.
template <typename scalar_t, typename acc>
const acc* widen_row(const scalar_t* p, int64_t n, std::vector<acc>& buf) {
  if constexpr (std::is_same_v<scalar_t, acc>) {
    return p;
  } else {
    buf.resize(static_cast<size_t>(n));
    if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
      vec_ops().bf16_to_f32(reinterpret_cast<const uint16_t*>(p), n, buf.data());
    } else {
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<acc>(p[i]);
    }
    return buf.data();
  }
}

template <typename scalar_t, typename acc>
void narrow_row(const acc* src, int64_t n, scalar_t* dst) {
  if constexpr (std::is_same_v<scalar_t, acc>) {
    if (src != dst) std::copy(src, src + n, dst);
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    vec_ops().f32_to_bf16(src, n, reinterpret_cast<uint16_t*>(dst));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  }
}

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
void ce_strided(const CEArgs& a, const scalar_t* x, const void* target, const acc_t<scalar_t>* w,
                acc_t<scalar_t> W, acc_t<scalar_t> scale, acc_t<scalar_t>* row_loss, acc_t<scalar_t>* lse_out,
                scalar_t* grad) {
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

std::tuple<Tensor, Tensor, Tensor> cross_entropy_cpu(const Tensor& input, const Tensor& target,
                                                     const c10::optional<Tensor>& weight, int64_t reduction,
                                                     int64_t ignore_index, double label_smoothing, bool compute_grad,
                                                     bool save_lse, c10::optional<c10::ScalarType> out_dtype) {
  const char* op = "fastloss.cross_entropy";
  const CrossEntropyPlan p =
      plan_cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing, true, op);
  const auto dtype = input.scalar_type();
  const auto adt = acc_dtype(dtype);
  // Rows contiguous in C may keep any row stride (a slice of a wider tensor is read in place).
  const bool rows_path = p.inner == 1;
  Tensor x = (rows_path && input.dim() == 2 && input.stride(1) == 1) ? input : input.contiguous();
  const int64_t x_row_stride = (rows_path && input.dim() == 2) ? x.stride(0) : p.classes;
  Tensor tgt = p.prob_target ? target.to(dtype).contiguous() : target.contiguous();
  Tensor w = as_acc(weight, adt);

  Tensor row_loss = at::empty({p.rows()}, input.options().dtype(adt));
  Tensor lse = save_lse ? at::empty({p.rows()}, input.options().dtype(adt)) : at::empty({0}, input.options().dtype(adt));
  Tensor grad = compute_grad ? empty_for_write(input.sizes(), input.options()) : at::empty({0}, input.options());

  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_cross_entropy_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
    const acc W = w.defined() ? fixed_order_sum<acc>(p.classes, [wp](int64_t i) { return wp[i]; })
                              : static_cast<acc>(p.classes);
    acc denom = 0;
    if (p.prob_target) {
      denom = input.numel() == 0 ? acc(0) : static_cast<acc>(p.rows());
    } else if (tgt.scalar_type() == at::kLong) {
      denom = class_target_denominator<acc, int64_t>(tgt, wp, ignore_index, p.classes, op);
    } else {
      denom = class_target_denominator<acc, uint8_t>(tgt, wp, ignore_index, p.classes, op);
    }
    const acc scale = p.reduction == Reduction::Mean ? acc(1) / denom : acc(1);
    CEArgs a{p.rows(), p.classes, p.inner, p.outer, x_row_stride, ignore_index, label_smoothing, p.prob_target};
    const void* tp = tgt.const_data_ptr();
    acc* lp = lse.numel() ? lse.mutable_data_ptr<acc>() : nullptr;
    scalar_t* gp = compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
    auto run = [&](auto target_tag) {
      using target_t = decltype(target_tag);
      if (rows_path)
        ce_rows<scalar_t, target_t>(a, x.const_data_ptr<scalar_t>(), tp, wp, W, scale,
                                    row_loss.mutable_data_ptr<acc>(), lp, gp);
      else
        ce_strided<scalar_t, target_t>(a, x.const_data_ptr<scalar_t>(), tp, wp, W, scale,
                                       row_loss.mutable_data_ptr<acc>(), lp, gp);
    };
    if (p.prob_target)
      run(int64_t{});  // target_t unused
    else
      dispatch_class_target(tgt.scalar_type(), run);
    return std::make_tuple(finish_loss<acc>(row_loss, p.reduction, denom, out_dtype.value_or(dtype), p.row_shape),
                           grad, lse);
  });
}

template <typename acc>
RowFactor<acc> row_factor(const Tensor& g) {
  return RowFactor<acc>{g.const_data_ptr<acc>(), g.numel() == 1};
}

// d(loss)/d(target) for probability targets: g_r * scale * (1-eps) * w_c * (lse_r - x_c).
Tensor cross_entropy_target_backward_cpu(const Tensor& grad_loss, const Tensor& input, const Tensor& lse,
                                         const c10::optional<Tensor>& weight, int64_t reduction,
                                         double label_smoothing) {
  const Reduction red = to_reduction(reduction, "fastloss.cross_entropy_target_backward");
  const auto dtype = input.scalar_type();
  const auto adt = acc_dtype(dtype);
  Tensor x = input.contiguous();
  const ClassView v = class_view(input);
  const int64_t C = v.classes, outer = v.outer, D = v.inner, rows = v.rows();
  Tensor g = grad_loss.to(adt).contiguous();
  Tensor w = as_acc(weight, adt);
  Tensor out = empty_for_write(input.sizes(), input.options());
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_ce_target_bwd_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const acc denom = input.numel() == 0 ? acc(0) : static_cast<acc>(rows);
    const acc k = (red == Reduction::Mean ? acc(1) / denom : acc(1)) * (acc(1) - static_cast<acc>(label_smoothing));
    const auto f = row_factor<acc>(g);
    const acc* lp = lse.const_data_ptr<acc>();
    const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, outer * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t nc = begin; nc < end; ++nc) {
        const int64_t n = nc / C, c = nc % C;
        const acc wc = wp ? wp[c] : acc(1);
        for (int64_t s = 0; s < D; ++s) {
          const int64_t r = n * D + s, e = nc * D + s;
          op[e] = static_cast<scalar_t>(f(r) * k * wc * (lp[r] - static_cast<acc>(xp[e])));
        }
      }
    });
    return out;
  });
}

// Where class t of row r (= n * D + s) lies in an (N, C, D) tensor; 2-D input without the 64-bit division.
inline int64_t class_offset(int64_t r, int64_t t, int64_t C, int64_t D) {
  if (D == 1) return r * C + t;
  return ((r / D) * C + t) * D + r % D;
}

// nll_loss forward: loss_r = -w_t x[n, t, s] for non-ignored rows; total_weight = sum of those w_t.
std::tuple<Tensor, Tensor> nll_loss_cpu(const Tensor& input, const Tensor& target, const c10::optional<Tensor>& weight,
                                        int64_t reduction, int64_t ignore_index,
                                        c10::optional<c10::ScalarType> out_dtype) {
  const char* op = "fastloss.nll_loss";
  const CrossEntropyPlan p = plan_cross_entropy(input, target, weight, reduction, ignore_index, 0.0, false, op);
  const auto dtype = input.scalar_type();
  const auto adt = acc_dtype(dtype);
  Tensor x = input.contiguous();
  Tensor tgt = target.contiguous();
  Tensor w = as_acc(weight, adt);
  Tensor row_loss = at::empty({p.rows()}, input.options().dtype(adt));
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_nll_loss_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    acc* lp = row_loss.mutable_data_ptr<acc>();
    const int64_t C = p.classes, D = p.inner;
    auto run = [&](auto target_tag) {
      using target_t = decltype(target_tag);
      const acc denom = class_target_denominator<acc, target_t>(tgt, wp, ignore_index, C, op);
      const target_t* tp = tgt.const_data_ptr<target_t>();
      at::parallel_for(0, p.rows(), 4096, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t t = static_cast<int64_t>(tp[r]);
          lp[r] = t == ignore_index ? acc(0) : -(wp ? wp[t] : acc(1)) * static_cast<acc>(xp[class_offset(r, t, C, D)]);
        }
      });
      return std::make_tuple(finish_loss<acc>(row_loss, p.reduction, denom, out_dtype.value_or(dtype), p.row_shape),
                             at::scalar_tensor(static_cast<double>(denom), input.options().dtype(adt)));
    };
    return dispatch_class_target(tgt.scalar_type(), run);
  });
}

// nll_loss backward: zeros everywhere but the target entry of each non-ignored row.
Tensor nll_loss_backward_cpu(const Tensor& grad_loss, const Tensor& input, const Tensor& target,
                             const c10::optional<Tensor>& weight, int64_t reduction, int64_t ignore_index,
                             const Tensor& total_weight) {
  const Reduction red = to_reduction(reduction, "fastloss.nll_loss_backward");
  const auto dtype = input.scalar_type();
  const auto adt = acc_dtype(dtype);
  const ClassView v = class_view(input);
  const int64_t C = v.classes, D = v.inner, rows = target.numel();
  Tensor tgt = target.contiguous();
  Tensor g = grad_loss.to(adt).contiguous();
  Tensor w = as_acc(weight, adt);
  // 2-D input: each row written once, zeros and its target entry (no separate zero-fill pass)
  Tensor out = empty_for_write(input.sizes(), input.options());
  if (D != 1) out.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_nll_loss_bwd_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const acc scale = red == Reduction::Mean ? acc(1) / total_weight.item<acc>() : acc(1);
    const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
    const auto f = row_factor<acc>(g);
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    auto run = [&](auto target_tag) {
      using target_t = decltype(target_tag);
      const target_t* tp = tgt.const_data_ptr<target_t>();
      // 2-D: split by the elements written (whole rows), so both threads share the zero fill and the first
      // touch of the fresh buffer; K-D: only the scattered target entries (at::zeros filled the rest)
      at::parallel_for(0, rows, D == 1 ? write_row_grain(C) : 4096, [&](int64_t begin, int64_t end) {
        if (D == 1) std::fill(op + begin * C, op + end * C, scalar_t(0));
        for (int64_t r = begin; r < end; ++r) {
          const int64_t t = static_cast<int64_t>(tp[r]);
          if (t == ignore_index || t < 0 || t >= C) continue;
          op[class_offset(r, t, C, D)] = static_cast<scalar_t>(-(wp ? wp[t] : acc(1)) * f(r) * scale);
        }
      });
    };
    dispatch_class_target(tgt.scalar_type(), run);
  });
  return out;
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("_cross_entropy_forward", &cpu::cross_entropy_cpu);
  m.impl("_cross_entropy_target_backward", &cpu::cross_entropy_target_backward_cpu);
  m.impl("nll_loss", &cpu::nll_loss_cpu);
  m.impl("nll_loss_backward", &cpu::nll_loss_backward_cpu);
}

}  // namespace fastloss

