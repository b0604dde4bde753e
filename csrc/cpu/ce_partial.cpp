// CPU kernels of the partial (class-slice) cross-entropy steps (contract: ops/ce_partial.h):
// ce_partial_stats and ce_partial_grad / ce_partial_grad_, the two O(R * Cs) steps.
//
// One task per block of rows (at::parallel_for, grain about 32K elements); each row is computed by one
// thread alone with sums in a fixed lane order (common/cpu_vec.h), so results never depend on the
// thread count. Per row, the logits are read once from memory; later passes re-read the row from
// cache (a 32000-class float32 row is 128 KB, L2-resident):
//   stats: pass 1 max (and sum_c w_c z_c for label smoothing, or the probability-target sums),
//          pass 2 sum_c exp(z_c - m). Two passes over a cached row beat an online max/sum-exp, whose
//          rescaling costs an extra exp per vector.
//   grad:  one pass g_c = exp(z_c - lse) A - B1 w_c into the output row (the logits row itself for
//          ce_partial_grad_ in float32/float64) and the target's -B0 (probability targets: exp, then the
//          coefficients in a second pass), then the softcap factor / the narrowing to half/bfloat16.
// half/bfloat16 rows are widened into a per-thread float32 scratch row; a softcap is applied to that
// row (z = cap * tanh(x / cap)) and never stored. float32 rows use the vectorized table, float64 is
// scalar.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/alloc.h"
#include "common/common.h"
#include "common/cpu_reduce.h"
#include "common/cpu_vec.h"
#include "common/errors.h"
#include "ops/ce_partial.h"

