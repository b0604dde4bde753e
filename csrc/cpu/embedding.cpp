// CPU engine of the row-wise embedding losses (math in ops/embedding.h, op glue in
// ops/embedding_ops.h). Rows run in parallel; each row is read once for its sums and, when
// gradients are wanted, once more while it is still in cache to write them. Per-row losses (one
// value per row) are reduced in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/common.h"
#include "common/cpu_reduce.h"
#include "ops/embedding_ops.h"

namespace fastloss {
namespace cpu {
namespace {

using at::Tensor;

struct CpuRows {
  template <typename Make>
  static void rows(const RowPlan& p, Make&& make, RowRun& run) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.in[0].scalar_type(), "fastloss_rows_cpu", [&] {
      using acc = acc_t<scalar_t>;
      const auto m = make(acc{});
      using M = std::decay_t<decltype(m)>;
      constexpr int NI = M::kIn;
      const scalar_t* in[NI];
      scalar_t* g[NI];
      bool any_grad = false;
      for (int j = 0; j < NI; ++j) {
        in[j] = p.in[j].const_data_ptr<scalar_t>();
        g[j] = run.grads[j].numel() ? run.grads[j].mutable_data_ptr<scalar_t>() : nullptr;
        any_grad = any_grad || g[j];
      }
      const acc* kdev = run.kdev.defined() ? run.kdev.const_data_ptr<acc>() : nullptr;
      const acc kscale = static_cast<acc>(run.kscale);
      const bool single = run.single;
      acc* row_loss = run.row_loss.defined() ? run.row_loss.mutable_data_ptr<acc>() : nullptr;
      const acc* target = p.target.defined() ? p.target.const_data_ptr<acc>() : nullptr;
      const int64_t D = p.D;
      at::parallel_for(0, p.rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)), [&](int64_t b, int64_t e) {
        for (int64_t r = b; r < e; ++r) {
          const int64_t off = r * D;
          acc s[M::kState];
          m.init(s);
          for (int64_t i = 0; i < D; ++i) {
            acc x[NI];
            for (int j = 0; j < NI; ++j) x[j] = static_cast<acc>(in[j][off + i]);
            m.add(s, x);
          }
          const acc k = kscale * (kdev ? kdev[single ? 0 : r] : acc(1));
          const auto R = m.finish(s, target ? target[r] : acc(0), k);
          if (row_loss) row_loss[r] = R.loss;
          if (!any_grad) continue;
          for (int64_t i = 0; i < D; ++i) {
            acc x[NI], gg[NI];
            for (int j = 0; j < NI; ++j) x[j] = static_cast<acc>(in[j][off + i]);
            m.grad(R, x, gg);
            for (int j = 0; j < NI; ++j)
              if (g[j]) g[j][off + i] = static_cast<scalar_t>(gg[j]);
          }
        }
      });
    });
  }

  static Tensor finish(const RowPlan& p, const Tensor& row_loss) {
    return AT_DISPATCH_FLOATING_TYPES(row_loss.scalar_type(), "fastloss_rows_finish_cpu", [&] {
      return finish_loss<scalar_t>(row_loss, p.reduction, static_cast<scalar_t>(p.rows), p.out_dtype, p.row_shape);
    });
  }
};

using Ops = EmbeddingOps<CpuRows>;

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("_triplet_margin_forward", &cpu::Ops::triplet);
  m.impl("_triplet_margin_backward", &cpu::Ops::triplet_backward);
  m.impl("_cosine_embedding_forward", &cpu::Ops::cosine);
  m.impl("_cosine_embedding_backward", &cpu::Ops::cosine_backward);
}

}  // namespace fastloss
