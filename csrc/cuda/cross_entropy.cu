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
#include "ops/cross_entropy.h"

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
__global__ void __launch_bounds__(kSumThreads) class_target_kernel(const target_t* target, int64_t n, const acc* w,
                                                                   int64_t ignore_index, int64_t C, acc* partial,
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

std::tuple<Tensor, Tensor, Tensor> cross_entropy_cuda(const Tensor& input, const Tensor& target,
                                                      const c10::optional<Tensor>& weight, int64_t reduction,
                                                      int64_t ignore_index, double label_smoothing, bool compute_grad,
                                                      bool save_lse, c10::optional<c10::ScalarType> out_dtype) {
  const char* op = "fastloss.cross_entropy";
  const CrossEntropyPlan pl =
      plan_cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing, true, op);
  const c10::cuda::CUDAGuard guard(input.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto dtype = input.scalar_type();
  const auto adt = acc_dtype(dtype);
  const bool rows_path = pl.inner == 1;
  if (rows_path) check_row_length_32bit(op, pl.classes);
  // A 2-D input whose rows are contiguous is read in place whatever its row stride.
  Tensor x = (rows_path && input.dim() == 2 && input.stride(1) == 1) ? input : input.contiguous();
  const int64_t x_row_stride = (rows_path && input.dim() == 2) ? x.stride(0) : pl.classes;
  Tensor tgt = pl.prob_target ? target.to(dtype).contiguous() : target.contiguous();
  Tensor w = as_acc(weight, adt);
  auto aopt = input.options().dtype(adt);
  Tensor row_loss = at::empty({pl.rows()}, aopt);
  Tensor lse = at::empty({save_lse ? pl.rows() : 0}, aopt);
  Tensor grad = compute_grad ? at::empty(input.sizes(), input.options()) : at::empty({0}, input.options());

  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_cross_entropy_cuda", [&] {
    using acc = acc_t<scalar_t>;
    CEParams<scalar_t> p{};
    p.x = x.const_data_ptr<scalar_t>();
    p.x_row_stride = x_row_stride;
    p.target = tgt.const_data_ptr();
    p.weight = w.defined() ? w.const_data_ptr<acc>() : nullptr;
    Tensor wsum;
    if (w.defined() && label_smoothing != 0.0 && !pl.prob_target) {
      wsum = at::empty({}, aopt);
      launch_sum<acc>(ArrayReader<acc>{p.weight}, pl.classes, nullptr, acc(1), wsum, stream);
      p.wsum = wsum.const_data_ptr<acc>();
    }
    p.grad = compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
    p.row_loss = row_loss.mutable_data_ptr<acc>();
    p.lse = save_lse ? lse.mutable_data_ptr<acc>() : nullptr;
    p.rows = pl.rows();
    p.C = pl.classes;
    p.inner = pl.inner;
    p.ignore_index = ignore_index;
    p.eps = static_cast<acc>(label_smoothing);
    const bool mean = pl.reduction == Reduction::Mean;
    const int device = input.get_device();
    if (pl.prob_target) {
      const acc denom = input.numel() == 0 ? acc(0) : static_cast<acc>(pl.rows());
      p.host_scale = mean ? acc(1) / denom : acc(1);
      launch_ce<scalar_t, int64_t, true>(p, device, stream);
      return std::make_tuple(
          finish_loss<acc>(row_loss, pl.reduction, nullptr, denom, out_dtype.value_or(dtype), pl.row_shape, stream),
          grad, lse);
    }
    auto run = [&](auto tag) {
      using target_t = decltype(tag);
      auto [denom, first_bad] = class_target_pass<acc, target_t>(tgt, p.weight, ignore_index, pl.classes, stream);
      report_device_error(first_bad, error_proto(op, DeviceErrorKind::ClassTarget, pl.classes, ignore_index),
                          TargetValue<target_t>{tgt.template const_data_ptr<target_t>()}, stream);
      p.denom = mean ? denom.template const_data_ptr<acc>() : nullptr;
      p.host_scale = acc(1);
      launch_ce<scalar_t, target_t, false>(p, device, stream);
      Tensor loss = finish_loss<acc>(row_loss, pl.reduction, denom.template const_data_ptr<acc>(), acc(1),
                                     out_dtype.value_or(dtype), pl.row_shape, stream);
      return std::make_tuple(loss, grad, lse);
    };
    return dispatch_class_target(tgt.scalar_type(), run);
  });
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

