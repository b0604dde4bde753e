// Linear cross-entropy without the whole logits (see ops/linear_cross_entropy.h): schemas, the memory plan, and one
// device-generic implementation registered for CPU and CUDA. GEMMs go through ATen (CPU BLAS / cuBLAS), the
// partial cross-entropy steps through the dispatcher (their fused CPU/CUDA kernels where registered).
#include "ops/linear_cross_entropy.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <vector>

#include "common/common.h"
#include "common/errors.h"
#include "common/options.h"
#include "ops/ce_partial.h"

namespace fastloss {

int64_t default_linear_ce_budget() { return option(Option::LinearCeBudget); }

namespace {

using at::Tensor;
constexpr const char* kOp = "fastloss.linear_cross_entropy";

template <typename Sig>
c10::TypedOperatorHandle<Sig> typed(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}
using StatsSig = Tensor(const Tensor&, const Tensor&, const std::optional<Tensor>&, int64_t, int64_t, int64_t, double,
                        std::optional<double>);
using FinishSig = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, int64_t, int64_t,
                                                     double, double);
using MergeSig = Tensor(const Tensor&, const Tensor&);
using CoefSig = Tensor(const Tensor&, const Tensor&, const Tensor&);
using GradSig = void(const Tensor&, const Tensor&, const std::optional<Tensor>&, const Tensor&, int64_t, int64_t,
                     std::optional<double>);
const c10::TypedOperatorHandle<StatsSig>& stats_op() {
  static const auto h = typed<StatsSig>("fastloss::ce_partial_stats");
  return h;
}
const c10::TypedOperatorHandle<FinishSig>& finish_op() {
  static const auto h = typed<FinishSig>("fastloss::ce_partial_finish");
  return h;
}
const c10::TypedOperatorHandle<MergeSig>& merge_op() {
  static const auto h = typed<MergeSig>("fastloss::ce_partial_merge");
  return h;
}
const c10::TypedOperatorHandle<CoefSig>& coef_op() {
  static const auto h = typed<CoefSig>("fastloss::ce_partial_grad_coef");
  return h;
}
const c10::TypedOperatorHandle<GradSig>& grad_op() {
  static const auto h = typed<GradSig>("fastloss::ce_partial_grad_");
  return h;
}

// Whether the partial steps run as fused kernels on this device (no temporaries beyond their outputs) or as the ATen
// reference versions (ops/ce_partial.cpp), whose chunk-sized float temporaries the plan must count.
bool fused_partial(bool cuda) {
  const auto key = cuda ? c10::DispatchKey::CUDA : c10::DispatchKey::CPU;
  static const auto s = c10::Dispatcher::singleton().findSchemaOrThrow("fastloss::ce_partial_stats", "");
  static const auto g = c10::Dispatcher::singleton().findSchemaOrThrow("fastloss::ce_partial_grad_", "");
  return s.hasKernelForDispatchKey(key) && g.hasKernelForDispatchKey(key);
}
// The reference versions hold at most this many (R, Cs) accumulate-dtype temporaries at once (the capped copy, the
// exponentials, the gradient before its copy back, where/scatter results); counted generously.
constexpr int64_t kReferenceTemps = 8;
// CPU, half/bfloat16 bias gradient: the chunk's column sums in float32 take this many classes at a time.
constexpr int64_t kBiasBlock = 512;

}  // namespace

// CUDA, half/bfloat16 weight gradient in float32: the float32 GEMM products are made this many classes at a time
// (at most 1/8 of the budget), then added into the float32 accumulator.
int64_t linear_ce_gw_block(int64_t budget, int64_t H) {
  return std::max<int64_t>(1, budget / 8 / std::max<int64_t>(4 * H, 1));
}

