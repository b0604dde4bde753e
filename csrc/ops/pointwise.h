// The pointwise loss family: l1, mse, smooth_l1, huber, margin_ranking, hinge_embedding, soft_margin,
// kl_div, binary_cross_entropy[_with_logits] (and multilabel_soft_margin through it), poisson_nll,
// gaussian_nll, sigmoid_focal.
// Every one is elementwise over up to three same-shaped tensors (a, b, c) followed by a reduction,
// so one engine (cpu/pointwise.cpp, cuda/pointwise.cu) serves all of them, and the per-element math
// below is the single definition both devices compile (host and device).
//
//   kind             a        b        c (optional)   d (optional)   param                param2
//   L1, MSE          input    target   weight         -              -                    -
//   SmoothL1         input    target   -              -              beta (> 0; beta == 0 is L1, as torch)
//   Huber            input    target   weight         -              delta (> 0)          -
//   MarginRanking    input1   input2   target         -              margin               -
//   HingeEmbedding   input    target   -              -              margin               -
//   SoftMargin       input    target   -              -              -                    -
//   KLDiv            input    target   -              -              log_target (0 or 1)  -
//   BCE              input    target   weight         -              -                    -
//   BCEWithLogits    input    target   weight         pos_weight     has pos_weight       -
//   PoissonNLL       input    target   -              -              eps                  log_input + 2 full
//   GaussianNLL      input    target   var            -              eps                  full
//   SigmoidFocal     input    target   -              -              alpha                gamma
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "common/common.h"
#include "common/elem_math.h"