Tensor cross_entropy_target_backward_cuda(const Tensor& grad_loss, const Tensor& input, const Tensor& lse,
                                          const c10::optional<Tensor>& weight, int64_t reduction,
                                          double label_smoothing) {
  const Reduction red = to_reduction(reduction, "fastloss.cross_entropy_target_backward");
  const c10::cuda::CUDAGuard guard(input.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto dtype = input.scalar_type();
  const auto adt = acc_dtype(dtype);
  Tensor x = input.contiguous();
  const ClassView v = class_view(input);
  const int64_t C = v.classes, outer = v.outer, D = v.inner;
  Tensor g = grad_loss.to(adt).contiguous();
  Tensor w = as_acc(weight, adt);
  Tensor out = at::empty(input.sizes(), input.options());
  if (input.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_ce_target_bwd_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const acc k = (red == Reduction::Mean ? acc(1) / static_cast<acc>(outer * D) : acc(1)) *
                  (acc(1) - static_cast<acc>(label_smoothing));
    ce_target_backward_kernel<scalar_t><<<grid_for(input.numel(), 256, input.get_device()), 256, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), lse.const_data_ptr<acc>(), w.defined() ? w.const_data_ptr<acc>() : nullptr,
        RowFactor<acc>{g.const_data_ptr<acc>(), g.numel() == 1}, k, input.numel(), C, D,
        out.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// nll_loss: a thread per row gathers x[n, t, s]; backward writes every element once.
template <typename scalar_t, typename target_t>
__global__ void nll_forward_kernel(const scalar_t* x, const target_t* target, const acc_t<scalar_t>* w,
                                   int64_t rows, int64_t C, int64_t D, int64_t ignore_index, acc_t<scalar_t>* row_loss) {
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
                                    const acc_t<scalar_t>* total_weight, bool mean, int64_t rows, int64_t C,
                                    int64_t D, int64_t ignore_index, scalar_t* out) {
  using acc = acc_t<scalar_t>;
  const acc scale = mean ? acc(1) / *total_weight : acc(1);
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < rows; r += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = static_cast<int64_t>(target[r]);
    if (t == ignore_index || t < 0 || t >= C) continue;
    const int64_t n = r / D, s = r % D;
    store_acc(out, (n * C + t) * D + s, -(w ? w[t] : acc(1)) * f(r) * scale);
  }
}

std::tuple<Tensor, Tensor> nll_loss_cuda(const Tensor& input, const Tensor& target,
                                         const c10::optional<Tensor>& weight, int64_t reduction,
                                         int64_t ignore_index, c10::optional<c10::ScalarType> out_dtype) {
  const char* op = "fastloss.nll_loss";
  const CrossEntropyPlan pl = plan_cross_entropy(input, target, weight, reduction, ignore_index, 0.0, false, op);
  const c10::cuda::CUDAGuard guard(input.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto dtype = input.scalar_type();
  const auto adt = acc_dtype(dtype);
  Tensor x = input.contiguous();
  Tensor tgt = target.contiguous();
  Tensor w = as_acc(weight, adt);
  Tensor row_loss = at::empty({pl.rows()}, input.options().dtype(adt));
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_nll_loss_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
    auto run = [&](auto tag) {
      using target_t = decltype(tag);
      auto [denom, first_bad] = class_target_pass<acc, target_t>(tgt, wp, ignore_index, pl.classes, stream);
      report_device_error(first_bad, error_proto(op, DeviceErrorKind::ClassTarget, pl.classes, ignore_index),
                          TargetValue<target_t>{tgt.template const_data_ptr<target_t>()}, stream);
      if (pl.rows() > 0) {
        nll_forward_kernel<scalar_t, target_t><<<grid_for(pl.rows(), 256, input.get_device()), 256, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), tgt.const_data_ptr<target_t>(), wp, pl.rows(), pl.classes,
            std::max<int64_t>(pl.inner, 1), ignore_index, row_loss.mutable_data_ptr<acc>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      Tensor loss = finish_loss<acc>(row_loss, pl.reduction, denom.template const_data_ptr<acc>(), acc(1),
                                     out_dtype.value_or(dtype), pl.row_shape, stream);
      return std::make_tuple(loss, denom);
    };
    return dispatch_class_target(tgt.scalar_type(), run);
  });
}

Tensor nll_loss_backward_cuda(const Tensor& grad_loss, const Tensor& input, const Tensor& target,
                              const c10::optional<Tensor>& weight, int64_t reduction, int64_t ignore_index,
                              const Tensor& total_weight) {
  const Reduction red = to_reduction(reduction, "fastloss.nll_loss_backward");
  const c10::cuda::CUDAGuard guard(input.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto dtype = input.scalar_type();
  const auto adt = acc_dtype(dtype);
  const ClassView v = class_view(input);
  const int64_t C = v.classes, D = v.inner;
  Tensor tgt = target.contiguous();
  Tensor g = grad_loss.to(adt).contiguous();
  Tensor w = as_acc(weight, adt);
  Tensor tw = total_weight.to(adt);
  Tensor out = at::zeros(input.sizes(), input.options());
  const int64_t rows = tgt.numel();
  if (input.numel() == 0 || rows == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_nll_loss_bwd_cuda", [&] {
    using acc = acc_t<scalar_t>;
    auto run = [&](auto tag) {
      using target_t = decltype(tag);
      nll_backward_kernel<scalar_t, target_t><<<grid_for(rows, 256, input.get_device()), 256, 0, stream>>>(
          tgt.const_data_ptr<target_t>(), w.defined() ? w.const_data_ptr<acc>() : nullptr,
          RowFactor<acc>{g.const_data_ptr<acc>(), g.numel() == 1}, tw.const_data_ptr<acc>(), red == Reduction::Mean,
          rows, C, std::max<int64_t>(D, 1), ignore_index, out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    dispatch_class_target(tgt.scalar_type(), run);
  });
  return out;
}

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