// Bytes counted, for a chunk of R rows and Cc classes (split: Cc < C, the logits made twice):
//   O(N*D): stats (5), coef (5), coef4 (4), loss / z-term / lse rows (3) in the accumulate dtype, the int64 targets,
//           the mean's denominator terms;
//   per chunk: the logits (R*Cc, input dtype), the reference partial ops' temporaries (0 with fused kernels), a
//           probability-target slice (R*Cc), the chunk's and the merged stats, the class-target rows;
//   half/bfloat16: the float32 grad_input accumulator of a row chunk (+ one GEMM output) when several class chunks or
//           positions add into it; the float32 grad_weight (C*D*H) when accumulated in float32 (+ on CPU the float32
//           copies of g^T and the input rows fed to the GEMM); bias: its accumulator and a chunk's row sum (+ on CPU
//           a float32 column block of the chunk, kBiasBlock classes).
// The gradients themselves (grad_input, grad_weight, grad_bias in their dtypes) and the inputs are not counted, nor
// the GEMM libraries' own scratch: bounded by their blocking, not by N or C (CPU half/bfloat16 GEMMs through oneDNN:
// at most 2.7 MB measured at R <= 4096, C <= 32000, H <= 4096; cuBLAS: its per-handle workspace).
LinearCePlan plan_linear_ce(const LinearCeShape& s, int64_t budget, int64_t row_cap, bool acc_weight_grad,
                            const bool mask[3]) {
  if (budget <= 0) budget = default_linear_ce_budget();
  const int64_t ref = fused_partial(s.cuda) ? 0 : kReferenceTemps;
  const int64_t fixed = s.N * s.D * (17 * s.acc + 8 + 8);
  auto bytes = [&](int64_t R, int64_t Cc, bool split, bool accw) -> int64_t {
    int64_t per_elem = s.elem + ref * s.acc + (s.prob ? s.target_elem : 0);
    if (accw && !s.cuda) per_elem += 4;
    int64_t b = fixed + R * Cc * per_elem + R * (2 * 5 * s.acc + 8);
    if (mask[0] && s.half && (split || s.D > 1)) b += R * s.H * 8;  // the accumulator + one float32 GEMM output
    if (accw)  // the float32 grad_weight, + CUDA: one bounded float32 product / CPU: the input rows in float32
      b += s.C * s.D * s.H * 4 + (s.cuda ? std::min(Cc, linear_ce_gw_block(budget, s.H)) * s.H * 4 : R * s.H * 4);
    if (mask[2])  // the accumulator, a chunk's row sum, + CPU half: one float32 column block of the chunk
      b += s.C * s.D * s.acc + 2 * Cc * s.acc + (s.half && !s.cuda ? R * std::min(Cc, kBiasBlock) * 4 : 0);
    return b;
  };
  const int64_t cap = std::max<int64_t>(1, row_cap > 0 ? std::min(s.N, row_cap) : s.N);
  // largest R <= cap whose bytes fit (bytes are linear in R); 0 when none
  auto solve_rows = [&](int64_t Cc, bool split, bool accw) -> int64_t {
    const int64_t b0 = bytes(0, Cc, split, accw), b1 = bytes(1, Cc, split, accw) - b0;
    if (b0 + b1 > budget) return 0;
    return b1 > 0 ? std::min(cap, (budget - b0) / b1) : cap;
  };
  const bool want_acc = acc_weight_grad && s.half && mask[1];
  for (const bool accw : {true, false}) {
    if (accw && (!want_acc || s.C * s.D * s.H * 4 > budget / 2)) continue;  // float32 grad_weight: half the budget
    int64_t R = solve_rows(s.C, false, accw);
    if (R >= 1) {
      // one row chunk of all classes: grad_weight is one GEMM, nothing accumulates across chunks
      const bool acc_used = accw && R < s.N;
      if (accw && !acc_used) R = solve_rows(s.C, false, false);
      return {R, std::max<int64_t>(s.C, 1), bytes(R, s.C, false, acc_used), budget, acc_used};
    }
    // class chunks: up to 64 rows (a GEMM of useful height), as many classes as fit
    for (R = std::min<int64_t>(cap, 64); R >= 1; R /= 2) {
      const int64_t b0 = bytes(R, 0, true, accw), b1 = bytes(R, 1, true, accw) - b0;
      if (b0 + b1 > budget) continue;
      const int64_t Cc = std::min<int64_t>(std::max<int64_t>(s.C, 1), (budget - b0) / b1);
      return {R, Cc, bytes(R, Cc, true, accw), budget, accw};
    }
  }
  TORCH_CHECK(false, kOp, ": memory_budget of ", budget, " bytes is too small: one row of one class needs ",
              bytes(1, 1, true, false), " bytes (", s.N * s.D, " rows)");
}

