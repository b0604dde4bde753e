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
#include "common/cpu_rows.h"
#include "common/errors.h"
#include "ops/ce_partial.h"

namespace fastloss {
namespace cpu {
namespace {

using at::Tensor;

// The row as acc values (common/cpu_rows.h widen_row: the row itself when the types agree), and with a
// softcap z = cap * tanh(x / cap) into `buf` (never stored in the logits).
template <typename scalar_t, typename acc>
const acc* read_row(const scalar_t* p, int64_t n, std::optional<double> cap, std::vector<acc>& buf) {
  const acc* src = widen_row<scalar_t, acc>(p, n, buf);
  if (!cap) return src;
  buf.resize(static_cast<size_t>(n));  // (src is buf.data() already when the row was widened)
  RowOps<acc>::softcap(src, n, static_cast<acc>(*cap), buf.data());
  return buf.data();
}

// Row r of a probability target as acc values: its own memory when it is in the accumulate dtype, else
// (the logits' half/bfloat16 dtype, ops/ce_partial.h PartialArgs) widened into `buf`.
template <typename scalar_t, typename acc>
const acc* prob_row(const at::Tensor& q, int64_t r, int64_t n, std::vector<acc>& buf) {
  if (q.scalar_type() == c10::CppTypeToScalarType<acc>::value) return q.const_data_ptr<acc>() + r * n;
  return widen_row<scalar_t, acc>(q.const_data_ptr<scalar_t>() + r * n, n, buf);
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

Tensor stats_cpu(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, int64_t class_offset,
                 int64_t num_classes, int64_t ignore_index, double eps, std::optional<double> softcap) {
  const char* op = "fastloss.ce_partial_stats";
  const PartialArgs a =
      partial_stats_args(logits, target, weight, class_offset, num_classes, ignore_index, eps, softcap, op);
  const auto dtype = a.x.scalar_type();
  const int64_t R = a.R, Cs = a.Cs;
  Tensor out = at::empty({R, 5}, logits.options().dtype(acc_dtype(dtype)));
  if (!a.prob)
    dispatch_class_target(a.target.scalar_type(),
                          [&](auto tag) { validate_targets<decltype(tag)>(a.target, num_classes, ignore_index, op); });
  if (R == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_ce_partial_stats_cpu", [&] {
    using acc = acc_t<scalar_t>;
    using Ops = RowOps<acc>;
    const scalar_t* xp = a.x.const_data_ptr<scalar_t>();
    const acc* wp = a.weight.defined() ? a.weight.const_data_ptr<acc>() : nullptr;
    acc* op_ = out.mutable_data_ptr<acc>();
    const acc e = static_cast<acc>(eps), ninf = -std::numeric_limits<acc>::infinity();
    auto run = [&](auto tag) {
      using target_t = decltype(tag);
      at::parallel_for(0, R, write_row_grain(Cs), [&](int64_t begin, int64_t end) {
        std::vector<acc> xbuf, qbuf;
        for (int64_t r = begin; r < end; ++r) {
          const acc* z = read_row<scalar_t, acc>(xp + r * Cs, Cs, softcap, xbuf);
          acc m, sa = 0, sb = 0, c = 0;
          if (a.prob) {
            const acc* q = prob_row<scalar_t, acc>(a.target, r, Cs, qbuf);
            Ops::max_wsum(z, nullptr, Cs, false, &m, nullptr);
            Ops::prob_sums(z, q, wp, Cs, acc(1) - e, static_cast<acc>(eps / double(num_classes)), &sa, &sb);
          } else {
            Ops::max_wsum(z, wp, Cs, eps > 0, &m, &c);
            const int64_t t = static_cast<int64_t>(a.target.const_data_ptr<target_t>()[r]);
            const int64_t local = t - class_offset;
            if (t != ignore_index && local >= 0 && local < Cs) {
              sa = z[local];
              sb = wp ? wp[local] : acc(1);
            }
            if (!(eps > 0)) c = 0;
          }
          // a slice whose max is -inf (every logit -inf, or Cs = 0) adds nothing: s = 0
          const acc s = m == ninf ? acc(0) : Ops::exp_sum(z, m, Cs, nullptr);
          acc* o = op_ + r * 5;
          o[0] = m;
          o[1] = s;
          o[2] = sa;
          o[3] = sb;
          o[4] = c;
        }
      });
    };
    if (a.prob)
      run(int64_t{});  // target_t unused
    else
      dispatch_class_target(a.target.scalar_type(), run);
  });
  return out;
}

// Writes the gradient of every row into `out` (contiguous like a.x; may be a.x itself: each row is read
// before it is written, by the same thread).
void grad_into(const PartialArgs& a, Tensor& out) {
  const auto dtype = a.x.scalar_type();
  const int64_t R = a.R, Cs = a.Cs;
  if (R == 0 || Cs == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_ce_partial_grad_cpu", [&] {
    using acc = acc_t<scalar_t>;
    using Ops = RowOps<acc>;
    const scalar_t* xp = a.x.const_data_ptr<scalar_t>();
    scalar_t* gp = out.mutable_data_ptr<scalar_t>();
    const acc* wp = a.weight.defined() ? a.weight.const_data_ptr<acc>() : nullptr;
    const acc* kp = a.coef.const_data_ptr<acc>();
    const acc cap = a.softcap ? static_cast<acc>(*a.softcap) : acc(1), inv_cap = acc(1) / cap;
    auto run = [&](auto tag) {
      using target_t = decltype(tag);
      at::parallel_for(0, R, write_row_grain(Cs), [&](int64_t begin, int64_t end) {
        std::vector<acc> xbuf, qbuf, ebuf;
        for (int64_t r = begin; r < end; ++r) {
          scalar_t* g = gp + r * Cs;
          int64_t local = -1;
          if (!a.prob) {
            const int64_t t = static_cast<int64_t>(a.target.const_data_ptr<target_t>()[r]);
            if (t == a.ignore_index) {  // ignored rows: 0 (whatever the coefficients)
              std::fill(g, g + Cs, scalar_t(0));
              continue;
            }
            local = t - a.class_offset;  // outside the slice (or, unvalidated, out of range): no -B0 term
          }
          const acc* z = read_row<scalar_t, acc>(xp + r * Cs, Cs, a.softcap, xbuf);
          acc* e;
          if constexpr (std::is_same_v<scalar_t, acc>) {
            e = g;
          } else {
            ebuf.resize(static_cast<size_t>(Cs));
            e = ebuf.data();
          }
          const acc* kr = kp + r * 4;
          // p_c = exp(z_c - lse)
          if (a.prob) {
            Ops::exp_shift(z, -kr[0], Cs, e);
            Ops::prob_grad(e, prob_row<scalar_t, acc>(a.target, r, Cs, qbuf), wp, Cs, kr[1], kr[2], kr[3], e);
          } else {
            Ops::exp_axpw(z, -kr[0], Cs, kr[1], kr[2], wp, e);
            if (local >= 0 && local < Cs) e[local] -= kr[3];
          }
          if (a.softcap)
            for (int64_t i = 0; i < Cs; ++i) {
              const acc u = z[i] * inv_cap;
              e[i] *= acc(1) - u * u;
            }
          narrow_row<scalar_t, acc>(e, Cs, g);
        }
      });
    };
    if (a.prob)
      run(int64_t{});
    else
      dispatch_class_target(a.target.scalar_type(), run);
  });
}

Tensor grad_cpu(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, const Tensor& coef,
                int64_t class_offset, int64_t ignore_index, std::optional<double> softcap) {
  return partial_grad_out(
      partial_grad_args(logits, target, weight, coef, class_offset, ignore_index, softcap, "fastloss.ce_partial_grad"),
      grad_into);
}

void grad_inplace_cpu(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                      const Tensor& coef, int64_t class_offset, int64_t ignore_index, std::optional<double> softcap) {
  partial_grad_inplace(
      logits,
      partial_grad_args(logits, target, weight, coef, class_offset, ignore_index, softcap, "fastloss.ce_partial_grad_"),
      grad_into);
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("ce_partial_stats", &cpu::stats_cpu);
  m.impl("ce_partial_grad", &cpu::grad_cpu);
  m.impl("ce_partial_grad_", &cpu::grad_inplace_cpu);
}

}  // namespace fastloss
