// scale_grad / scale_grad_: argument checks shared by the CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

namespace fastloss {

// grad contiguous, same device as grad_loss, and grad_loss has 1 element or one per
// (outer, inner) row of grad viewed as (outer, classes, inner).
void check_scale_grad_args(const at::Tensor& grad, const at::Tensor& grad_loss, int64_t classes, int64_t inner,
                           const char* op);

}  // namespace fastloss
