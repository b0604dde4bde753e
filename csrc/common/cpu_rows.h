// Row primitives of the CPU cross-entropy kernels (cpu/cross_entropy.cpp, cpu/ce_partial.cpp), one set
// for both: RowOps<acc> in the accumulate type -- float through the vectorized table (common/cpu_vec.h),
// double scalar with the same semantics (a NaN never wins the max, as the vector max) -- and the
// widening / narrowing of half and bfloat16 rows into a per-thread float scratch row.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cpu_vec.h"

namespace fastloss {
namespace cpu {

template <typename acc>
struct RowOps;

template <>
struct RowOps<float> {
  // *m = max_c x_c; if want: *s = sum_c w_c x_c (w null: 1)
  static void max_wsum(const float* x, const float* w, int64_t n, bool want, float* m, float* s) {
    vec_ops().max_wsum(x, w, n, want, m, s);
  }
  // sum_c exp(x_c - m), storing exp(x_c - m) into e when e is not null
  static float exp_sum(const float* x, float m, int64_t n, float* e) { return vec_ops().exp_sum(x, m, n, e); }
  // out_c = e_c a - b w_c (w null: 1)
  static void axpw(const float* e, int64_t n, float a, float b, const float* w, float* out) {
    vec_ops().axpw(e, n, a, b, w, out);
  }
  // t'_c = c1 q_c + c0; *s1 = sum_c w_c t'_c; *s2 = sum_c w_c t'_c x_c
  static void prob_sums(const float* x, const float* q, const float* w, int64_t n, float c1, float c0, float* s1,
                        float* s2) {
    vec_ops().prob_sums(x, q, w, n, c1, c0, s1, s2);
  }
  // out_c = e_c a - w_c (b1 q_c + b0)
  static void prob_grad(const float* e, const float* q, const float* w, int64_t n, float a, float b1, float b0,
                        float* out) {
    vec_ops().prob_grad(e, q, w, n, a, b1, b0, out);
  }
  // out_c = exp(x_c + shift), any range (out may equal x)
  static void exp_shift(const float* x, float shift, int64_t n, float* out) {
    vec_ops().exp_add(x, nullptr, shift, n, out);
  }
  // out_c = exp(x_c + shift) a - b w_c (w null: 1), one pass (out may equal x)
  static void exp_axpw(const float* x, float shift, int64_t n, float a, float b, const float* w, float* out) {
    vec_ops().exp_axpw(x, shift, n, a, b, w, out);
  }
  // out_c = cap tanh(x_c / cap) (out may equal x)
  static void softcap(const float* x, int64_t n, float cap, float* out) { vec_ops().softcap(x, n, cap, out); }
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
  static void prob_sums(const double* x, const double* q, const double* w, int64_t n, double c1, double c0, double* s1,
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
  static void prob_grad(const double* e, const double* q, const double* w, int64_t n, double a, double b1, double b0,
                        double* out) {
    for (int64_t i = 0; i < n; ++i) {
      double t = q[i] * b1 + b0;
      if (w) t *= w[i];
      out[i] = e[i] * a - t;
    }
  }
  static void exp_shift(const double* x, double shift, int64_t n, double* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = std::exp(x[i] + shift);
  }
  static void exp_axpw(const double* x, double shift, int64_t n, double a, double b, const double* w, double* out) {
    for (int64_t i = 0; i < n; ++i) out[i] = std::exp(x[i] + shift) * a - b * (w ? w[i] : 1.0);
  }
  static void softcap(const double* x, int64_t n, double cap, double* out) {
    const double inv = 1.0 / cap;
    for (int64_t i = 0; i < n; ++i) out[i] = cap * std::tanh(x[i] * inv);
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

// acc values back to a row of scalar_t (src may equal dst when the types agree).
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

}  // namespace cpu
}  // namespace fastloss
