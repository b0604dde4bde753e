// CUDA kernels of the cross_entropy family.
//
// cross_entropy with rows contiguous in the class dimension (2-D inputs; K-D inputs with no spatial
// extent): a group of threads per row -- a warp for small C, a block otherwise. Pass 1 reads the row
// with 16-byte loads and keeps an online max / sum of exp (plus the sums label smoothing and
// probability targets need); the row stays on chip, in registers (REG vectors per thread) and then
// in shared memory, and only what does not fit is re-read (from L2) in pass 2, which writes the
// gradient with 16-byte streaming stores. Bytes moved per element: logits read once, gradient
// written once (2 + 2 for bf16); ignored rows write zeros without reading their logits.
// Before it, a small kernel validates class targets and sums the mean's denominator, so the
// gradient leaves the kernel already divided by it; backward then only multiplies by grad_output.
// A bad target gives a NaN row (never an out-of-bounds read); its error is reported from the device
// without a host sync (common/device_errors.h).
// K-D inputs (N, C, d1..dk) use a thread per (n, d) position, coalesced across positions.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "common/cuda/block_reduce.cuh"
#include "common/cuda/device_errors.cuh"
#include "common/errors.h"
#include "common/options.h"
#include "cuda/cross_entropy_launch.cuh"
#include "ops/cross_entropy_ops.h"

namespace fastloss {
namespace cuda {
namespace {

using at::Tensor;
using ce::CEParams;
using ce::launch_ce;
// ---------------------------------------------------------------------------------------------
// Class targets: first invalid position (atomicMin on an integer: order-free) and, per block, the
// partial sum of w[t] over non-ignored rows; the second stage (final_sum_kernel) makes it a scalar.
template <typename acc, typename target_t>
__global__ void __launch_bounds__(kSumThreads)
    class_target_kernel(const target_t* target, int64_t n, const acc* w, int64_t ignore_index, int64_t C, acc* partial,
                        unsigned long long* first_bad) {
  __shared__ acc scratch[kSumThreads / 32 + 1];
  const int64_t per = (n + gridDim.x - 1) / gridDim.x;
  const int64_t begin = int64_t(blockIdx.x) * per, end = std::min(n, begin + per);
  acc s = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kSumThreads) {
    const int64_t t = static_cast<int64_t>(target[i]);
    if (t == ignore_index) continue;
    if (t < 0 || t >= C) {
      atomicMin(first_bad, static_cast<unsigned long long>(i));
      continue;
    }
    s += w ? w[t] : acc(1);
  }
  s = block_sum<kSumThreads>(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Launches class_target_kernel + the final sum: returns (denominator tensor, first_bad tensor).
template <typename acc, typename target_t>
std::pair<Tensor, Tensor> class_target_pass(const Tensor& tgt, const acc* wp, int64_t ignore_index, int64_t C,
                                            cudaStream_t stream) {
  const int64_t n = tgt.numel();
  const int parts = sum_blocks(n);
  auto aopt = tgt.options().dtype(c10::CppTypeToScalarType<acc>::value);
  Tensor partial = at::empty({parts}, aopt);
  Tensor denom = at::empty({}, aopt);
  Tensor first_bad = at::full({}, std::numeric_limits<int64_t>::max(), tgt.options().dtype(at::kLong));
  class_target_kernel<acc, target_t><<<parts, kSumThreads, 0, stream>>>(
      tgt.const_data_ptr<target_t>(), n, wp, ignore_index, C, partial.mutable_data_ptr<acc>(),
      reinterpret_cast<unsigned long long*>(first_bad.mutable_data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  final_sum_kernel<acc, acc><<<1, kSumThreads, 0, stream>>>(partial.const_data_ptr<acc>(), parts, nullptr, acc(1),
                                                            denom.mutable_data_ptr<acc>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {denom, first_bad};
}

// ---------------------------------------------------------------------------------------------
// d(loss)/d(q) for probability targets, elementwise: g_r k w_c (lse_r - x_e).
template <typename scalar_t>
__global__ void ce_target_backward_kernel(const scalar_t* x, const acc_t<scalar_t>* lse, const acc_t<scalar_t>* w,
                                          RowFactor<acc_t<scalar_t>> f, acc_t<scalar_t> k, int64_t numel, int64_t C,
                                          int64_t D, scalar_t* out) {
  using acc = acc_t<scalar_t>;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < numel; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = e % D, nc = e / D, c = nc % C, n = nc / C, r = n * D + s;
    store_acc(out, e, f(r) * k * (w ? w[c] : acc(1)) * (lse[r] - load_acc(x, e)));
  }
}

int grid_for(int64_t work, int threads, int device) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, int64_t(device_info(device).sm_count) * 32)));
}

// ---------------------------------------------------------------------------------------------
// nll_loss: a thread per row gathers x[n, t, s]; backward writes every element once.
template <typename scalar_t, typename target_t>
__global__ void nll_forward_kernel(const scalar_t* x, const target_t* target, const acc_t<scalar_t>* w, int64_t rows,
                                   int64_t C, int64_t D, int64_t ignore_index, acc_t<scalar_t>* row_loss) {
  using acc = acc_t<scalar_t>;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = static_cast<int64_t>(target[r]);
    acc l;
    if (t == ignore_index) {
      l = acc(0);
    } else if (t < 0 || t >= C) {
      l = std::numeric_limits<acc>::quiet_NaN();
    } else {
      const int64_t n = r / D, s = r % D;
      l = -(w ? w[t] : acc(1)) * load_acc(x, (n * C + t) * D + s);
    }
    row_loss[r] = l;
  }
}

// Backward scatter: the gradient is zero but for one entry per non-ignored row (the zeros come from
// a memset, which writes at full bandwidth; this kernel then touches one element per row).
template <typename scalar_t, typename target_t>
__global__ void nll_backward_kernel(const target_t* target, const acc_t<scalar_t>* w, RowFactor<acc_t<scalar_t>> f,
                                    const acc_t<scalar_t>* total_weight, bool mean, int64_t rows, int64_t C, int64_t D,
                                    int64_t ignore_index, scalar_t* out) {
  using acc = acc_t<scalar_t>;
  const acc scale = mean ? acc(1) / *total_weight : acc(1);
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = static_cast<int64_t>(target[r]);
    if (t == ignore_index || t < 0 || t >= C) continue;
    const int64_t n = r / D, s = r % D;
    store_acc(out, (n * C + t) * D + s, -(w ? w[t] : acc(1)) * f(r) * scale);
  }
}

