// CPU kernels of scale_grad / scale_grad_: grad (outer, classes, inner) times one factor per
// (outer, inner) row, or one factor for all. Reads and writes grad once; in place, a factor of
// exactly 1 skips the row (a single factor of 1 skips everything).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "common/alloc.h"
#include "common/common.h"
#include "common/cpu_reduce.h"
#include "common/cpu_vec.h"
#include "ops/grad_scale.h"

namespace fastloss {
namespace cpu {
namespace {

using at::Tensor;

template <typename scalar_t>
void scale_rows(const scalar_t* in, scalar_t* out, const acc_t<scalar_t>* f, bool single, int64_t numel,
                int64_t classes, int64_t inner, bool skip_ones) {
  using acc = acc_t<scalar_t>;
  if (numel == 0) return;
  // contiguous run sharing one factor: everything for a single factor (else one call per element of a
  // pointwise loss, classes == 1, cost ~5 ns each), a row of classes, or one element of a K-D row
  const int64_t row_len = single ? std::min<int64_t>(numel, 16384) : inner == 1 ? classes : 1;
  const int64_t runs = (numel + row_len - 1) / row_len;
  at::parallel_for(0, runs, write_row_grain(row_len), [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      // run j covers elements [j*row_len, (j+1)*row_len); its row is j for inner == 1, else (n, s)
      int64_t r = j;
      if (inner != 1) r = (j / (classes * inner)) * inner + j % inner;
      const acc k = single ? f[0] : f[r];
      if (skip_ones && k == acc(1)) continue;
      const scalar_t* src = in + j * row_len;
      scalar_t* dst = out + j * row_len;
      const int64_t len = std::min(row_len, numel - j * row_len);  // the last single-factor run may be short
      if constexpr (std::is_same_v<scalar_t, float>) {
        vec_ops().scale(src, len, k, dst);
      } else {
        for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<scalar_t>(static_cast<acc>(src[i]) * k);
      }
    }
  });
}

template <bool kInPlace>
Tensor scale_impl(const Tensor& grad, const Tensor& grad_loss, int64_t classes, int64_t inner) {
  const char* op = kInPlace ? "fastloss.scale_grad_" : "fastloss.scale_grad";
  check_scale_grad_args(grad, grad_loss, classes, inner, op);
  const auto adt = acc_dtype(grad.scalar_type());
  Tensor g = grad_loss.to(adt).contiguous();
  Tensor out = kInPlace ? grad : empty_for_write_like(grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "fastloss_scale_grad_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const bool single = g.numel() == 1;
    const acc* f = g.const_data_ptr<acc>();
    if (kInPlace && single && f[0] == acc(1)) return;
    scale_rows<scalar_t>(grad.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), f, single, grad.numel(),
                         classes, inner, kInPlace);
  });
  return out;
}

void scale_grad_inplace_cpu(const Tensor& grad, const Tensor& grad_loss, int64_t classes, int64_t inner) {
  scale_impl<true>(grad, grad_loss, classes, inner);
}

Tensor scale_grad_cpu(const Tensor& grad, const Tensor& grad_loss, int64_t classes, int64_t inner) {
  return scale_impl<false>(grad, grad_loss, classes, inner);
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("scale_grad_", &cpu::scale_grad_inplace_cpu);
  m.impl("scale_grad", &cpu::scale_grad_cpu);
}

}  // namespace fastloss
