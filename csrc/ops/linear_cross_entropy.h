// Linear cross-entropy, cross_entropy(input @ linear_weight^T + linear_bias), without the whole logits.
//
// Every op below works on chunks of rows (and of classes when one row block of all the classes would not fit the
// memory budget): per chunk, one GEMM makes the chunk's logits, the partial cross-entropy steps (ops/ce_partial.h)
// turn them into stats, loss and, in place, d(loss)/d(logits), and two GEMMs (+ a row sum for the bias) fold that
// into d/d(input) and d/d(linear_weight). One device-generic implementation (ATen GEMMs, partial ops through the
// dispatcher) is registered for CPU and CUDA.
//
// Ops (schemas in ops/linear_cross_entropy.cpp):
//   linear_ce_stats(input (N,H), linear_weight (Cs,H), linear_bias (Cs,)?, target (N,) | (N,Cs), weight (Cs,)?,
//                   class_offset, num_classes, ignore_index, label_smoothing, softcap?, budget) -> stats (N, 5)
//     the ce_partial_stats of logits = input @ linear_weight^T + linear_bias, merged over the slice's classes
//     [class_offset, class_offset + Cs) of num_classes (the whole range in a single process).
//   linear_ce_grad(input, linear_weight, linear_bias?, target, weight?, coef (N, 4), class_offset, ignore_index,
//                  softcap?, budget, output_mask[3], acc_weight_grad=True) -> (grad_input (N,H), grad_weight (Cs,H),
//                  grad_bias (Cs,))
//     g = ce_partial_grad(logits, ..., coef) (coef from ce_partial_grad_coef); grad_input = g @ linear_weight (this
//     slice's contribution), grad_weight = g^T @ input, grad_bias = g summed over rows. Masked-off outputs are empty.
//   linear_cross_entropy(input (N,H), linear_weight (C, d.., H), linear_bias (C, d..)?, target, weight (C,)?,
//                        reduction, ignore_index, label_smoothing, softcap?, z_loss, budget, row_cap,
//                        acc_weight_grad, grad_now[3]) -> (loss, lse, grad_input, grad_weight, grad_bias)
//     the public loss (batched input; fastloss.functional unsqueezes an unbatched one). target (N, d..) class indices
//     (int64 or uint8) or (N, C, d..) probabilities. loss: (N, d..) for 'none', else 0-dim; loss and lse (N, d..)
//     in the accumulate dtype (float32 for half/bfloat16/float32). grad_now (mean/sum only): the gradients of the
//     reduced loss are made in the same pass (empty where not asked); backward scales them by grad_output.
//   linear_cross_entropy_backward(grad_loss, <the forward's arguments>, output_mask[3]) -> (grad_input, grad_weight,
//                                 grad_bias): recomputes the logits chunk by chunk ('none', or what forward did
//                                 not make).
//   _linear_ce_plan(input, linear_weight, linear_bias?, target, budget, row_cap, acc_weight_grad, grad_mask[3])
//     -> [rows, classes, bytes, budget, acc_weight_grad]: the chunking the ops above choose (internal, for tests).
//
// budget (bytes; <= 0: the process-wide value, fastloss.set_linear_ce_memory_budget, default 256 MiB) bounds the
// extra memory beyond the inputs and the gradients: the plan (plan_linear_ce) counts every temporary (see there).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastloss {

struct LinearCePlan {
  int64_t rows = 1;       // rows per chunk
  int64_t classes = 1;    // classes per chunk (all of them: one pass; fewer: a stats pass, then the logits again)
  int64_t bytes = 0;      // the extra bytes the plan counts (<= budget)
  int64_t budget = 0;     // the budget it was made for
  bool acc_weight_grad = false;  // half/bfloat16 d/d(linear_weight) accumulated in a float32 copy
};

struct LinearCeShape {
  int64_t N = 0, H = 0, C = 0, D = 1;  // rows, in_features, classes (of the slice), positions (K-dim weight)
  int64_t elem = 4;                    // bytes of an input/logits element
  int64_t acc = 4;                     // bytes of an accumulate-dtype element
  int64_t target_elem = 8;             // bytes of a target element (probability targets: per class)
  bool prob = false, half = false, cuda = false;
};

// The chunking for a job: whole classes per row chunk when at least one row fits, else class chunks.
// mask: which gradients are made (input, weight, bias). Raises when even one row of one class does not fit.
LinearCePlan plan_linear_ce(const LinearCeShape& s, int64_t budget, int64_t row_cap, bool acc_weight_grad,
                            const bool mask[3]);

// CUDA, half/bfloat16 weight gradient accumulated in float32: classes per float32 GEMM product (budget / 8 bytes).
int64_t linear_ce_gw_block(int64_t budget, int64_t H);

// The process-wide default budget (fastloss.set_linear_ce_memory_budget).
int64_t default_linear_ce_budget();

}  // namespace fastloss