namespace {

// One job over chunks. Geometry: x (N, H); W (C, D, H) a view of linear_weight (D positions of a K-dimensional
// weight, 1 otherwise); b (C, D) or undefined; class targets t (N, D) int64 (global class indices), probability
// targets t (N, C, D).
struct Job {
  Tensor x, W, b, t;
  std::optional<Tensor> w;  // (C,) class weights
  bool prob = false;
  int64_t class_offset = 0, num_classes = 0, ignore_index = -100;
  double eps = 0, z_loss = 0;
  std::optional<double> softcap;
  LinearCePlan plan;
  // what to make
  Tensor stats_out;  // (N, 5): linear_ce_stats (D == 1)
  Tensor coef_in;    // (N, 4): linear_ce_grad's given coefficients (D == 1)
  bool finish = false;  // the public op: ce / z / lse rows, and (grads) the coefficients from s_ce, s_z
  Tensor W_sum;         // 0-dim, the sum of all class weights (finish)
  Tensor s_ce, s_z;     // 0-dim, or (N, D) per row (finish + grads)
  Tensor ce_rows, z_rows, lse_rows;  // (N, D) accumulate dtype (finish)
  bool mask[3] = {false, false, false};
  Tensor gx, gw, gb;  // outputs (gw: (C, D, H) view; float32 when plan.acc_weight_grad; gb (C, D) accumulate dtype)
};

Tensor rows_of(const Tensor& t, int64_t r0, int64_t r) { return t.narrow(0, r0, r); }

void run(Job& j) {
  const int64_t N = j.x.size(0), H = j.x.size(1), C = j.W.size(0), D = j.W.size(1);
  const int64_t R = j.plan.rows, CC = std::max<int64_t>(j.plan.classes, 1);
  const bool split = CC < C;
  const bool grads = j.mask[0] || j.mask[1] || j.mask[2];
  const bool half = j.x.scalar_type() == at::kHalf || j.x.scalar_type() == at::kBFloat16;
  const bool cuda = j.x.is_cuda();
  const auto adt = acc_dtype(j.x.scalar_type());
  if (N == 0) return;
  // one logits buffer for every chunk (the plan counts it once)
  Tensor buf = at::empty({std::min(R, N) * std::min(CC, std::max<int64_t>(C, 1))}, j.x.options());
  const bool gx_direct = j.mask[0] && D == 1 && !split;  // each row chunk's grad_input is one GEMM
  Tensor gx_acc;  // float32 accumulator of a row chunk's grad_input (half/bfloat16 with several contributions)
  if (j.mask[0] && !gx_direct && half) gx_acc = at::empty({std::min(R, N), H}, j.x.options().dtype(at::kFloat));
  const bool accw_cpu = j.mask[1] && j.plan.acc_weight_grad && !cuda;
  const int64_t gw_block = linear_ce_gw_block(j.plan.budget, H);

  for (int64_t r0 = 0; r0 < N; r0 += R) {
    const int64_t r = std::min(R, N - r0);
    const Tensor xr = rows_of(j.x, r0, r);
    const Tensor xr_f = accw_cpu ? xr.to(at::kFloat) : Tensor();
    Tensor gxa = gx_acc.defined() ? gx_acc.narrow(0, 0, r) : Tensor();
    if (gxa.defined()) gxa.zero_();
    bool gx_first = true;  // float32/float64 grad_input rows: the first contribution overwrites, the rest add
    for (int64_t p = 0; p < D; ++p) {
      const Tensor Wp = j.W.select(1, p);  // (C, H), row stride D * H: a BLAS leading dimension, no copy
      const Tensor bp = j.b.defined() ? j.b.select(1, p) : Tensor();
      const Tensor tp = j.prob ? rows_of(j.t.select(2, p), r0, r) : rows_of(j.t.select(1, p), r0, r).contiguous();
      auto target_of = [&](int64_t c0, int64_t cc) { return j.prob ? tp.narrow(1, c0, cc).contiguous() : tp; };
      auto weight_of = [&](int64_t c0, int64_t cc) -> std::optional<Tensor> {
        if (!j.w) return std::nullopt;
        return j.w->narrow(0, c0, cc);
      };
      auto logits_of = [&](int64_t c0, int64_t cc) {
        Tensor z = buf.narrow(0, 0, r * cc).view({r, cc});
        const Tensor Wc = Wp.narrow(0, c0, cc);
        if (bp.defined())
          at::addmm_out(z, bp.narrow(0, c0, cc), xr, Wc.t());
        else
          at::mm_out(z, xr, Wc.t());
        return z;
      };
      // stats over the class chunks, merged
      Tensor st, k4, kept;
      if (!j.coef_in.defined()) {
        for (int64_t c0 = 0; c0 < std::max<int64_t>(C, 1); c0 += CC) {
          const int64_t cc = std::min(CC, C - c0);
          Tensor z = logits_of(c0, cc);
          Tensor s = stats_op().call(z, target_of(c0, cc), weight_of(c0, cc), j.class_offset + c0, j.num_classes,
                                     j.ignore_index, j.eps, j.softcap);
          st = st.defined() ? merge_op().call(st, s) : s;
          if (!split) kept = z;
        }
        if (j.stats_out.defined()) rows_of(j.stats_out, r0, r).copy_(st);
      }
      if (j.finish) {
        auto [ce, zt, coef] = finish_op().call(st, tp, j.W_sum, j.num_classes, j.ignore_index, j.eps, j.z_loss);
        rows_of(j.ce_rows.select(1, p), r0, r).copy_(ce);
        rows_of(j.z_rows.select(1, p), r0, r).copy_(zt);
        rows_of(j.lse_rows.select(1, p), r0, r).copy_(coef.select(1, 0));
        if (grads) {
          auto per_row = [&](const Tensor& s) { return s.dim() == 0 ? s : rows_of(s.select(1, p), r0, r); };
          k4 = coef_op().call(coef, per_row(j.s_ce), per_row(j.s_z));
        }
      } else if (j.coef_in.defined()) {
        k4 = rows_of(j.coef_in, r0, r);
      }
      if (!grads) continue;
      for (int64_t c0 = 0; c0 < C; c0 += CC) {
        const int64_t cc = std::min(CC, C - c0);
        Tensor g = kept.defined() ? kept : logits_of(c0, cc);
        grad_op().call(g, target_of(c0, cc), weight_of(c0, cc), k4, j.class_offset + c0, j.ignore_index, j.softcap);
        const Tensor Wc = Wp.narrow(0, c0, cc);
        if (j.mask[0]) {
          if (gx_direct) {
            Tensor out = rows_of(j.gx, r0, r);
            at::mm_out(out, g, Wc);
          } else if (gxa.defined()) {
            // cuBLAS: half inputs, float32 output (mm.dtype), then added into the float32 accumulator
            gxa.add_(cuda ? at::mm(g, Wc, at::kFloat) : at::mm(g, Wc));
          } else {
            Tensor out = rows_of(j.gx, r0, r);
            if (gx_first)
              at::mm_out(out, g, Wc);
            else
              out.addmm_(g, Wc);
          }
          gx_first = false;
        }
        if (j.mask[1]) {
          Tensor gwc = j.gw.select(1, p).narrow(0, c0, cc);  // (cc, H), row stride D * H
          if (!j.plan.acc_weight_grad)
            gwc.addmm_(g.t(), xr);
          else if (cuda)  // float32 products of at most gw_block classes at a time (a bounded temporary)
            for (int64_t s0 = 0; s0 < cc; s0 += gw_block)
              gwc.narrow(0, s0, std::min(gw_block, cc - s0))
                  .add_(at::mm(g.narrow(1, s0, std::min(gw_block, cc - s0)).t(), xr, at::kFloat));
          else
            gwc.addmm_(g.t().to(at::kFloat), xr_f);
        }
        if (j.mask[2]) {
          Tensor gbc = j.gb.select(1, p).narrow(0, c0, cc);
          if (cuda || g.scalar_type() == adt) {
            gbc.add_(g.sum(0, false, adt));
          } else {  // CPU half: sum(dtype=float) converts its whole input first, so a column block at a time
            for (int64_t s0 = 0; s0 < cc; s0 += kBiasBlock) {
              const int64_t k = std::min(kBiasBlock, cc - s0);
              gbc.narrow(0, s0, k).add_(g.narrow(1, s0, k).sum(0, false, adt));
            }
          }
        }
      }
    }
    if (gxa.defined()) rows_of(j.gx, r0, r).copy_(gxa);
  }
}

int64_t elem_bytes(c10::ScalarType t) { return static_cast<int64_t>(c10::elementSize(t)); }

LinearCeShape shape_of(const Tensor& x, int64_t C, int64_t D, const Tensor& target, bool prob) {
  LinearCeShape s;
  s.N = x.size(0);
  s.H = x.size(1);
  s.C = C;
  s.D = D;
  s.elem = elem_bytes(x.scalar_type());
  s.acc = elem_bytes(acc_dtype(x.scalar_type()));
  s.target_elem = elem_bytes(target.scalar_type());
  s.prob = prob;
  s.half = x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16;
  s.cuda = x.is_cuda();
  return s;
}

bool is_prob(const Tensor& target) { return target.is_floating_point(); }

void check_common(const Tensor& x, const Tensor& W, const std::optional<Tensor>& b, const Tensor& target,
                  const std::optional<Tensor>& weight, const char* op) {
  TORCH_CHECK(x.dim() == 2, op, ": expected input of shape (N, in_features), got ", x.sizes());
  TORCH_CHECK(W.dim() >= 2, op, ": expected linear_weight of shape (C, ..., in_features), got ", W.sizes());
  TORCH_CHECK(W.size(-1) == x.size(1), op, ": expected linear_weight's last dimension ", x.size(1),
              " (input's in_features), got ", W.sizes());
  check_floating(x, "input", op);
  TORCH_CHECK(W.scalar_type() == x.scalar_type(), op, ": expected linear_weight of the input's dtype ", x.scalar_type(),
              ", got ", W.scalar_type());
  check_same_device(x, "input", W, "linear_weight", op);
  check_same_device(x, "input", target, "target", op);
  if (b && b->defined()) {
    TORCH_CHECK(b->sizes() == W.sizes().slice(0, W.dim() - 1), op, ": expected linear_bias of shape ",
                W.sizes().slice(0, W.dim() - 1), ", got ", b->sizes());
    TORCH_CHECK(b->scalar_type() == x.scalar_type(), op, ": expected linear_bias of the input's dtype ",
                x.scalar_type(), ", got ", b->scalar_type());
    check_same_device(x, "input", *b, "linear_bias", op);
  }
  if (weight && weight->defined()) {
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == W.size(0), op, ": expected weight of shape (", W.size(0),
                ",), got ", weight->sizes());
    check_same_device(x, "input", *weight, "weight", op);
  }
  if (is_prob(target)) {
    std::vector<int64_t> want{x.size(0)};
    for (int64_t d = 0; d < W.dim() - 1; ++d) want.push_back(W.size(d));
    TORCH_CHECK(target.sizes() == c10::IntArrayRef(want), op, ": expected probability target of shape ",
                c10::IntArrayRef(want), ", got ", target.sizes());
  } else {
    check_class_target_dtype(target, op);
    std::vector<int64_t> want{x.size(0)};
    for (int64_t d = 1; d < W.dim() - 1; ++d) want.push_back(W.size(d));
    TORCH_CHECK(target.sizes() == c10::IntArrayRef(want), op, ": expected class-index target of shape ",
                c10::IntArrayRef(want), ", got ", target.sizes());
  }
}

