// The pointwise loss family: l1, mse, smooth_l1, huber, margin_ranking, hinge_embedding, soft_margin,
// kl_div.
// Every one is elementwise over up to three same-shaped tensors (a, b, c) followed by a reduction,
// so one engine (cpu/pointwise.cpp, cuda/pointwise.cu) serves all of them, and the per-element math
// below is the single definition both devices compile (host and device).
//
//   kind             a        b        c (optional)   param
//   L1, MSE          input    target   weight         -
//   SmoothL1         input    target   -              beta (> 0; beta == 0 is L1, as torch)
//   Huber            input    target   weight         delta (> 0)
//   MarginRanking    input1   input2   target         margin
//   HingeEmbedding   input    target   -              margin
//   SoftMargin       input    target   -              -
//   KLDiv            input    target   -              log_target (0 or 1)
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "common/common.h"

namespace fastloss {

enum class PwKind : int64_t {
  L1 = 0,
  MSE = 1,
  SmoothL1 = 2,
  Huber = 3,
  MarginRanking = 4,
  HingeEmbedding = 5,
  SoftMargin = 6,
  KLDiv = 7
};

// The loss of one element and its derivatives by a, b and c. Every hinge is strict (gradient 0 at
// exactly 0), and every NaN propagates, as in torch's own formulas.
template <typename acc>
struct PwOut {
  acc loss, da, db, dc;
};

template <typename acc>
C10_HOST_DEVICE inline acc pw_sign(acc d) {
  return acc(d > acc(0)) - acc(d < acc(0));  // sign(NaN) = 0, as torch.sign (l1's gradient at NaN is 0)
}

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

template <PwKind K, typename acc>
C10_HOST_DEVICE inline PwOut<acc> pw_eval(acc a, acc b, acc c, acc param) {
  PwOut<acc> o;
  if constexpr (K == PwKind::L1 || K == PwKind::MSE || K == PwKind::SmoothL1 || K == PwKind::Huber) {
    const acc d = a - b;
    acc f, fp;  // unweighted loss and its derivative by d
    if constexpr (K == PwKind::L1) {
      f = d < acc(0) ? -d : d;
      fp = pw_sign(d);
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
  } else if constexpr (K == PwKind::SoftMargin) {  // torch's formulas as written: log1p(exp(-x y)), so a
    // margin past ~88 (float32) overflows to an inf loss and a NaN gradient exactly where torch's does
    const acc z = std::exp(-a * b);
    const acc s = z / (acc(1) + z);
    o.loss = std::log1p(z);
    o.da = -b * s;
    o.db = -a * s;
    o.dc = acc(0);
  } else if constexpr (K == PwKind::KLDiv) {  // param: log_target
    if (param != acc(0)) {  // exp(t) (t - x)
      const acc e = std::exp(b);
      o.loss = e * (b - a);
      o.da = -e;
      o.db = e * (b - a + acc(1));
    } else {  // xlogy(t, t) - t x: 0 where t == 0. The target gradient is torch's log(t) + t / t - x,
      // NaN at t == 0 and t == inf as torch's
      o.loss = (b == acc(0) ? acc(0) : b * std::log(b)) - b * a;
      o.da = -b;
      o.db = std::log(b) + b / b - a;
    }
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
inline bool pw_mean_by_weight_sum(PwKind k, bool has_c) {
  return has_c && (k == PwKind::L1 || k == PwKind::MSE);
}

// The pointers of one kernel call, filled on the host by make_pw_io (ops/pointwise_ops.h) and read
// by both devices' loops; null = absent / not wanted.
template <typename scalar_t>
struct PwIo {
  using acc = acc_t<scalar_t>;
  const scalar_t *a, *b, *c;  // c null: 1
  acc param;
  int64_t n, per;             // elements; elements per CUDA block (a multiple of 8)
  scalar_t* loss_s;           // per-element loss in the input dtype ('none'), or null
  acc* loss_a;                // per-element loss in the accumulate dtype (autocast), or null
  acc* partial;               // one sum per CUDA block (mean/sum), or null
  scalar_t* g[3];             // gradients, null = not wanted
  acc gscale;                 // constant gradient factor (forward: 1/n or 1)
  const acc* kdev;            // gradient factor in the tensors' memory (backward mean/sum), or null
  const scalar_t* gl_s;       // per-element grad_loss (backward 'none'), or null
  const acc* gl_a;            // the same in the accumulate dtype (autocast), or null
  const acc* sub;             // subtracted from d/dc before scaling (weighted-mean weight gradient), or null
  bool vec;                   // CUDA: every pointer 16-byte aligned
};

PwKind to_pw_kind(int64_t kind);
const char* pw_name(PwKind k);

// What both devices' kernels need, checked once: a, b (and c) of one shape, device and floating
// dtype, made contiguous (a no-op for the usual contiguous inputs).
struct PwPlan {
  PwKind kind;
  Reduction reduction;
  int64_t n;
  at::Tensor a, b, c;              // contiguous; c undefined when absent
  bool by_weight_sum;              // mean divides by sum(c) (l1/mse with a weight)
  c10::ScalarType out_dtype;       // the loss's dtype (float32 for half/bfloat16 under autocast)
  bool out_acc;                    // out_dtype is the accumulate type rather than the input's
};

PwPlan plan_pointwise(const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& c, int64_t kind,
                      double param, int64_t reduction, c10::optional<c10::ScalarType> out_dtype);

// grad_now[i] / output_mask[i]: a tensor shaped like a, else an empty one (what the schema returns
// for a gradient not requested).
at::Tensor pw_grad_buffer(const PwPlan& p, bool wanted);

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
    default: return f(std::integral_constant<PwKind, PwKind::KLDiv>{});
  }
}

}  // namespace fastloss