// The device half of CrossEntropyOps (ops/cross_entropy_ops.h). Each entry guards the input's device and
// runs on its current stream; no host sync (class-target errors are reported from the device).
struct CudaCrossEntropy {
  static void check_row_length(const char* op, int64_t classes) { check_row_length_32bit(op, classes); }

  // Class targets: a validation / denominator pass first, so the gradient leaves the row kernel already
  // divided by the mean's denominator.
  template <typename scalar_t, typename target_t>
  static Tensor cross_entropy(const CrossEntropyPlan& pl, CeBuffers& b, int64_t ignore_index, double eps,
                              c10::ScalarType out_dtype, const char* op) {
    using acc = acc_t<scalar_t>;
    const c10::cuda::CUDAGuard guard(b.x.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    CEParams<scalar_t> p{};
    p.x = b.x.const_data_ptr<scalar_t>();
    p.x_row_stride = b.x_row_stride;
    p.target = b.target.const_data_ptr();
    p.weight = b.weight.defined() ? b.weight.const_data_ptr<acc>() : nullptr;
    Tensor wsum;
    if (b.weight.defined() && eps != 0.0 && !pl.prob_target) {
      wsum = at::empty({}, b.row_loss.options());
      launch_sum<acc>(ArrayReader<acc>{p.weight}, pl.classes, nullptr, acc(1), wsum, stream);
      p.wsum = wsum.const_data_ptr<acc>();
    }
    p.grad = b.grad.numel() ? b.grad.mutable_data_ptr<scalar_t>() : nullptr;
    p.row_loss = b.row_loss.mutable_data_ptr<acc>();
    p.lse = b.lse.numel() ? b.lse.mutable_data_ptr<acc>() : nullptr;
    p.rows = pl.rows();
    p.C = pl.classes;
    p.inner = pl.inner;
    p.ignore_index = ignore_index;
    p.eps = static_cast<acc>(eps);
    const bool mean = pl.reduction == Reduction::Mean;
    const int device = b.x.get_device();
    if (pl.prob_target) {
      const acc denom = b.x.numel() == 0 ? acc(0) : static_cast<acc>(pl.rows());
      p.host_scale = mean ? acc(1) / denom : acc(1);
      launch_ce<scalar_t, int64_t, true>(p, device, stream);
      return finish_loss<acc>(b.row_loss, pl.reduction, nullptr, denom, out_dtype, pl.row_shape, stream);
    }
    auto [denom, first_bad] = class_target_pass<acc, target_t>(b.target, p.weight, ignore_index, pl.classes, stream);
    report_device_error(first_bad, error_proto(op, DeviceErrorKind::ClassTarget, pl.classes, ignore_index),
                        TargetValue<target_t>{b.target.const_data_ptr<target_t>()}, stream);
    p.denom = mean ? denom.template const_data_ptr<acc>() : nullptr;
    p.host_scale = acc(1);
    launch_ce<scalar_t, target_t, false>(p, device, stream);
    return finish_loss<acc>(b.row_loss, pl.reduction, denom.template const_data_ptr<acc>(), acc(1), out_dtype,
                            pl.row_shape, stream);
  }

  template <typename scalar_t, typename target_t>
  static std::tuple<Tensor, Tensor> nll_loss(const CrossEntropyPlan& pl, const Tensor& x, const Tensor& tgt,
                                             const Tensor& w, Tensor& row_loss, int64_t ignore_index,
                                             c10::ScalarType out_dtype, const char* op) {
    using acc = acc_t<scalar_t>;
    const c10::cuda::CUDAGuard guard(x.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
    auto [denom, first_bad] = class_target_pass<acc, target_t>(tgt, wp, ignore_index, pl.classes, stream);
    report_device_error(first_bad, error_proto(op, DeviceErrorKind::ClassTarget, pl.classes, ignore_index),
                        TargetValue<target_t>{tgt.const_data_ptr<target_t>()}, stream);
    if (pl.rows() > 0) {
      nll_forward_kernel<scalar_t, target_t><<<grid_for(pl.rows(), 256, x.get_device()), 256, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), tgt.const_data_ptr<target_t>(), wp, pl.rows(), pl.classes,
          std::max<int64_t>(pl.inner, 1), ignore_index, row_loss.mutable_data_ptr<acc>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    Tensor loss = finish_loss<acc>(row_loss, pl.reduction, denom.template const_data_ptr<acc>(), acc(1), out_dtype,
                                   pl.row_shape, stream);
    return std::make_tuple(loss, denom);
  }

  template <typename scalar_t>
  static void target_backward(const Tensor& x, const acc_t<scalar_t>* lse, const acc_t<scalar_t>* w,
                              RowFactor<acc_t<scalar_t>> f, acc_t<scalar_t> k, const ClassView& v, Tensor& out) {
    const c10::cuda::CUDAGuard guard(x.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    ce_target_backward_kernel<scalar_t><<<grid_for(x.numel(), 256, x.get_device()), 256, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), lse, w, f, k, x.numel(), v.classes, v.inner, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // The zeros come from a memset, which writes at full bandwidth; nll_backward then touches one element per row.
  static Tensor nll_grad_buffer(const Tensor& input, const ClassView&) {
    return at::zeros(input.sizes(), input.options());
  }

  template <typename scalar_t, typename target_t>
  static void nll_backward(const Tensor& tgt, const acc_t<scalar_t>* w, RowFactor<acc_t<scalar_t>> f,
                           const Tensor& total_weight, bool mean, const ClassView& v, int64_t ignore_index,
                           Tensor& out) {
    using acc = acc_t<scalar_t>;
    const c10::cuda::CUDAGuard guard(out.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    const int64_t rows = tgt.numel();
    nll_backward_kernel<scalar_t, target_t><<<grid_for(rows, 256, out.get_device()), 256, 0, stream>>>(
        tgt.const_data_ptr<target_t>(), w, f, total_weight.const_data_ptr<acc>(), mean, rows, v.classes,
        std::max<int64_t>(v.inner, 1), ignore_index, out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

using Ops = CrossEntropyOps<CudaCrossEntropy>;
// The functions the registrations below name.
constexpr auto& cross_entropy_cuda = Ops::cross_entropy;
constexpr auto& cross_entropy_target_backward_cuda = Ops::cross_entropy_target_backward;
constexpr auto& nll_loss_cuda = Ops::nll_loss;
constexpr auto& nll_loss_backward_cuda = Ops::nll_loss_backward;

}  // namespace

}  // namespace cuda

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  // PollFirst: each op first raises the errors earlier calls' kernels recorded (common/device_errors.h)
  m.impl("_cross_entropy_forward", &cuda::PollFirst<&cuda::cross_entropy_cuda>::call);
  m.impl("_cross_entropy_target_backward", &cuda::PollFirst<&cuda::cross_entropy_target_backward_cuda>::call);
  m.impl("nll_loss", &cuda::PollFirst<&cuda::nll_loss_cuda>::call);
  m.impl("nll_loss_backward", &cuda::PollFirst<&cuda::nll_loss_backward_cuda>::call);
}

}  // namespace fastloss