std::optional<Tensor> opt(const std::optional<Tensor>& t) { return (t && t->defined()) ? t : std::nullopt; }

// ------------------------------------------------------------------------------- slice pass ops
// The checked Job of one class slice: linear_weight (Cs, H), targets with global class indices.
Job slice_job(const Tensor& input, const Tensor& W, const std::optional<Tensor>& b, const Tensor& target,
              const std::optional<Tensor>& weight, int64_t class_offset, int64_t ignore_index,
              std::optional<double> softcap, const char* op) {
  check_common(input, W, b, target, weight, op);
  TORCH_CHECK(W.dim() == 2, op, ": expected linear_weight of shape (Cs, in_features), got ", W.sizes());
  Job j;
  j.prob = is_prob(target);
  j.x = input;
  j.W = W.unsqueeze(1);
  j.b = b && b->defined() ? b->unsqueeze(1) : Tensor();
  j.t = j.prob ? target.unsqueeze(2) : target.to(at::kLong).unsqueeze(1);
  j.w = opt(weight);
  j.class_offset = class_offset;
  j.ignore_index = ignore_index;
  j.softcap = softcap;
  return j;
}

Tensor linear_ce_stats(const Tensor& input, const Tensor& linear_weight, const std::optional<Tensor>& linear_bias,
                       const Tensor& target, const std::optional<Tensor>& weight, int64_t class_offset,
                       int64_t num_classes, int64_t ignore_index, double label_smoothing, std::optional<double> softcap,
                       int64_t budget) {
  constexpr const char* op = "fastloss.linear_ce_stats";
  Job j = slice_job(input, linear_weight, linear_bias, target, weight, class_offset, ignore_index, softcap, op);
  const int64_t C = linear_weight.size(0);
  TORCH_CHECK(class_offset >= 0 && class_offset + C <= num_classes, op,
              ": expected the slice [class_offset, class_offset + Cs) = [", class_offset, ", ", class_offset + C,
              ") within num_classes=", num_classes);
  const bool mask[3] = {false, false, false};
  j.num_classes = num_classes;
  j.eps = label_smoothing;
  j.plan = plan_linear_ce(shape_of(input, C, 1, target, j.prob), budget, 0, false, mask);
  j.stats_out = at::empty({input.size(0), 5}, input.options().dtype(acc_dtype(input.scalar_type())));
  if (input.size(0) && C == 0) {  // an empty slice adds nothing: m = -inf, s = 0, the rest 0
    j.stats_out.zero_();
    j.stats_out.select(1, 0).fill_(-std::numeric_limits<double>::infinity());
    return j.stats_out;
  }
  run(j);
  return j.stats_out;
}