namespace fastloss {

enum class PwKind : int64_t {
  L1 = 0,
  MSE = 1,
  SmoothL1 = 2,
  Huber = 3,
  MarginRanking = 4,
  HingeEmbedding = 5,
  SoftMargin = 6,
  KLDiv = 7,
  BCE = 8,
  BCEWithLogits = 9,
  PoissonNLL = 10,
  GaussianNLL = 11,
  SigmoidFocal = 12
};
constexpr int64_t kPwKinds = 13;

// The loss of one element and its derivatives by a, b and c. Every hinge is strict (gradient 0 at
// exactly 0), and every NaN propagates, as in torch's own formulas.
template <typename acc>
struct PwOut {
  acc loss, da, db, dc;
};

// max(u, 0) keeping NaN (clamp_min propagates it).
template <typename acc>
C10_HOST_DEVICE inline acc pw_relu(acc u) {
  return u > acc(0) || u != u ? u : acc(0);
}

// lo if x < lo, hi if x > hi, else x (NaN stays NaN).
template <typename acc>
C10_HOST_DEVICE inline acc pw_clamp(acc x, acc lo, acc hi) {
  const acc y = x < lo ? lo : x;
  return y > hi ? hi : y;
}

// The lane operations of ops/pointwise_lanes.inc for one scalar lane (cpu/vec_impl.inc has the 8-float ones).
// clang-format off
template <typename acc> C10_HOST_DEVICE C10_ALWAYS_INLINE acc pw_sel(bool c, acc x, acc y) { return c ? x : y; }
template <typename acc> C10_HOST_DEVICE C10_ALWAYS_INLINE acc pw_exp(acc x) { return std::exp(x); }
template <typename acc> C10_HOST_DEVICE C10_ALWAYS_INLINE acc pw_log(acc x) { return std::log(x); }
template <typename acc> C10_HOST_DEVICE C10_ALWAYS_INLINE acc pw_log1p(acc z) { return std::log1p(z); }
template <typename acc> C10_HOST_DEVICE C10_ALWAYS_INLINE acc pw_log1p_pos(acc z) { return std::log1p(z); }
// clang-format on
// mg = m^g, dmg = d(m^g)/dm = g m^(g - 1); g == 0: 1 and 0 (pow(m, 0) = 1 with gradient 0, as torch's pow).
template <typename acc>
C10_HOST_DEVICE C10_ALWAYS_INLINE void pw_powd(acc m, acc g, acc& mg, acc& dmg) {
  if (g == acc(0)) {
    mg = acc(1);
    dmg = acc(0);
  } else {
    mg = std::pow(m, g);
    dmg = g * std::pow(m, g - acc(1));
  }
}

#include "ops/pointwise_lanes.inc"

// binary_cross_entropy's domain: a code for the first bad element (2 i + 0 for the input, + 1 for
// the target, so the input is reported first as torch does) or -1. NaN is outside [0, 1], as in torch.
template <typename acc>
C10_HOST_DEVICE inline int64_t pw_bce_bad(acc x, acc t, int64_t i) {
  if (!(x >= acc(0) && x <= acc(1))) return 2 * i;
  if (!(t >= acc(0) && t <= acc(1))) return 2 * i + 1;
  return -1;
}

template <PwKind K, typename acc>
C10_HOST_DEVICE inline PwOut<acc> pw_eval(acc a, acc b, acc c, acc d, acc param, acc param2) {
  PwOut<acc> o;
  if constexpr (K == PwKind::L1 || K == PwKind::MSE || K == PwKind::SmoothL1 || K == PwKind::Huber) {
    const acc d = a - b;
    acc f, fp;  // unweighted loss and its derivative by d
    if constexpr (K == PwKind::L1) {
      f = elem_abs(d);
      fp = elem_sign(d);
    } else if constexpr (K == PwKind::MSE) {
      f = d * d;
      fp = acc(2) * d;
    } else if constexpr (K == PwKind::SmoothL1) {  // param = beta > 0
      // Both branches computed, then selected: selects of plain values vectorize, a division
      // inside a ?: does not (it might trap). fp is torch's d < -beta ? -1 : d > beta ? 1 : d/beta.
      const acc z = d < acc(0) ? -d : d;
      const acc quad = acc(0.5) * d * d / param, lin = z - acc(0.5) * param;
      f = z < param ? quad : lin;
      fp = pw_clamp(d / param, acc(-1), acc(1));
    } else {  // Huber, param = delta > 0
      const acc z = d < acc(0) ? -d : d;
      const acc quad = acc(0.5) * d * d, lin = param * (z - acc(0.5) * param);
      f = z < param ? quad : lin;
      fp = pw_clamp(d, -param, param);
    }
    o.loss = c * f;
    o.da = c * fp;
    o.db = -o.da;
    o.dc = f;
  } else if constexpr (K == PwKind::MarginRanking) {  // c = target
    const acc diff = a - b;
    const acc u = -c * diff + param;
    const acc gate = u > acc(0) ? acc(1) : acc(0);  // multiplied, as torch: a NaN operand gives NaN
    o.loss = pw_relu(u);
    o.da = -c * gate;
    o.db = c * gate;
    o.dc = -diff * gate;
  } else if constexpr (K == PwKind::SoftMargin) {  // ops/pointwise_lanes.inc (with the CPU's vector path)
    pw_soft_margin_lanes<acc, acc>(a, b, o.loss, o.da, o.db);
    o.dc = acc(0);
  } else if constexpr (K == PwKind::KLDiv) {  // param: log_target
    pw_kl_div_lanes<acc, acc>(a, b, param != acc(0), o.loss, o.da, o.db);
    o.dc = acc(0);
  } else if constexpr (K == PwKind::BCE || K == PwKind::BCEWithLogits) {  // c = weight; BCEWithLogits:
    // d = pos_weight (param != 0). The unweighted loss and gradients, then the weight
    acc f, fa, fb;
    if constexpr (K == PwKind::BCE)
      pw_bce_lanes<acc, acc>(a, b, f, fa, fb);
    else
      pw_bce_logits_lanes<acc, acc>(a, b, d, param != acc(0), f, fa, fb);
    o.loss = c * f;
    o.da = c * fa;
    o.db = c * fb;
    o.dc = f;
  } else if constexpr (K == PwKind::PoissonNLL) {  // param = eps; param2 = log_input + 2 full
    const int flags = static_cast<int>(param2);
    if (flags & 1) {  // exp(x) - t x
      const acc e = std::exp(a);
      o.loss = e - b * a;
      o.da = e - b;
      o.db = -a;
    } else {  // x - t log(x + eps)
      const acc xe = a + param;
      const acc l = std::log(xe);
      o.loss = a - b * l;
      o.da = acc(1) - b / xe;
      o.db = -l;
    }
    if (flags & 2) {  // Stirling: t log t - t + log(2 pi t) / 2 where t > 1 (NaN kept: masked only where t <= 1).
      // Its target gradient where masked is 0 * (log t + 1/(2t)), as torch's autograd computes it: NaN at t <= 0
      const acc lt = std::log(b);
      const bool keep = !(b <= acc(1));
      const acc ds = lt + acc(0.5) / b;
      o.loss += keep ? b * lt - b + acc(0.5) * std::log(acc(6.283185307179586) * b) : acc(0);
      o.db += keep ? ds : acc(0) * ds;
    }
    o.dc = acc(0);
  } else if constexpr (K == PwKind::GaussianNLL) {  // c = var, clamped at eps (param) as torch does under
    // no_grad: the gradient passes the clamp unchanged. param2 = full
    const acc v = c < param ? param : c;
    const acc r = a - b, iv = acc(1) / v;
    const acc q = r * r / v;
    o.loss = acc(0.5) * (std::log(v) + q) + (param2 != acc(0) ? acc(0.9189385332046727) : acc(0));
    o.da = r / v;
    o.db = -o.da;
    o.dc = acc(0.5) * (iv - q * iv);
  } else if constexpr (K == PwKind::SigmoidFocal) {  // param = alpha (< 0: no alpha term), param2 = gamma
    pw_focal_lanes<acc, acc>(a, b, param, param2, o.loss, o.da, o.db);
    o.dc = acc(0);
  } else {  // HingeEmbedding: b = target; target != 1 adds max(margin - a, 0), target != -1 adds a
    const acc u = param - a;
    const bool not_pos = b != acc(1), not_neg = b != acc(-1);
    o.loss = (not_pos ? pw_relu(u) : acc(0)) + (not_neg ? a : acc(0));
    o.da = (not_neg ? acc(1) : acc(0)) - (not_pos && u > acc(0) ? acc(1) : acc(0));
    o.db = acc(0);
    o.dc = acc(0);
  }
  return o;
}

// l1 and mse with a weight average by sum(weight), not by the element count (torch's rule).
inline bool pw_mean_by_weight_sum(PwKind k, bool has_c) { return has_c && (k == PwKind::L1 || k == PwKind::MSE); }

// A third or fourth tensor that broadcasts to the input's shape without being materialized
// (pos_weight (C,), var (N, 1), a weight (1, C, 1), a scalar var): element i reads
// src[(i / rep) % per]. per == 0: dense, element i reads src[i].
struct PwBcast {
  int64_t rep = 1, per = 0;
  C10_HOST_DEVICE int64_t at(int64_t i) const { return per ? (i / rep) % per : i; }
};

// Walks a PwBcast from element i on, one element per next(): one division at the start only.
template <typename T>
struct PwBcastCursor {
  const T* src;
  int64_t rep, per, r, idx;
  C10_HOST_DEVICE PwBcastCursor(const T* s, const PwBcast& b, int64_t i) : src(s), rep(b.rep), per(b.per) {
    if (((static_cast<uint64_t>(i) | static_cast<uint64_t>(rep) | static_cast<uint64_t>(per)) >> 32) == 0) {
      const uint32_t q = static_cast<uint32_t>(i) / static_cast<uint32_t>(rep);  // 32-bit: a few times cheaper on GPUs
      r = static_cast<uint32_t>(i) - q * static_cast<uint32_t>(rep);
      idx = q % static_cast<uint32_t>(per);
    } else {
      const int64_t q = i / rep;
      r = i - q * rep;
      idx = q % per;
    }
  }
  C10_HOST_DEVICE T next() {
    const T v = src[idx];
    if (++r == rep) {
      r = 0;
      if (++idx == per) idx = 0;
    }
    return v;
  }
};

// The pointers of one kernel call, filled on the host by make_pw_io (ops/pointwise_ops.h) and read
// by both devices' loops; null = absent / not wanted.
template <typename scalar_t>
struct PwIo {
  using acc = acc_t<scalar_t>;
  const scalar_t *a, *b, *c, *d;  // c, d null: 1
  PwBcast cb, db;  // c, d read as broadcast (PwBcast::per != 0) or densely
  acc param, param2;
  int64_t n, per;  // elements; elements per CUDA block (a multiple of 8)
  scalar_t* loss_s;  // per-element loss in the input dtype ('none'), or null
  acc* loss_a;  // per-element loss in the accumulate dtype (autocast), or null
  acc* partial;  // one sum per CUDA block (mean/sum), or null
  scalar_t* g[3];  // gradients, null = not wanted
  acc gscale;  // constant gradient factor (forward: 1/n or 1)
  const acc* kdev;  // gradient factor in the tensors' memory (backward mean/sum), or null
  const scalar_t* gl_s;  // per-element grad_loss (backward 'none'), or null
  const acc* gl_a;  // the same in the accumulate dtype (autocast), or null
  PwBcast glb;  // gl_s / gl_a read as broadcast (loss.sum().backward(): an expanded grad)
  const acc* sub;  // subtracted from d/dc before scaling (weighted-mean weight gradient), or null
  int64_t* first_bad;  // binary_cross_entropy's forward: min of pw_bce_bad codes (init INT64_MAX), or null
  bool vec;  // CUDA: every pointer 16-byte aligned
};

PwKind to_pw_kind(int64_t kind);
const char* pw_name(PwKind k);

// What both devices' kernels need, checked once: a, b (and c) of one shape, device and floating
// dtype, made contiguous (a no-op for the usual contiguous inputs).
struct PwPlan {
  PwKind kind;
  Reduction reduction;
  int64_t n;
  at::Tensor a, b, c, d;  // contiguous; c, d undefined when absent. A broadcast c or d is
                          // kept as its (per)-element source with cb / db describing the broadcast
  PwBcast cb, db;
  bool by_weight_sum;  // mean divides by sum(c) (l1/mse with a weight)
  c10::ScalarType out_dtype;  // the loss's dtype (float32 for half/bfloat16 under autocast)
  bool out_acc;  // out_dtype is the accumulate type rather than the input's
};

PwPlan plan_pointwise(const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& c, int64_t kind,
                      double param, int64_t reduction, c10::optional<c10::ScalarType> out_dtype,
                      const c10::optional<at::Tensor>& d);

// t (the input's shape) as a broadcast of one dense block of its dimensions: that block as a 1-D
// tensor with *b describing the broadcast; any other layout made contiguous (b dense).
at::Tensor pw_broadcast_source(const at::Tensor& t, PwBcast* b);

// Raises torch's "all elements of input/target should be between 0 and 1" for a pw_bce_bad code >= 0.
void pw_bce_raise(const PwPlan& p, int64_t code);
// The same error from its parts: the op's name, whether the target (else the input) is bad, where, what.
[[noreturn]] void raise_bce_domain(const char* op, bool target, int64_t pos, double value);

// The backward's factor for mean/sum: grad_loss (one element) / (n, sum(c) or 1), in the
// accumulate type on the device: no host sync.
at::Tensor pw_single_factor(const PwPlan& p, const at::Tensor& grad_loss, const at::Tensor& weight_sum);

// Calls f(std::integral_constant<PwKind, K>{}) for the runtime kind.
template <typename F>
decltype(auto) dispatch_pw_kind(PwKind k, F&& f) {
  switch (k) {
    case PwKind::L1: return f(std::integral_constant<PwKind, PwKind::L1>{});
    case PwKind::MSE: return f(std::integral_constant<PwKind, PwKind::MSE>{});
    case PwKind::SmoothL1: return f(std::integral_constant<PwKind, PwKind::SmoothL1>{});
    case PwKind::Huber: return f(std::integral_constant<PwKind, PwKind::Huber>{});
    case PwKind::MarginRanking: return f(std::integral_constant<PwKind, PwKind::MarginRanking>{});
    case PwKind::HingeEmbedding: return f(std::integral_constant<PwKind, PwKind::HingeEmbedding>{});
    case PwKind::SoftMargin: return f(std::integral_constant<PwKind, PwKind::SoftMargin>{});
    case PwKind::KLDiv: return f(std::integral_constant<PwKind, PwKind::KLDiv>{});
    case PwKind::BCE: return f(std::integral_constant<PwKind, PwKind::BCE>{});
    case PwKind::BCEWithLogits: return f(std::integral_constant<PwKind, PwKind::BCEWithLogits>{});
    case PwKind::PoissonNLL: return f(std::integral_constant<PwKind, PwKind::PoissonNLL>{});
    case PwKind::GaussianNLL: return f(std::integral_constant<PwKind, PwKind::GaussianNLL>{});
    default: return f(std::integral_constant<PwKind, PwKind::SigmoidFocal>{});
  }
}

}  // namespace fastloss
