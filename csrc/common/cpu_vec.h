// Vectorized float row primitives for the CPU kernels. The bodies (cpu/vec_impl.inc) are compiled
// twice, for baseline x86-64 and for AVX2+FMA, and the table for the running CPU is picked once.
// All pointers may be unaligned; w == nullptr means "all weights are 1". Every sum is taken in a
// fixed lane order, so results depend only on the data (and the ISA), never on threads.
#pragma once

#include <cstdint>

namespace fastloss {
namespace cpu {

struct VecOps {
  // *m = max_c x_c; if want_sum: *sum = sum_c w_c x_c.
  void (*max_wsum)(const float* x, const float* w, int64_t n, bool want_sum, float* m, float* sum);
  // returns sum_c exp(x_c - m); stores exp(x_c - m) into e when e != nullptr.
  float (*exp_sum)(const float* x, float m, int64_t n, float* e);
  // out_c = e_c * a - b * w_c
  void (*axpw)(const float* e, int64_t n, float a, float b, const float* w, float* out);
  // t'_c = c1 q_c + c0;  *s1 = sum_c w_c t'_c;  *s2 = sum_c w_c t'_c x_c
  void (*prob_sums)(const float* x, const float* q, const float* w, int64_t n, float c1, float c0, float* s1,
                    float* s2);
  // out_c = e_c * a - w_c (b1 q_c + b0)
  void (*prob_grad)(const float* e, const float* q, const float* w, int64_t n, float a, float b1, float b0, float* out);
  // out_c = in_c * f (in may equal out)
  void (*scale)(const float* in, int64_t n, float f, float* out);
  // bfloat16 <-> float32 (round to nearest even, NaN kept NaN)
  void (*bf16_to_f32)(const uint16_t* in, int64_t n, float* out);
  void (*f32_to_bf16)(const float* in, int64_t n, uint16_t* out);
  // out_s = log(exp(x0_s) + exp(x1_s) + exp(x2_s + mask_s)) + add_s (mask 0 or -inf): a CTC alpha/beta step
  void (*ctc_lse3)(const float* x0, const float* x1, const float* x2, const float* mask, const float* add, int64_t n,
                   float* out);
  // out_i = exp(x_i + y_i + shift) (y may be null), any argument range
  void (*exp_add)(const float* x, const float* y, float shift, int64_t n, float* out);
  // pointwise losses whose per-element math needs exp/log (ops/pointwise.h pw_eval, same formulas):
  // loss, d/da, d/db per element
  void (*pw_soft_margin)(const float* a, const float* b, int64_t n, float* loss, float* da, float* db);
  void (*pw_kl_div)(const float* a, const float* b, int64_t n, bool log_target, float* loss, float* da, float* db);
  // binary_cross_entropy and _with_logits (pos_weight may be null), unweighted; sigmoid focal loss
  void (*pw_bce)(const float* a, const float* b, int64_t n, float* loss, float* da, float* db);
  void (*pw_bce_logits)(const float* a, const float* b, const float* pos_weight, int64_t n, float* loss, float* da,
                        float* db);
  void (*pw_focal)(const float* a, const float* b, int64_t n, float alpha, float gamma, float* loss, float* da,
                   float* db);
  // out_c = exp(x_c + shift) a - b w_c (w null: 1; out may equal x): a softmax-gradient row in one pass
  void (*exp_axpw)(const float* x, float shift, int64_t n, float a, float b, const float* w, float* out);
  // out_i = cap * tanh(x_i / cap) (a logit softcap; out may equal x), within 2 ulp of tanh
  void (*softcap)(const float* x, int64_t n, float cap, float* out);
  const char* isa;
};

const VecOps& vec_ops();

// Whether code compiled twice (baseline and AVX2+FMA, as cpu/vec_impl.inc and cpu/margin_rows_impl.inc)
// runs its AVX2 build: the CPU has AVX2 and FMA and FASTLOSS_CPU_ISA=base does not force the baseline.
// Decided once; false where no AVX2 build exists.
bool use_avx2_fma();

}  // namespace cpu
}  // namespace fastloss