std::tuple<Tensor, Tensor, Tensor> linear_ce_grad(const Tensor& input, const Tensor& linear_weight,
                                                  const std::optional<Tensor>& linear_bias, const Tensor& target,
                                                  const std::optional<Tensor>& weight, const Tensor& coef,
                                                  int64_t class_offset, int64_t ignore_index,
                                                  std::optional<double> softcap, int64_t budget,
                                                  std::array<bool, 3> output_mask, bool acc_weight_grad) {
  constexpr const char* op = "fastloss.linear_ce_grad";
  Job j = slice_job(input, linear_weight, linear_bias, target, weight, class_offset, ignore_index, softcap, op);
  TORCH_CHECK(coef.dim() == 2 && coef.size(0) == input.size(0) && coef.size(1) == 4, op, ": expected coef of shape (",
              input.size(0), ", 4) (ce_partial_grad_coef), got ", coef.sizes());
  const bool mask[3] = {output_mask[0], output_mask[1], output_mask[2] && j.b.defined()};
  const int64_t C = linear_weight.size(0), H = input.size(1);
  j.coef_in = coef.to(acc_dtype(input.scalar_type()));
  j.plan = plan_linear_ce(shape_of(input, C, 1, target, j.prob), budget, 0, acc_weight_grad, mask);
  std::copy(mask, mask + 3, j.mask);
  const auto adt = acc_dtype(input.scalar_type());
  j.gx = mask[0] ? at::empty_like(input, at::MemoryFormat::Contiguous) : at::empty({0}, input.options());
  Tensor gw_final;
  if (mask[1]) {
    j.gw = at::zeros({C, 1, H}, input.options().dtype(j.plan.acc_weight_grad ? at::kFloat : input.scalar_type()));
  }
  if (mask[2]) j.gb = at::zeros({C, 1}, input.options().dtype(adt));
  if (mask[0] && (input.size(0) == 0 || C == 0)) j.gx.zero_();
  run(j);
  Tensor gw = mask[1] ? j.gw.view({C, H}).to(input.scalar_type()) : at::empty({0}, input.options());
  Tensor gb = mask[2] ? j.gb.view({C}).to(input.scalar_type()) : at::empty({0}, input.options());
  return {j.gx, gw, gb};
}

