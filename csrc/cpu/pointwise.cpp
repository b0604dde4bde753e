// CPU kernels of the pointwise family (math in ops/pointwise.h). One loop body serves forward and
// backward: per element it reads a, b (c, grad_loss) once, and writes the loss ('none') and each
// requested gradient once; mean/sum reduce in fixed-size chunks summed in a fixed order, so the
// result does not depend on the thread count and no loss-sized temporary exists.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/common.h"
#include "common/cpu_reduce.h"
#include "common/cpu_vec.h"
#include "ops/pointwise_ops.h"

namespace fastloss {
namespace cpu {
namespace {

using at::Tensor;

// Elements are processed in tiles: convert the tile's inputs to the accumulate type, evaluate the
// loss and derivatives into small arrays, then sum / scale / store in separate loops. Every loop
// is branch-free over its elements, so the compiler vectorizes them; the per-call choices (weight
// or not, which gradients) are taken once per tile.
constexpr int64_t kTile = 256;

template <typename scalar_t>
inline void load_tile(const scalar_t* src, acc_t<scalar_t>* dst, int64_t m) {
  for (int64_t i = 0; i < m; ++i) dst[i] = static_cast<acc_t<scalar_t>>(src[i]);
}

// Elements [t0, t0 + m) of c, d or grad_loss, dense or broadcast (ops/pointwise.h PwBcast).
template <typename scalar_t>
inline void load_tile(const scalar_t* src, const PwBcast& bc, int64_t t0, acc_t<scalar_t>* dst, int64_t m) {
  if (!bc.per) return load_tile(src + t0, dst, m);
  PwBcastCursor<scalar_t> cur(src, bc, t0);
  for (int64_t i = 0; i < m; ++i) dst[i] = static_cast<acc_t<scalar_t>>(cur.next());
}

template <typename scalar_t>
inline void store_tile(scalar_t* dst, const acc_t<scalar_t>* v, const acc_t<scalar_t>* k, acc_t<scalar_t> sub,
                       int64_t m) {
  for (int64_t i = 0; i < m; ++i) dst[i] = static_cast<scalar_t>((v[i] - sub) * k[i]);
}

// Adds a tile's m losses to the 8 lanes: lane j takes elements j, j + 8, ... (the one summation order).
template <typename acc>
inline void add_lanes(const acc* L, int64_t m, acc* lane) {
  int64_t i = 0;
  for (; i + 8 <= m; i += 8)
    for (int j = 0; j < 8; ++j) lane[j] += L[i + j];
  for (int j = 0; i + j < m; ++j) lane[j] += L[i + j];
}

template <typename acc>
inline acc sum_lanes(const acc* lane) {
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// Kinds whose float math has no vector-table routine (the generic pw_eval loop of pw_range).
template <PwKind K, typename acc>
constexpr bool pw_generic() {
  return !(std::is_same_v<acc, float> && (K == PwKind::SoftMargin || K == PwKind::KLDiv || K == PwKind::SigmoidFocal ||
                                          K == PwKind::BCE || K == PwKind::BCEWithLogits));
}

// The per-element loss ('none') of a tile, in the input's dtype and/or the accumulate dtype (autocast).
template <typename scalar_t>
inline void store_losses(const PwIo<scalar_t>& io, const acc_t<scalar_t>* L, int64_t t0, int64_t m) {
  if (io.loss_s)
    for (int64_t e = 0; e < m; ++e) io.loss_s[t0 + e] = static_cast<scalar_t>(L[e]);
  if (io.loss_a) std::copy(L, L + m, io.loss_a + t0);
}

#define FASTLOSS_ISA_BODY "cpu/pointwise_ab_impl.inc"
#include "cpu/per_isa.inc"

// Runs elements [begin, end); returns the sum of their losses, in a fixed order: lane j of 8
// accumulates the tile's elements j, j + 8, ..., then the lanes are added pairwise.
// *bad: the first element of the range outside binary_cross_entropy's domain (pw_bce_bad code), or -1.
template <PwKind K, typename scalar_t>
acc_t<scalar_t> pw_range(const PwIo<scalar_t>& io, int64_t begin, int64_t end, int64_t* bad) {
  using acc = acc_t<scalar_t>;
  if constexpr (pw_generic<K, acc>()) {
    if (!io.c && !io.d && !io.g[2] && !io.first_bad && io.glb.per <= 1) {
#ifdef FASTLOSS_CPU_HAVE_AVX2
      if (use_avx2_fma()) return isa_avx2::pw_range_ab<K>(io, begin, end);
#endif
      return isa_base::pw_range_ab<K>(io, begin, end);
    }
  }
  acc A[kTile], B[kTile], C[kTile], D[kTile], L[kTile], DA[kTile], DB[kTile], DC[kTile], KK[kTile];
  acc lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const bool any_grad = io.g[0] || io.g[1] || io.g[2];
  const acc k0 = io.gscale * (io.kdev ? *io.kdev : acc(1));
  const acc sub = io.sub ? *io.sub : acc(0);
  for (int64_t t0 = begin; t0 < end; t0 += kTile) {
    const int64_t m = std::min(kTile, end - t0);
    load_tile(io.a + t0, A, m);
    load_tile(io.b + t0, B, m);
    if (io.c) {
      load_tile(io.c, io.cb, t0, C, m);
    } else {
      for (int64_t i = 0; i < m; ++i) C[i] = acc(1);
    }
    if constexpr (K == PwKind::BCEWithLogits) {
      if (io.d) {
        load_tile(io.d, io.db, t0, D, m);
      } else {
        for (int64_t i = 0; i < m; ++i) D[i] = acc(1);
      }
    }
    if constexpr (K == PwKind::BCE) {
      if (io.first_bad && *bad < 0) {
        bool any = false;  // branch-free scan first; the exact position only when something is off
        for (int64_t i = 0; i < m; ++i) any |= !(A[i] >= acc(0) && A[i] <= acc(1) && B[i] >= acc(0) && B[i] <= acc(1));
        for (int64_t i = 0; any && i < m && *bad < 0; ++i) *bad = pw_bce_bad(A[i], B[i], t0 + i);
      }
    }
    constexpr bool kFloat = std::is_same_v<acc, float>;
    if constexpr (kFloat && (K == PwKind::SoftMargin || K == PwKind::KLDiv || K == PwKind::SigmoidFocal)) {
      // exp/log through the vector table (libm one element at a time was ~20 ns per element)
      if constexpr (K == PwKind::SoftMargin)
        vec_ops().pw_soft_margin(A, B, m, L, DA, DB);
      else if constexpr (K == PwKind::KLDiv)
        vec_ops().pw_kl_div(A, B, m, io.param != acc(0), L, DA, DB);
      else
        vec_ops().pw_focal(A, B, m, io.param, io.param2, L, DA, DB);
      for (int64_t i = 0; i < m; ++i) DC[i] = acc(0);
    } else if constexpr (kFloat && (K == PwKind::BCE || K == PwKind::BCEWithLogits)) {
      // the same, unweighted; then the weight as pw_eval applies it (d/dweight = the unweighted loss)
      if constexpr (K == PwKind::BCE)
        vec_ops().pw_bce(A, B, m, L, DA, DB);
      else
        vec_ops().pw_bce_logits(A, B, io.d ? D : nullptr, m, L, DA, DB);
      for (int64_t i = 0; i < m; ++i) {
        DC[i] = L[i];
        L[i] *= C[i];
        DA[i] *= C[i];
        DB[i] *= C[i];
      }
    } else {
      for (int64_t i = 0; i < m; ++i) {
        const PwOut<acc> o =
            pw_eval<K, acc>(A[i], B[i], C[i], K == PwKind::BCEWithLogits ? D[i] : acc(1), io.param, io.param2);
        L[i] = o.loss;
        DA[i] = o.da;
        DB[i] = o.db;
        DC[i] = o.dc;
      }
    }
    add_lanes(L, m, lane);
    store_losses(io, L, t0, m);
    if (!any_grad) continue;
    if (io.gl_s) {
      load_tile(io.gl_s, io.glb, t0, KK, m);
    } else if (io.gl_a) {
      load_tile(io.gl_a, io.glb, t0, KK, m);
    } else {
      for (int64_t e = 0; e < m; ++e) KK[e] = acc(1);
    }
    for (int64_t e = 0; e < m; ++e) KK[e] *= k0;
    if (io.g[0]) store_tile(io.g[0] + t0, DA, KK, acc(0), m);
    if (io.g[1]) store_tile(io.g[1] + t0, DB, KK, acc(0), m);
    if (io.g[2]) store_tile(io.g[2] + t0, DC, KK, sub, m);
  }
  return sum_lanes(lane);
}

// All n elements, in parallel over fixed 16384-element chunks; the chunk sums are added in order,
// so the result does not depend on the thread count. The first bad element (binary_cross_entropy)
// goes to *io.first_bad.
template <PwKind K, typename scalar_t>
acc_t<scalar_t> pw_run(const PwIo<scalar_t>& io, int64_t n) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t kChunk = 16384;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<acc> partial(static_cast<size_t>(chunks), acc(0));
  std::vector<int64_t> bad(static_cast<size_t>(chunks), -1);
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t ch = b; ch < e; ++ch)
      partial[static_cast<size_t>(ch)] =
          pw_range<K>(io, ch * kChunk, std::min(n, (ch + 1) * kChunk), &bad[static_cast<size_t>(ch)]);
  });
  acc total = 0;
  for (acc v : partial) total += v;
  if (io.first_bad)
    for (int64_t code : bad)
      if (code >= 0) {
        *io.first_bad = code;
        break;
      }
  return total;
}

