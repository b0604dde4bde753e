// CUDA kernels of scale_grad / scale_grad_ (schemas in ops/grad_scale.cpp): grad viewed as
// (outer, classes, inner), multiplied by one factor per (outer, inner) row or one for all.
// Moves grad once in, once out (16-byte accesses when aligned). In place, a factor of exactly 1 is
// detected on the device and the memory is not touched: loss.backward() after mean/sum costs one
// tiny launch and no pass over the gradient, with no host sync.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda/block_reduce.cuh"
#include "common/cuda/device_errors.cuh"
#include "ops/grad_scale.h"

namespace fastloss {
namespace cuda {
namespace {

using at::Tensor;

// Single factor: vectorized grid-stride over all elements.
template <typename scalar_t, bool INPLACE>
__global__ void scale_all_kernel(const scalar_t* in, scalar_t* out, const acc_t<scalar_t>* factor, int64_t n,
                                 bool vec_ok) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t>;
  const acc k = *factor;
  if (INPLACE && k == acc(1)) return;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (vec_ok) {
    const int64_t nv = n / P::N;
    for (int64_t i = tid; i < nv; i += stride) {
      acc v[P::N];
      P::unpack(reinterpret_cast<const uint4*>(in)[i], v);
#pragma unroll
      for (int j = 0; j < P::N; ++j) v[j] *= k;
      reinterpret_cast<uint4*>(out)[i] = P::pack(v);
    }
    done = nv * P::N;
  }
  for (int64_t i = done + tid; i < n; i += stride) store_acc(out, i, load_acc(in, i) * k);
}

// One factor per row: element e belongs to row (e / (C*D)) * D + e % D. 16-byte vectors where the
// buffer is aligned, one division per vector (rows change at most every C elements).
template <typename scalar_t, bool INPLACE>
__global__ void scale_rows_kernel(const scalar_t* in, scalar_t* out, const acc_t<scalar_t>* factor, int64_t n,
                                  int64_t C, int64_t D, bool vec_ok) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t>;
  auto row_of = [&](int64_t e) { return D == 1 ? e / C : (e / (C * D)) * D + e % D; };
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (vec_ok && D == 1) {
    const int64_t nv = n / P::N;
    for (int64_t i = tid; i < nv; i += stride) {
      const int64_t e0 = i * P::N;
      int64_t r = e0 / C, next = (r + 1) * C;
      acc k = factor[r];
      const bool one_row = e0 + P::N <= next;
      if (INPLACE && one_row && k == acc(1)) continue;
      acc v[P::N];
      P::unpack(reinterpret_cast<const uint4*>(in)[i], v);
#pragma unroll
      for (int j = 0; j < P::N; ++j) {
        if (e0 + j == next) {
          k = factor[++r];
          next += C;
        }
        v[j] *= k;
      }
      reinterpret_cast<uint4*>(out)[i] = P::pack(v);
    }
    done = nv * P::N;
  }
  for (int64_t e = done + tid; e < n; e += stride) {
    const acc k = factor[row_of(e)];
    if (INPLACE && k == acc(1)) continue;
    store_acc(out, e, load_acc(in, e) * k);
  }
}

template <bool INPLACE>
Tensor scale_impl(const Tensor& grad, const Tensor& grad_loss, int64_t classes, int64_t inner) {
  const char* op = INPLACE ? "fastloss.scale_grad_" : "fastloss.scale_grad";
  check_scale_grad_args(grad, grad_loss, classes, inner, op);
  const c10::cuda::CUDAGuard guard(grad.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  Tensor g = grad_loss.to(acc_dtype(grad.scalar_type())).contiguous();
  Tensor out = INPLACE ? grad : at::empty_like(grad);
  const int64_t n = grad.numel();
  if (n == 0) return out;
  const int sms = device_info(grad.get_device()).sm_count;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "fastloss_scale_grad_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* in = grad.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    if (g.numel() == 1) {
      const int64_t work = (n + Pack<scalar_t>::N - 1) / Pack<scalar_t>::N;
      const int blocks =
          static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((work + 255) / 256, int64_t(sms) * 8)));
      const bool vec_ok = (reinterpret_cast<uintptr_t>(in) % 16 == 0) && (reinterpret_cast<uintptr_t>(o) % 16 == 0);
      scale_all_kernel<scalar_t, INPLACE><<<blocks, 256, 0, stream>>>(in, o, g.const_data_ptr<acc>(), n, vec_ok);
    } else {
      const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, int64_t(sms) * 32)));
      const bool vec_ok = (reinterpret_cast<uintptr_t>(in) % 16 == 0) && (reinterpret_cast<uintptr_t>(o) % 16 == 0);
      scale_rows_kernel<scalar_t, INPLACE>
          <<<blocks, 256, 0, stream>>>(in, o, g.const_data_ptr<acc>(), n, classes, inner, vec_ok);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

void scale_grad_inplace_cuda(const Tensor& grad, const Tensor& grad_loss, int64_t classes, int64_t inner) {
  scale_impl<true>(grad, grad_loss, classes, inner);
}

Tensor scale_grad_cuda(const Tensor& grad, const Tensor& grad_loss, int64_t classes, int64_t inner) {
  return scale_impl<false>(grad, grad_loss, classes, inner);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  m.impl("scale_grad_", &cuda::PollFirst<&cuda::scale_grad_inplace_cuda>::call);
  m.impl("scale_grad", &cuda::PollFirst<&cuda::scale_grad_cuda>::call);
}

}  // namespace fastloss