// ------------------------------------------------------------------------------- the public op
struct Prepared {
  Job j;
  int64_t C = 0, D = 1;
  std::vector<int64_t> row_shape;  // (N, d..)
  Tensor denom_ce, denom_z;        // mean's denominators (0-dim, accumulate dtype)
  Tensor bad;                      // (N, D) out-of-range class targets, flagged as NaN rows (CUDA without a sync)
  bool has_b = false;
};

Tensor inverse_or_zero(const Tensor& d) { return at::where(d != 0, d.reciprocal(), at::zeros_like(d)); }

Prepared prepare(const Tensor& x, const Tensor& W, const std::optional<Tensor>& b, const Tensor& target,
                 const std::optional<Tensor>& weight, int64_t ignore_index, double eps, std::optional<double> softcap,
                 double z_loss) {
  check_common(x, W, b, target, weight, kOp);
  TORCH_CHECK(eps >= 0.0 && eps <= 1.0, kOp, ": label_smoothing must be between 0.0 and 1.0, got ", eps);
  TORCH_CHECK(!softcap || *softcap > 0.0, kOp, ": softcap must be positive, got ", softcap ? *softcap : 0.0);
  Prepared P;
  Job& j = P.j;
  const int64_t N = x.size(0), H = x.size(1), C = W.size(0);
  int64_t D = 1;
  P.row_shape = {N};
  for (int64_t d = 1; d < W.dim() - 1; ++d) {
    D *= W.size(d);
    P.row_shape.push_back(W.size(d));
  }
  P.C = C;
  P.D = D;
  const auto adt = acc_dtype(x.scalar_type());
  const bool prob = is_prob(target);
  P.has_b = b && b->defined();
  j.x = x;
  j.W = W.reshape({C, D, H});  // a view unless linear_weight is not contiguous (that copy is not counted)
  j.b = P.has_b ? b->reshape({C, D}) : Tensor();
  j.w = opt(weight);
  j.prob = prob;
  j.num_classes = C;
  j.ignore_index = ignore_index;
  j.eps = eps;
  j.z_loss = z_loss;
  j.softcap = softcap;
  j.finish = true;
  j.W_sum = j.w ? j.w->to(adt).sum() : at::scalar_tensor(double(C), x.options().dtype(adt));
  if (prob) {
    j.t = target.reshape({N, C, D});
    P.denom_ce = at::scalar_tensor(double(N * D), x.options().dtype(adt));
    P.denom_z = P.denom_ce;
  } else {
    j.t = target.reshape({N, D}).to(at::kLong);
    const Tensor valid = j.t != ignore_index;
    const Tensor bad = valid & ((j.t < 0) | (j.t >= C));
    const bool strict = option(Option::ValidateTargets) == 2;
    if (!x.is_cuda() || strict) {  // CPU checks at once; CUDA syncs only in strict mode
      if (bad.any().item<bool>()) {
        const int64_t pos = bad.view(-1).nonzero().min().item<int64_t>();
        raise_target_out_of_bounds(kOp, j.t.view(-1)[pos].item<int64_t>(), C, ignore_index, pos);
      }
    } else {
      P.bad = bad;
    }
    P.denom_z = valid.sum(adt);
    if (j.w && C > 0) {
      const Tensor wt = j.w->to(adt).index_select(0, j.t.clamp(0, C - 1).view(-1)).view({N, D});
      P.denom_ce = at::where(valid, wt, at::zeros({}, wt.options())).sum();
    } else {
      P.denom_ce = P.denom_z;
    }
  }
  j.ce_rows = at::empty({N, D}, x.options().dtype(adt));
  j.z_rows = at::empty({N, D}, x.options().dtype(adt));
  j.lse_rows = at::empty({N, D}, x.options().dtype(adt));
  return P;
}

