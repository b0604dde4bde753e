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
#include "common/cpu_vec.h"
#include "ops/margin_rows_ops.h"

namespace fastloss {
namespace cpu {
namespace {

using at::Tensor;

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

#define FASTLOSS_ISA_BODY "cpu/margin_rows_impl.inc"
#include "cpu/per_isa.inc"

struct CpuMarginRows {
  static int64_t multi_margin(const MarginRowsPlan& p, int pw, double margin, MarginRun& run) {
#ifdef FASTLOSS_CPU_HAVE_AVX2
    if (use_avx2_fma()) return isa_avx2::run_multi_margin(p, pw, margin, run);
#endif
    return isa_base::run_multi_margin(p, pw, margin, run);
  }

  static int64_t multilabel(const MarginRowsPlan& p, MarginRun& run) {
#ifdef FASTLOSS_CPU_HAVE_AVX2
    if (use_avx2_fma()) return isa_avx2::run_multilabel(p, run);
#endif
    return isa_base::run_multilabel(p, run);
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
  m.impl("_multi_margin_loss_forward", &cpu::Ops::multi_margin);
  m.impl("_multi_margin_loss_backward", &cpu::Ops::multi_margin_backward);
  m.impl("_multilabel_margin_loss_forward", &cpu::Ops::multilabel);
  m.impl("_multilabel_margin_loss_backward", &cpu::Ops::multilabel_backward);
}

}  // namespace fastloss
