// Deterministic reductions for the CPU kernels: fixed-size chunks summed in parallel, then the chunk
// partials summed in order, so the result never depends on the number of threads.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fastloss {
namespace cpu {

// Grain (in rows) of an at::parallel_for over rows of `row_elems` contiguous elements each that the
// loop writes: about 32K elements per task. A grain counted in rows instead left a gradient of 1024
// rows x 32000 classes (131 MB: its zero fill and first touch) to a single thread.
constexpr int64_t kWriteGrainElems = 32768;
inline int64_t write_row_grain(int64_t row_elems) {
  return std::max<int64_t>(1, kWriteGrainElems / std::max<int64_t>(row_elems, 1));
}

template <typename acc, typename F>
acc fixed_order_sum(int64_t n, const F& f) {
  constexpr int64_t kChunk = 4096;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<acc> partial(static_cast<size_t>(chunks), acc(0));
  // grain 2: a single chunk runs inline (no OpenMP region for small inputs)
  at::parallel_for(0, chunks, 2, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      // four interleaved accumulators: no 4-cycle add chain per element, same order every run
      acc s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      const int64_t stop = std::min(n, (c + 1) * kChunk);
      int64_t i = c * kChunk;
      for (; i + 4 <= stop; i += 4) {
        s0 += f(i);
        s1 += f(i + 1);
        s2 += f(i + 2);
        s3 += f(i + 3);
      }
      for (; i < stop; ++i) s0 += f(i);
      partial[static_cast<size_t>(c)] = (s0 + s1) + (s2 + s3);
    }
  });
  acc total = 0;
  for (acc p : partial) total += p;
  return total;
}

}  // namespace cpu
}  // namespace fastloss

#include <ATen/ATen.h>

#include "common/common.h"

namespace fastloss {
namespace cpu {

// Per-row losses (acc dtype, one per row) -> the op's result: the rows themselves for 'none',
// their fixed-order sum for 'sum', and the sum over `denom` for 'mean' (0/0 gives NaN, as torch).
template <typename acc>
at::Tensor finish_loss(const at::Tensor& row_loss, Reduction reduction, acc denom, c10::ScalarType out_dtype,
                       c10::IntArrayRef row_shape) {
  if (reduction == Reduction::None) return row_loss.view(row_shape).to(out_dtype);
  const acc* p = row_loss.const_data_ptr<acc>();
  acc total = fixed_order_sum<acc>(row_loss.numel(), [p](int64_t i) { return p[i]; });
  if (reduction == Reduction::Mean) total = total / denom;
  return at::scalar_tensor(static_cast<double>(total), row_loss.options().dtype(out_dtype));
}

}  // namespace cpu
}  // namespace fastloss