// The gradient outputs of a job (mask: input, weight, bias), zeroed where nothing may add to them.
void alloc_grads(Prepared& P, const bool mask[3]) {
  Job& j = P.j;
  const int64_t N = j.x.size(0), H = j.x.size(1);
  const auto adt = acc_dtype(j.x.scalar_type());
  std::copy(mask, mask + 3, j.mask);
  j.gx = mask[0] ? ((N == 0 || P.C == 0) ? at::zeros_like(j.x, at::MemoryFormat::Contiguous)
                                         : at::empty_like(j.x, at::MemoryFormat::Contiguous))
                 : at::empty({0}, j.x.options());
  if (mask[1])
    j.gw = at::zeros({P.C, P.D, H}, j.x.options().dtype(j.plan.acc_weight_grad ? at::kFloat : j.x.scalar_type()));
  if (mask[2]) j.gb = at::zeros({P.C, P.D}, j.x.options().dtype(adt));
}

std::tuple<Tensor, Tensor> grads_out(const Prepared& P, const Tensor& W, const std::optional<Tensor>& b) {
  const Job& j = P.j;
  Tensor gw = j.mask[1] ? j.gw.to(W.scalar_type()).view(W.sizes()) : at::empty({0}, W.options());
  Tensor gb = j.mask[2] ? j.gb.to(W.scalar_type()).view(b->sizes()) : at::empty({0}, W.options());
  return {gw, gb};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> linear_cross_entropy(
    const Tensor& input, const Tensor& linear_weight, const std::optional<Tensor>& linear_bias, const Tensor& target,
    const std::optional<Tensor>& weight, int64_t reduction, int64_t ignore_index, double label_smoothing,
    std::optional<double> softcap, double z_loss, int64_t budget, int64_t row_cap, bool acc_weight_grad,
    std::array<bool, 3> grad_now) {
  const Reduction red = to_reduction(reduction, kOp);
  Prepared P =
      prepare(input, linear_weight, linear_bias, target, weight, ignore_index, label_smoothing, softcap, z_loss);
  Job& j = P.j;
  const bool mask[3] = {red != Reduction::None && grad_now[0], red != Reduction::None && grad_now[1],
                        red != Reduction::None && grad_now[2] && P.has_b};
  j.plan = plan_linear_ce(shape_of(input, P.C, P.D, target, j.prob), budget, row_cap, acc_weight_grad, mask);
  alloc_grads(P, mask);
  if (mask[0] || mask[1] || mask[2]) {
    const Tensor one = at::ones({}, j.ce_rows.options());
    j.s_ce = red == Reduction::Mean ? inverse_or_zero(P.denom_ce) : one;
    j.s_z = red == Reduction::Mean ? inverse_or_zero(P.denom_z) : one;
  }
  run(j);
  Tensor ce = j.ce_rows;
  if (P.bad.defined()) ce = at::where(P.bad, at::full({}, std::numeric_limits<double>::quiet_NaN(), ce.options()), ce);
  Tensor loss;
  if (red == Reduction::None) {
    loss = (z_loss != 0 ? ce + j.z_rows : ce).view(P.row_shape);
  } else if (red == Reduction::Sum) {
    loss = z_loss != 0 ? ce.sum() + j.z_rows.sum() : ce.sum();
  } else {
    loss = z_loss != 0 ? ce.sum() / P.denom_ce + j.z_rows.sum() / P.denom_z : ce.sum() / P.denom_ce;
  }
  auto [gw, gb] = grads_out(P, linear_weight, linear_bias);
  return {loss, j.lse_rows.view(P.row_shape), j.gx, gw, gb};
}

std::tuple<Tensor, Tensor, Tensor> linear_cross_entropy_backward(
    const Tensor& grad_loss, const Tensor& input, const Tensor& linear_weight, const std::optional<Tensor>& linear_bias,
    const Tensor& target, const std::optional<Tensor>& weight, int64_t reduction, int64_t ignore_index,
    double label_smoothing, std::optional<double> softcap, double z_loss, int64_t budget, int64_t row_cap,
    bool acc_weight_grad, std::array<bool, 3> output_mask) {
  const Reduction red = to_reduction(reduction, kOp);
  Prepared P =
      prepare(input, linear_weight, linear_bias, target, weight, ignore_index, label_smoothing, softcap, z_loss);
  Job& j = P.j;
  const bool mask[3] = {output_mask[0], output_mask[1], output_mask[2] && P.has_b};
  j.plan = plan_linear_ce(shape_of(input, P.C, P.D, target, j.prob), budget, row_cap, acc_weight_grad, mask);
  alloc_grads(P, mask);
  const Tensor g = grad_loss.to(j.ce_rows.scalar_type());
  if (red == Reduction::None) {
    TORCH_CHECK(g.numel() == input.size(0) * P.D, kOp, ": expected grad_loss of shape ", c10::IntArrayRef(P.row_shape),
                ", got ", grad_loss.sizes());
    j.s_ce = j.s_z = g.reshape({input.size(0), P.D});
  } else {
    TORCH_CHECK(g.numel() == 1, kOp, ": expected a single-element grad_loss, got ", grad_loss.sizes());
    const Tensor g0 = g.reshape({});
    j.s_ce = red == Reduction::Mean ? inverse_or_zero(P.denom_ce) * g0 : g0;
    j.s_z = red == Reduction::Mean ? inverse_or_zero(P.denom_z) * g0 : g0;
  }
  run(j);
  auto [gw, gb] = grads_out(P, linear_weight, linear_bias);
  return {j.gx, gw, gb};
}

std::vector<int64_t> linear_ce_plan_op(const Tensor& input, const Tensor& linear_weight,
                                       const std::optional<Tensor>& linear_bias, const Tensor& target, int64_t budget,
                                       int64_t row_cap, bool acc_weight_grad, std::array<bool, 3> grad_mask) {
  int64_t D = 1;
  for (int64_t d = 1; d < linear_weight.dim() - 1; ++d) D *= linear_weight.size(d);
  const bool mask[3] = {grad_mask[0], grad_mask[1], grad_mask[2] && linear_bias && linear_bias->defined()};
  const LinearCePlan p = plan_linear_ce(shape_of(input, linear_weight.size(0), D, target, is_prob(target)), budget,
                                        row_cap, acc_weight_grad, mask);
  return {p.rows, p.classes, p.bytes, p.budget, int64_t(p.acc_weight_grad)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastloss, m) {
  m.def(
      "linear_ce_stats(Tensor input, Tensor linear_weight, Tensor? linear_bias, Tensor target, Tensor? weight, "
      "int class_offset, int num_classes, int ignore_index, float label_smoothing, float? softcap, int budget) "
      "-> Tensor");
  m.def(
      "linear_ce_grad(Tensor input, Tensor linear_weight, Tensor? linear_bias, Tensor target, Tensor? weight, "
      "Tensor coef, int class_offset, int ignore_index, float? softcap, int budget, bool[3] output_mask, "
      "bool acc_weight_grad=True) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  // The public op: (loss, lse); its C++ autograd (autograd/linear_cross_entropy.cpp) decides the gradients.
  m.def(
      "linear_cross_entropy(Tensor input, Tensor linear_weight, Tensor? linear_bias, Tensor target, Tensor? weight, "
      "int reduction, int ignore_index, float label_smoothing, float? softcap, float z_loss, int budget, int row_cap, "
      "bool acc_weight_grad) -> (Tensor loss, Tensor lse)");
  // Internal (called by the autograd only):
  m.def(
      "_linear_cross_entropy_forward(Tensor input, Tensor linear_weight, Tensor? linear_bias, Tensor target, "
      "Tensor? weight, int reduction, int ignore_index, float label_smoothing, float? softcap, float z_loss, "
      "int budget, int row_cap, bool acc_weight_grad, bool[3] grad_now) -> (Tensor loss, Tensor lse, "
      "Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "_linear_cross_entropy_backward(Tensor grad_loss, Tensor input, Tensor linear_weight, Tensor? linear_bias, "
      "Tensor target, Tensor? weight, int reduction, int ignore_index, float label_smoothing, float? softcap, "
      "float z_loss, int budget, int row_cap, bool acc_weight_grad, bool[3] output_mask) "
      "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "_linear_ce_plan(Tensor input, Tensor linear_weight, Tensor? linear_bias, Tensor target, int budget, "
      "int row_cap, bool acc_weight_grad, bool[3] grad_mask) -> int[]");
}

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("linear_ce_stats", &linear_ce_stats);
  m.impl("linear_ce_grad", &linear_ce_grad);
  m.impl("_linear_cross_entropy_forward", &linear_cross_entropy);
  m.impl("_linear_cross_entropy_backward", &linear_cross_entropy_backward);
  m.impl("_linear_ce_plan", &linear_ce_plan_op);
}

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  m.impl("linear_ce_stats", &linear_ce_stats);
  m.impl("linear_ce_grad", &linear_ce_grad);
  m.impl("_linear_cross_entropy_forward", &linear_cross_entropy);
  m.impl("_linear_cross_entropy_backward", &linear_cross_entropy_backward);
  m.impl("_linear_ce_plan", &linear_ce_plan_op);
}

}  // namespace fastloss
