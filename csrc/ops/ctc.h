// CTC loss (connectionist temporal classification): the plan both devices share and the per-sample
// conventions of the kernels (cpu/ctc.cpp, cuda/ctc.cu).
//
// Sample n has input length Tn = input_lengths[n], target length L = target_lengths[n] and the
// extended label sequence l' of Sp = 2L + 1 states: blank, l_1, blank, l_2, ..., l_L, blank.
// alpha_t(s) / beta_t(s) are torch's log-space forward / backward variables (both include
// log_probs[t, l'_s], as torch's do), nll = -log(alpha_{Tn-1}(Sp-1) + alpha_{Tn-1}(Sp-2)).
// The gradient is torch's: d/d log_probs[t, c] = exp(lp[t, c]) - sum_{s: l'_s = c} exp(alpha_t(s) +
// beta_t(s) + nll - lp[t, c]) for t < Tn (torch assumes log_softmax'ed input), 0 for t >= Tn; the sum is
// taken in probability space (each term an occupancy in [0, 1]) instead of torch's running log-sum-exp.
#pragma once

#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "common/common.h"

namespace fastloss {

struct CtcPlan {
  int64_t T = 0, N = 0, C = 0;
  int64_t max_target = 0;  // longest target: the states buffers hold 2 * max_target + 1 per row
  int64_t blank = 0;
  Reduction reduction = Reduction::Mean;
  bool zero_infinity = false;
  at::Tensor log_probs;  // (T, N, C) contiguous
  at::Tensor targets;    // flat, contiguous, int32 or int64, on the log_probs device
  at::Tensor meta;       // int64 (3, N) on the CPU: input length, target length, offset of the target in `targets`
  bool targets_checked = false;  // values already checked on the host (CPU targets)
};

// Checks everything but (device-resident) target values, which the CUDA kernel checks.
CtcPlan plan_ctc(const at::Tensor& log_probs, const at::Tensor& targets, const at::Tensor& input_lengths,
                 const at::Tensor& target_lengths, int64_t blank, int64_t reduction, bool zero_infinity);

// The mean's divisor of a sample's loss: its target length clamped to 1 (as torch).
C10_HOST_DEVICE inline double ctc_target_norm(int64_t target_length) {
  return static_cast<double>(target_length > 1 ? target_length : 1);
}

// The gradient factor of a sample with grad_output = 1: 1 / max(L, 1) / N for mean, 1 otherwise.
C10_HOST_DEVICE inline double ctc_grad_factor(bool mean, int64_t target_length, int64_t N) {
  return mean ? 1.0 / ctc_target_norm(target_length) / static_cast<double>(N) : 1.0;
}

// One alpha/beta step of a state: log(exp(a) + exp(b) + exp(c)); all -inf gives -inf, NaN propagates.
// (The CPU's float rows use the vectorized VecOps::ctc_lse3 of the same formula.)
template <typename acc>
C10_HOST_DEVICE inline acc ctc_lse3(acc a, acc b, acc c) {
  if (a != a || b != b || c != c) return a + b + c;
  acc m = a > b ? a : b;
  m = m > c ? m : c;
  if (m == -std::numeric_limits<acc>::infinity()) return m;
  return m + std::log(std::exp(a - m) + std::exp(b - m) + std::exp(c - m));
}

// torch's final log-sum-exp of the two end states (0 shift when both are -inf: the result is -inf).
template <typename acc>
C10_HOST_DEVICE inline acc ctc_lse2(acc a, acc b) {
  acc m = a > b ? a : b;
  if (m == -std::numeric_limits<acc>::infinity()) m = 0;
  return std::log(std::exp(a - m) + std::exp(b - m)) + m;
}

// Raises the error for an invalid target value at flat position pos of plan.targets.
[[noreturn]] void raise_bad_ctc_target(const CtcPlan& p, int64_t pos, int64_t value);
// The same error from its parts (sample -1: the position lies in no sample's labels).
[[noreturn]] void raise_ctc_label(int64_t value, int64_t sample, int64_t label, int64_t pos, int64_t C, int64_t blank);

// A target label is legal when in [0, C) and not the blank.
C10_HOST_DEVICE inline bool ctc_label_ok(int64_t v, int64_t C, int64_t blank) { return v >= 0 && v < C && v != blank; }

}  // namespace fastloss
