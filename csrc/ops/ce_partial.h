// Cross-entropy over a slice of the classes: the three steps that linear cross-entropy's class chunks,
// cross_entropy's z-loss / softcap / lse extras and vocab-parallel cross-entropy (one slice per rank)
// share. Rows are contiguous in the class dimension: logits (R, Cs) hold classes
// [class_offset, class_offset + Cs) of num_classes.
//
// 1. ce_partial_stats(logits, target, weight, class_offset, num_classes, ignore_index, eps, softcap)
//      -> stats (R, 5) in the accumulate dtype (float32 for half/bfloat16/float32, float64 for float64).
//    z_c = logits_c, or softcap * tanh(logits_c / softcap) when softcap is given (the cap is applied while
//    reading, never stored). weight: this slice's (Cs,) class weights or None (1).
//      m = max_c z_c;  s = sum_c exp(z_c - m)  (s = 0 where m = -inf: the slice adds nothing)
//      class-index target t (global index; column 2..4 are 0 when t is ignored or outside the slice):
//        [2] z_t   [3] w_t (1 without weights)   [4] sum_c w_c z_c (only when eps > 0, else 0)
//      probability target q (R, Cs), t'_c = (1 - eps) q_c + eps / num_classes:
//        [2] S1 = sum_c w_c t'_c   [3] S2 = sum_c w_c t'_c z_c   [4] 0
//    Slices merge exactly: m = max, s = sum_i s_i exp(m_i - m), columns 2..4 add (merge_partial_stats).
// 2. ce_partial_finish(stats, target, W, num_classes, ignore_index, eps, z_loss)
//      -> (ce_loss (R,), z_term (R,), coef (R, 5)), O(R) work on merged stats. W: 0-dim tensor, the sum
//    of all num_classes class weights (num_classes without weights). lse = m + log s.
//      ce_loss: the row's cross-entropy (0 for an ignored row), as ops/cross_entropy.h's row algebra;
//      z_term = z_loss * lse^2 (0 for an ignored row);
//      coef = [lse, A, B1, B0, Az], unscaled: the row's gradient is
//        class targets:  g_c = (p_c (A s_ce + Az s_z) - B1 w_c s_ce - [c == t] B0 s_ce) * cap'_c
//        prob targets:   g_c = (p_c (A s_ce + Az s_z) - w_c (B1 q_c + B0) s_ce) * cap'_c
//      with p_c = exp(z_c - lse), Az = 2 z_loss lse, cap'_c = 1 - (z_c / softcap)^2 (1 without a cap),
//      s_ce / s_z the reduction's factors (mean: 1 / sum of w_t, resp. 1 / non-ignored rows; sum: 1;
//      times grad_output where the gradient is made in backward).
// 3. ce_partial_grad(logits, target, weight, coef4, class_offset, ignore_index, softcap) -> grad (R, Cs) in logits'
// dtype,
//    and ce_partial_grad_(logits!, ...) writing it over the logits (linear cross-entropy's chunks).
//    coef4 (R, 4) = [lse, A s_ce + Az s_z, B1 s_ce, B0 s_ce] (make_grad_coef). Ignored rows get 0.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "common/alloc.h"

namespace fastloss {

// Stats of two slices of the same rows, merged (both (R, 5), the accumulate dtype).
at::Tensor merge_partial_stats(const at::Tensor& a, const at::Tensor& b);

// coef (R, 5) from ce_partial_finish and the reduction's factors (0-dim or (R,) tensors) -> coef4 (R, 4).
at::Tensor make_grad_coef(const at::Tensor& coef, const at::Tensor& s_ce, const at::Tensor& s_z);

// Argument checks of the fused stats/grad kernels (CPU and CUDA): 2-D floating logits (R, Cs), a class
// target (R,) int64/uint8 or a floating probability target (R, Cs), weight (Cs,). Returns whether the
// target holds probabilities.
bool check_partial_args(const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
                        const char* op);
// coef4 of ce_partial_grad: (R, 4).
void check_partial_coef(const at::Tensor& logits, const at::Tensor& coef, const char* op);

// The arguments of the fused stats / grad kernels, checked and laid out once for both devices
// (cpu/ce_partial.cpp, cuda/ce_partial.cu).
struct PartialArgs {
  at::Tensor x;       // the logits, contiguous (R, Cs)
  at::Tensor target;  // contiguous. Class indices in their dtype; probabilities in their own dtype when
                      // it is the logits' or the accumulate dtype (read, and widened, by the kernels: no
                      // copy), else converted to the accumulate dtype
  at::Tensor weight;  // (Cs,) in the accumulate dtype, or undefined
  at::Tensor coef;  // grad: coef4 (R, 4) in the accumulate dtype, contiguous; stats: undefined
  bool prob;  // the target holds probabilities
  int64_t R, Cs, class_offset, num_classes, ignore_index;
  double eps;  // label smoothing (stats)
  std::optional<double> softcap;
};

PartialArgs partial_stats_args(const at::Tensor& logits, const at::Tensor& target,
                               const std::optional<at::Tensor>& weight, int64_t class_offset, int64_t num_classes,
                               int64_t ignore_index, double eps, std::optional<double> softcap, const char* op);
PartialArgs partial_grad_args(const at::Tensor& logits, const at::Tensor& target,
                              const std::optional<at::Tensor>& weight, const at::Tensor& coef, int64_t class_offset,
                              int64_t ignore_index, std::optional<double> softcap, const char* op);

// ce_partial_grad and ce_partial_grad_ around a device's grad_into(args, g), which writes the gradient
// into g (contiguous, like args.x; g may be args.x itself: each element is read before it is written).
template <typename GradInto>
at::Tensor partial_grad_out(const PartialArgs& a, GradInto grad_into) {
  at::Tensor g = empty_for_write_like(a.x);
  grad_into(a, g);
  return g;
}
// In place: over the logits themselves, or (a strided view) over their contiguous copy, written back.
template <typename GradInto>
void partial_grad_inplace(const at::Tensor& logits, const PartialArgs& a, GradInto grad_into) {
  at::Tensor g = a.x;
  grad_into(a, g);
  if (!a.x.is_same(logits)) logits.copy_(a.x);
}

}  // namespace fastloss
