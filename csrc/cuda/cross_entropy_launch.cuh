// What the host side of cross_entropy (cross_entropy.cu) needs of the row kernels: their parameter
// block and the launcher, which cross_entropy_<dtype>.cu instantiate (kernels in
// cross_entropy_kernels.cuh, compiled once per dtype, in parallel).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/common.h"

namespace fastloss {
namespace cuda {
namespace ce {

template <typename scalar_t>
struct CEParams {
  using acc = acc_t<scalar_t>;
  const scalar_t* x;
  int64_t x_row_stride;
  const void* target;  // class index (int64/uint8) per row, or probabilities (scalar_t, rows x C)
  const acc* weight;   // nullable
  const acc* wsum;     // device scalar sum(weight), nullable
  const acc* denom;    // device scalar; the gradient is divided by it when non-null
  acc host_scale;      // used when denom is null
  scalar_t* grad;      // nullable; (rows, C) contiguous
  acc* row_loss;
  acc* lse;            // nullable
  int64_t rows, C, inner;
  int64_t ignore_index;
  acc eps;
  int smem_vecs;  // vectors per thread cached in dynamic shared memory (block kernels)
};

// Picks the kernel for the row length (warp / block256 / block512 per row, or the strided K-D
// kernel) and launches it on `stream`.
template <typename scalar_t, typename target_t, bool PROB>
void launch_ce(const CEParams<scalar_t>& p, int device, cudaStream_t stream);

}  // namespace ce
}  // namespace cuda
}  // namespace fastloss
