// CPU engine of the margin_rows family (math in ops/margin_rows.h, op glue in ops/margin_rows_ops.h).
// Rows run in parallel (at::parallel_for); each row is computed by one thread in a fixed lane order,
// so the per-row losses -- reduced afterwards in a fixed order -- and the gradients do not depend on
// the thread count.
//
// multi_margin, per row: the target y and x_y, then one sweep over the row that adds the hinge terms
// and, when the gradient is wanted, writes d/dx_i and sums them for d/dx_y (written last). Moves:
// the row read once, the gradient row written once, one target (and one weight) read.
// multilabel_margin, per row: one sweep over the target row (every entry is range-checked, as torch;
// the list ends at the first -1) while the scores are copied into a row-sized scratch in the
// accumulate type with the target classes set to -inf (so the pair loop needs no mask); then one
// sweep of that scratch per listed target (O(K C), as torch), counting for every non-target i how
// many pairs are active (+1/C each) and for every target how many (-1/C each); a last sweep writes
// the gradient. Moves: input row and target row read once, gradient row written once.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <vector>

#include "common/common.h"
#include "common/cpu_reduce.h"
#include "ops/margin_rows_ops.h"

namespace fastloss {
namespace cpu {
namespace {

using at::Tensor;

constexpr int kLanes = 8;  // independent accumulators: a fixed order the compiler can vectorize

struct FirstBad {
  std::atomic<int64_t> pos{std::numeric_limits<int64_t>::max()};
  void note(int64_t p) {
    int64_t cur = pos.load(std::memory_order_relaxed);
    while (p < cur && !pos.compare_exchange_weak(cur, p, std::memory_order_relaxed)) {
    }
  }
  int64_t get() const {
    const int64_t p = pos.load();
    return p == std::numeric_limits<int64_t>::max() ? -1 : p;
  }
};

struct Done {  // the CPU checks synchronously: bad() is already known
  int64_t pos;
  int64_t bad() const { return pos; }
};

template <typename acc>
acc lanes_sum(const acc* s) {
  return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

// multi_margin over the classes [b, e) of one row (the target excluded by the caller): hinge terms
// into s[], and with G the gradient coef * d(term)/dx written to g[] and summed into gs[].
template <int P, bool G, typename scalar_t, typename acc>
inline void mm_span(const scalar_t* x, scalar_t* g, int64_t b, int64_t e, acc mxy, acc coef, acc* s, acc* gs) {
  int64_t i = b;
  for (; i + kLanes <= e; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      acc dz;
      s[l] += mm_term<P>(mxy, static_cast<acc>(x[i + l]), &dz);
      if constexpr (G) {
        const acc gv = coef * dz;
        gs[l] += gv;
        g[i + l] = static_cast<scalar_t>(gv);
      }
    }
  }
  for (; i < e; ++i) {
    acc dz;
    s[0] += mm_term<P>(mxy, static_cast<acc>(x[i]), &dz);
    if constexpr (G) {
      const acc gv = coef * dz;
      gs[0] += gv;
      g[i] = static_cast<scalar_t>(gv);
    }
  }
}

template <typename scalar_t, int P, bool G>
int64_t mm_rows(const MarginRowsPlan& p, double margin, MarginRun& run) {
  using acc = acc_t<scalar_t>;
  const scalar_t* in = p.input.const_data_ptr<scalar_t>();
  const int64_t* tg = p.target.const_data_ptr<int64_t>();
  const acc* w = p.weight.defined() ? p.weight.const_data_ptr<acc>() : nullptr;
  scalar_t* grad = G ? run.grad.mutable_data_ptr<scalar_t>() : nullptr;
  acc* row_loss = run.row_loss.defined() ? run.row_loss.mutable_data_ptr<acc>() : nullptr;
  const acc* kdev = run.kdev.defined() ? run.kdev.const_data_ptr<acc>() : nullptr;
  const bool single = run.single;
  const acc kscale = static_cast<acc>(run.kscale), m = static_cast<acc>(margin);
  const int64_t C = p.C;
  const acc Ca = static_cast<acc>(C);
  FirstBad bad;
  at::parallel_for(0, p.rows, std::max<int64_t>(1, 16384 / C), [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      const int64_t y = tg[r];
      if (y < 0 || y >= C) {  // refused by the caller: nothing is read out of bounds
        bad.note(r);
        continue;
      }
      const scalar_t* x = in + r * C;
      scalar_t* g = G ? grad + r * C : nullptr;
      const acc wy = w ? w[y] : acc(1);
      const acc mxy = m - static_cast<acc>(x[y]);
      const acc k = kscale * (kdev ? kdev[single ? 0 : r] : acc(1));
      const acc coef = wy * k / Ca;
      acc s[kLanes] = {}, gs[kLanes] = {};
      mm_span<P, G>(x, g, 0, y, mxy, coef, s, gs);
      mm_span<P, G>(x, g, y + 1, C, mxy, coef, s, gs);
      if (row_loss) row_loss[r] = lanes_sum(s) * wy / Ca;
      if constexpr (G) g[y] = static_cast<scalar_t>(-lanes_sum(gs));
    }
  });
  return bad.get();
}

template <typename scalar_t, bool G>
int64_t ml_rows(const MarginRowsPlan& p, MarginRun& run) {
  using acc = acc_t<scalar_t>;
  const scalar_t* in = p.input.const_data_ptr<scalar_t>();
  const int64_t* tg = p.target.const_data_ptr<int64_t>();
  scalar_t* grad = G ? run.grad.mutable_data_ptr<scalar_t>() : nullptr;
  acc* row_loss = run.row_loss.defined() ? run.row_loss.mutable_data_ptr<acc>() : nullptr;
  const acc* kdev = run.kdev.defined() ? run.kdev.const_data_ptr<acc>() : nullptr;
  const bool single = run.single;
  const acc kscale = static_cast<acc>(run.kscale);
  const int64_t C = p.C;
  const acc Ca = static_cast<acc>(C);
  constexpr acc kNegInf = -std::numeric_limits<acc>::infinity();
  FirstBad bad;
  at::parallel_for(0, p.rows, std::max<int64_t>(1, 4096 / C), [&](int64_t rb, int64_t re) {
    // per-chunk scratch: the row in acc with targets at -inf; per class the active-pair count of a
    // non-target (>= 0) or -1 for a target; per target class the pairs it lost (kept zero between rows)
    std::vector<acc> xm(C);
    std::vector<int32_t> cnt(C);
    std::vector<int64_t> lost(C, 0);
    for (int64_t r = rb; r < re; ++r) {
      const int64_t* t = tg + r * C;
      const scalar_t* x = in + r * C;
      int64_t K = -1, first_bad = -1;
      for (int64_t d = 0; d < C; ++d) {
        const int64_t v = t[d];
        if (v == -1) {
          if (K < 0) K = d;
        } else if ((v < -1 || v >= C) && first_bad < 0) {
          first_bad = d;
        }
        xm[d] = static_cast<acc>(x[d]);
        cnt[d] = 0;
      }
      if (first_bad >= 0) {
        bad.note(r * C + first_bad);
        continue;
      }
      if (K < 0) K = C;
      for (int64_t q = 0; q < K; ++q) {
        xm[t[q]] = kNegInf;
        cnt[t[q]] = -1;
      }
      acc s[kLanes] = {};
      for (int64_t q = 0; q < K; ++q) {
        const int64_t j = t[q];
        const acc c = acc(1) - static_cast<acc>(x[j]);
        int32_t n[kLanes] = {};
        int64_t i = 0;
        for (; i + kLanes <= C; i += kLanes) {
          for (int l = 0; l < kLanes; ++l) {
            const acc z = ml_z(c, xm[i + l]);
            const bool on = z > acc(0);
            s[l] += on ? z : acc(0);
            cnt[i + l] += on;
            n[l] += on;
          }
        }
        for (; i < C; ++i) {
          const acc z = ml_z(c, xm[i]);
          const bool on = z > acc(0);
          s[0] += on ? z : acc(0);
          cnt[i] += on;
          n[0] += on;
        }
        int64_t nn = 0;
        for (int l = 0; l < kLanes; ++l) nn += n[l];
        lost[j] += nn;
      }
      if (row_loss) row_loss[r] = lanes_sum(s) / Ca;
      if constexpr (G) {
        const acc gk = kscale * (kdev ? kdev[single ? 0 : r] : acc(1)) / Ca;
        scalar_t* g = grad + r * C;
        for (int64_t d = 0; d < C; ++d) {
          const int32_t v = cnt[d];
          g[d] = static_cast<scalar_t>(v < 0 ? -static_cast<acc>(lost[d]) * gk : static_cast<acc>(v) * gk);
        }
      }
      for (int64_t q = 0; q < K; ++q) lost[t[q]] = 0;
    }
  });
  return bad.get();
}

struct CpuMarginRows {
  static Done multi_margin(const MarginRowsPlan& p, int pw, double margin, MarginRun& run) {
    int64_t bad = -1;
    const bool G = run.grad.numel() > 0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.input.scalar_type(), "fastloss_multi_margin_cpu", [&] {
      if (pw == 1)
        bad = G ? mm_rows<scalar_t, 1, true>(p, margin, run) : mm_rows<scalar_t, 1, false>(p, margin, run);
      else
        bad = G ? mm_rows<scalar_t, 2, true>(p, margin, run) : mm_rows<scalar_t, 2, false>(p, margin, run);
    });
    return {bad};
  }

  static Done multilabel(const MarginRowsPlan& p, MarginRun& run) {
    int64_t bad = -1;
    const bool G = run.grad.numel() > 0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.input.scalar_type(), "fastloss_multilabel_cpu", [&] {
      bad = G ? ml_rows<scalar_t, true>(p, run) : ml_rows<scalar_t, false>(p, run);
    });
    return {bad};
  }

  static Tensor finish(const MarginRowsPlan& p, const Tensor& row_loss) {
    return AT_DISPATCH_FLOATING_TYPES(row_loss.scalar_type(), "fastloss_margin_rows_finish_cpu", [&] {
      return finish_loss<scalar_t>(row_loss, p.reduction, static_cast<scalar_t>(p.rows), p.out_dtype, p.none_shape);
    });
  }
};

using Ops = MarginRowsOps<CpuMarginRows>;

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("multi_margin_loss", &cpu::Ops::multi_margin);
  m.impl("multi_margin_loss_backward", &cpu::Ops::multi_margin_backward);
  m.impl("multilabel_margin_loss", &cpu::Ops::multilabel);
  m.impl("multilabel_margin_loss_backward", &cpu::Ops::multilabel_backward);
}

}  // namespace fastloss