namespace fastloss {
namespace cpu {
namespace {

using at::Tensor;

// ---------------------------------------------------------------------------------------------
// Row primitives: float goes to the vectorized table (common/cpu_vec.h), double is scalar with the
// same semantics (a NaN never wins the max, as the vector max).
inline void max_wsum(const float* x, const float* w, int64_t n, bool want, float* m, float* s) {
  vec_ops().max_wsum(x, w, n, want, m, s);
}
inline void max_wsum(const double* x, const double* w, int64_t n, bool want, double* m, double* s) {
  double mm = -std::numeric_limits<double>::infinity(), ss = 0;
  for (int64_t i = 0; i < n; ++i) {
    mm = x[i] > mm ? x[i] : mm;
    if (want) ss += w ? w[i] * x[i] : x[i];
  }
  *m = mm;
  if (want) *s = ss;
}
inline float exp_sum(const float* x, float m, int64_t n) { return vec_ops().exp_sum(x, m, n, nullptr); }
inline double exp_sum(const double* x, double m, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  return s;
}
// out_c = exp(x_c + shift), any range (out may equal x)
inline void exp_shift(const float* x, float shift, int64_t n, float* out) {
  vec_ops().exp_add(x, nullptr, shift, n, out);
}
inline void exp_shift(const double* x, double shift, int64_t n, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp(x[i] + shift);
}
// out_c = exp(x_c + shift) a - b w_c (w null: 1), one pass (out may equal x)
inline void exp_axpw(const float* x, float shift, int64_t n, float a, float b, const float* w, float* out) {
  vec_ops().exp_axpw(x, shift, n, a, b, w, out);
}
inline void exp_axpw(const double* x, double shift, int64_t n, double a, double b, const double* w, double* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = std::exp(x[i] + shift) * a - b * (w ? w[i] : 1.0);
}
inline void prob_sums(const float* x, const float* q, const float* w, int64_t n, float c1, float c0, float* s1,
                      float* s2) {
  vec_ops().prob_sums(x, q, w, n, c1, c0, s1, s2);
}
inline void prob_sums(const double* x, const double* q, const double* w, int64_t n, double c1, double c0, double* s1,
                      double* s2) {
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
inline void prob_grad(const float* e, const float* q, const float* w, int64_t n, float a, float b1, float b0,
                      float* out) {
  vec_ops().prob_grad(e, q, w, n, a, b1, b0, out);
}
inline void prob_grad(const double* e, const double* q, const double* w, int64_t n, double a, double b1, double b0,
                      double* out) {
  for (int64_t i = 0; i < n; ++i) {
    double t = q[i] * b1 + b0;
    if (w) t *= w[i];
    out[i] = e[i] * a - t;
  }
}

// The row as acc values: itself when the types agree (and no cap), else widened into `buf`; with a
// softcap, z = cap * tanh(x / cap) into `buf`.
template <typename scalar_t, typename acc>
const acc* read_row(const scalar_t* p, int64_t n, std::optional<double> cap, std::vector<acc>& buf) {
  if constexpr (std::is_same_v<scalar_t, acc>) {
    if (!cap) return p;
  }
  buf.resize(static_cast<size_t>(n));
  acc* b = buf.data();
  const acc* src = b;
  if constexpr (std::is_same_v<scalar_t, acc>) {
    src = p;  // capped straight from the row
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    vec_ops().bf16_to_f32(reinterpret_cast<const uint16_t*>(p), n, b);
  } else {
    for (int64_t i = 0; i < n; ++i) b[i] = static_cast<acc>(p[i]);
  }
  if (cap) {
    if constexpr (std::is_same_v<acc, float>) {
      vec_ops().softcap(src, n, static_cast<float>(*cap), b);
    } else {
      const acc c = static_cast<acc>(*cap), inv = acc(1) / c;
      for (int64_t i = 0; i < n; ++i) b[i] = c * std::tanh(src[i] * inv);
    }
  }
  return b;
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

// Class targets: a target neither ignore_index nor in [0, num_classes) raises; sequential, so the error
// names the first bad position.
template <typename target_t>
void validate_targets(const Tensor& tgt, int64_t num_classes, int64_t ignore_index, const char* op) {
  const target_t* t = tgt.const_data_ptr<target_t>();
  for (int64_t i = 0, n = tgt.numel(); i < n; ++i) {
    const int64_t v = static_cast<int64_t>(t[i]);
    if (v != ignore_index && (v < 0 || v >= num_classes))
      raise_target_out_of_bounds(op, v, num_classes, ignore_index, i);
  }
}

Tensor stats_cpu(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                 int64_t class_offset, int64_t num_classes, int64_t ignore_index, double eps,
                 std::optional<double> softcap) {
  const char* op = "fastloss.ce_partial_stats";
  const bool prob = check_partial_args(logits, target, weight, op);
  const auto dtype = logits.scalar_type();
  const auto adt = acc_dtype(dtype);
  const Tensor x = logits.contiguous();
  const int64_t R = x.size(0), Cs = x.size(1);
  const Tensor tgt = prob ? target.to(adt).contiguous() : target.contiguous();
  const Tensor w = as_acc(weight, adt);
  Tensor out = at::empty({R, 5}, logits.options().dtype(adt));
  if (!prob)
    dispatch_class_target(tgt.scalar_type(), [&](auto tag) {
      validate_targets<decltype(tag)>(tgt, num_classes, ignore_index, op);
    });
  if (R == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_ce_partial_stats_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
    acc* op_ = out.mutable_data_ptr<acc>();
    const acc e = static_cast<acc>(eps), ninf = -std::numeric_limits<acc>::infinity();
    auto run = [&](auto tag) {
      using target_t = decltype(tag);
      at::parallel_for(0, R, write_row_grain(Cs), [&](int64_t begin, int64_t end) {
        std::vector<acc> xbuf, qbuf;
        for (int64_t r = begin; r < end; ++r) {
          const acc* z = read_row<scalar_t, acc>(xp + r * Cs, Cs, softcap, xbuf);
          acc m, a = 0, b = 0, c = 0;
          if (prob) {
            const acc* q = tgt.const_data_ptr<acc>() + r * Cs;
            max_wsum(z, static_cast<const acc*>(nullptr), Cs, false, &m, static_cast<acc*>(nullptr));
            prob_sums(z, q, wp, Cs, acc(1) - e, static_cast<acc>(eps / double(num_classes)), &a, &b);
          } else {
            max_wsum(z, wp, Cs, eps > 0, &m, &c);
            const int64_t t = static_cast<int64_t>(tgt.const_data_ptr<target_t>()[r]);
            const int64_t local = t - class_offset;
            if (t != ignore_index && local >= 0 && local < Cs) {
              a = z[local];
              b = wp ? wp[local] : acc(1);
            }
            if (!(eps > 0)) c = 0;
          }
          // a slice whose max is -inf (every logit -inf, or Cs = 0) adds nothing: s = 0
          const acc s = m == ninf ? acc(0) : exp_sum(z, m, Cs);
          acc* o = op_ + r * 5;
          o[0] = m;
          o[1] = s;
          o[2] = a;
          o[3] = b;
          o[4] = c;
        }
      });
    };
    if (prob)
      run(int64_t{});  // target_t unused
    else
      dispatch_class_target(tgt.scalar_type(), run);
  });
  return out;
}

// Writes the gradient of every row into `out` (may be the logits themselves: each row is read
// before it is written, by the same thread).
void grad_into(const Tensor& x, const Tensor& target, bool prob, const std::optional<Tensor>& weight,
               const Tensor& coef, int64_t class_offset, int64_t ignore_index, std::optional<double> softcap,
               Tensor& out) {
  const auto dtype = x.scalar_type();
  const auto adt = acc_dtype(dtype);
  const int64_t R = x.size(0), Cs = x.size(1);
  if (R == 0 || Cs == 0) return;
  const Tensor tgt = prob ? target.to(adt).contiguous() : target.contiguous();
  const Tensor w = as_acc(weight, adt);
  const Tensor k = coef.to(adt).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_ce_partial_grad_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* gp = out.mutable_data_ptr<scalar_t>();
    const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
    const acc* kp = k.const_data_ptr<acc>();
    const acc cap = softcap ? static_cast<acc>(*softcap) : acc(1), inv_cap = acc(1) / cap;
    auto run = [&](auto tag) {
      using target_t = decltype(tag);
      at::parallel_for(0, R, write_row_grain(Cs), [&](int64_t begin, int64_t end) {
        std::vector<acc> xbuf, ebuf;
        for (int64_t r = begin; r < end; ++r) {
          scalar_t* g = gp + r * Cs;
          int64_t local = -1;
          if (!prob) {
            const int64_t t = static_cast<int64_t>(tgt.const_data_ptr<target_t>()[r]);
            if (t == ignore_index) {  // ignored rows: 0 (whatever the coefficients)
              std::fill(g, g + Cs, scalar_t(0));
              continue;
            }
            local = t - class_offset;  // outside the slice (or, unvalidated, out of range): no -B0 term
          }
          const acc* z = read_row<scalar_t, acc>(xp + r * Cs, Cs, softcap, xbuf);
          acc* e;
          if constexpr (std::is_same_v<scalar_t, acc>) {
            e = g;
          } else {
            ebuf.resize(static_cast<size_t>(Cs));
            e = ebuf.data();
          }
          const acc* kr = kp + r * 4;
          // p_c = exp(z_c - lse)
          if (prob) {
            exp_shift(z, -kr[0], Cs, e);
            prob_grad(e, tgt.const_data_ptr<acc>() + r * Cs, wp, Cs, kr[1], kr[2], kr[3], e);
          } else {
            exp_axpw(z, -kr[0], Cs, kr[1], kr[2], wp, e);
            if (local >= 0 && local < Cs) e[local] -= kr[3];
          }
          if (softcap)
            for (int64_t i = 0; i < Cs; ++i) {
              const acc u = z[i] * inv_cap;
              e[i] *= acc(1) - u * u;
            }
          narrow_row<scalar_t, acc>(e, Cs, g);
        }
      });
    };
    if (prob)
      run(int64_t{});
    else
      dispatch_class_target(tgt.scalar_type(), run);
  });
}

Tensor grad_cpu(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, const Tensor& coef,
                int64_t class_offset, int64_t ignore_index, std::optional<double> softcap) {
  const char* op = "fastloss.ce_partial_grad";
  const bool prob = check_partial_args(logits, target, weight, op);
  check_partial_coef(logits, coef, op);
  const Tensor x = logits.contiguous();
  Tensor out = empty_for_write(x.sizes(), x.options());
  grad_into(x, target, prob, weight, coef, class_offset, ignore_index, softcap, out);
  return out;
}

void grad_inplace_cpu(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                      const Tensor& coef, int64_t class_offset, int64_t ignore_index, std::optional<double> softcap) {
  const char* op = "fastloss.ce_partial_grad_";
  const bool prob = check_partial_args(logits, target, weight, op);
  check_partial_coef(logits, coef, op);
  if (logits.is_contiguous()) {
    Tensor out = logits;
    grad_into(logits, target, prob, weight, coef, class_offset, ignore_index, softcap, out);
  } else {  // a strided view: computed contiguous, then written back
    const Tensor x = logits.contiguous();
    Tensor out = x;
    grad_into(x, target, prob, weight, coef, class_offset, ignore_index, softcap, out);
    logits.copy_(out);
  }
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("ce_partial_stats", &cpu::stats_cpu);
  m.impl("ce_partial_grad", &cpu::grad_cpu);
  m.impl("ce_partial_grad_", &cpu::grad_inplace_cpu);
}

}  // namespace fastloss