// The device half of PointwiseOps (ops/pointwise_ops.h).
struct CpuPointwise {
  // sum(c) in the accumulate type, as a one-element tensor (fixed-order sum).
  static Tensor weight_sum(const PwPlan& p) {
    Tensor w = at::empty({1}, p.a.options().dtype(acc_dtype(p.a.scalar_type())));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.c.scalar_type(), "fastloss_weight_sum_cpu", [&] {
      using acc = acc_t<scalar_t>;
      const scalar_t* c = p.c.const_data_ptr<scalar_t>();
      w.mutable_data_ptr<acc>()[0] = fixed_order_sum<acc>(p.n, [c](int64_t i) { return static_cast<acc>(c[i]); });
    });
    return w;
  }

  template <typename scalar_t>
  static void forward(const PwPlan& p, const PwIo<scalar_t>& io, const Tensor& loss, const Tensor& wsum) {
    using acc = acc_t<scalar_t>;
    dispatch_pw_kind(p.kind, [&](auto kc) {
      acc total = pw_run<decltype(kc)::value>(io, p.n);
      if (p.reduction == Reduction::None) return;
      if (p.reduction == Reduction::Mean)
        total = total / (wsum.defined() ? wsum.const_data_ptr<acc>()[0] : static_cast<acc>(p.n));
      loss.fill_(static_cast<double>(total));
    });
  }

  template <typename scalar_t>
  static void backward(const PwPlan& p, const PwIo<scalar_t>& io) {
    dispatch_pw_kind(p.kind, [&](auto kc) { pw_run<decltype(kc)::value>(io, p.n); });
  }

  static int64_t first_bad(const PwPlan&, const Tensor& t) {
    const int64_t v = t.const_data_ptr<int64_t>()[0];
    return v == std::numeric_limits<int64_t>::max() ? -1 : v;
  }
};

using Ops = PointwiseOps<CpuPointwise>;

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("_pointwise_forward", &cpu::Ops::forward);
  m.impl("_pointwise_backward", &cpu::Ops::backward);
}

}  // namespace fastloss
