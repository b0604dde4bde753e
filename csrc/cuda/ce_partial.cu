// CUDA kernels of the partial (class-slice) cross-entropy steps (contract: ops/ce_partial.h):
// ce_partial_stats and ce_partial_grad / ce_partial_grad_, the two O(R * Cs) steps.
//
// Both kernels give each row to a group of threads: a warp for slices of up to kWarpRowMax classes
// (8 rows per 256-thread block), the whole block for wider slices (LM vocabularies, 32k-262k classes).
// Rows are split into a head (up to the first 16-byte boundary), full 16-byte vectors and a tail;
// blocks stride over rows (grid capped), row offsets and in-row indices are 64-bit.
//   stats: one pass, online max / sum of exp (ce::RowState, combined over the warp by a xor butterfly,
//          then over the block's warps in a fixed order: deterministic, no atomics but the integer
//          atomicMin of a bad target's position).
//   grad:  one pass, elementwise with the row's 4 coefficients; ignored rows are written with zeros
//          without reading their logits. In place (ce_partial_grad_): each element is read and then
//          written by the same thread.
// A class target that is neither ignore_index nor in [0, num_classes) is recorded by the stats kernel
// (first bad row, atomicMin) and reported from the device without a host sync (common/device_errors.h);
// its row's z_t is NaN. No kernel ever indexes with a target outside the slice.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <type_traits>

#include "common/cuda/block_reduce.cuh"
#include "common/cuda/device_errors.cuh"
#include "common/errors.h"
#include "cuda/cross_entropy_kernels.cuh"
#include "ops/ce_partial.h"

namespace fastloss {
namespace cuda {
namespace {

using at::Tensor;
using ce::RowState;

constexpr int kThreads = 256;
constexpr int64_t kWarpRowMax = 2048;  // slices up to this many classes: a warp per row
constexpr int kUnroll = 4;             // 16-byte loads in flight per thread

__device__ __forceinline__ float dev_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dev_tanh(double x) { return ::tanh(x); }

// The softcap, applied while reading: z = cap * tanh(x / cap).
template <typename acc>
struct Cap {
  bool on;
  acc cap, inv;
  __device__ __forceinline__ acc operator()(acc x) const { return on ? cap * dev_tanh(x * inv) : x; }
  // dz/dx = 1 - (z / cap)^2
  __device__ __forceinline__ acc slope(acc z) const {
    const acc u = z * inv;
    return on ? acc(1) - u * u : acc(1);
  }
};

// Elements before the first 16-byte boundary of a row (all of them when the row is shorter).
template <typename T>
__device__ __forceinline__ int64_t head_elems(const T* row, int64_t n) {
  const int64_t h = static_cast<int64_t>(((16 - (reinterpret_cast<uintptr_t>(row) & 15)) & 15) / sizeof(T));
  return h < n ? h : n;
}

template <typename scalar_t>
struct StatsArgs {
  using acc = acc_t<scalar_t>;
  const scalar_t* x;    // (R, Cs) contiguous
  const void* target;   // (R,) class indices, or null
  const void* q;        // (R, Cs) probability target in q_t (the kernels' template argument), or null
  const acc* w;         // (Cs,) or null
  acc* out;             // (R, 5)
  unsigned long long* first_bad;  // class targets: first bad row (integer atomicMin)
  int64_t R, Cs, offset, num_classes, ignore_index;
  acc c1, c0;   // t'_c = c1 q_c + c0 (probability targets)
  bool smooth;  // class targets: sum_c w_c z_c wanted (eps > 0)
  Cap<acc> cap;
};

// Pass-1 sums of one element at column c (z capped): probability targets S1, S2 in a1, a2; class
// targets with label smoothing sum_c w_c z_c in a1.
template <bool PROB, typename scalar_t, typename q_t>
__device__ __forceinline__ void elem_sums(RowState<acc_t<scalar_t>>& st, acc_t<scalar_t> z, int64_t c, const q_t* qrow,
                                          const StatsArgs<scalar_t>& a) {
  using acc = acc_t<scalar_t>;
  const acc w = a.w ? a.w[c] : acc(1);
  if (PROB) {
    const acc t = (load_acc(qrow, c) * a.c1 + a.c0) * w;
    st.a1 += t;
    st.a2 += t * z;
  } else if (a.smooth) {
    st.a1 += w * z;
  }
}

// Bytes moved: the logits once (R * Cs * sizeof(scalar_t)), probability targets once (R * Cs * sizeof(q_t)),
// the weights from L2, and R * 5 accumulate values written.
template <typename scalar_t, typename target_t, typename q_t, bool PROB, int GROUP>
__global__ void __launch_bounds__(kThreads) stats_kernel(const StatsArgs<scalar_t> a) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t>;
  constexpr int VN = P::N;
  constexpr int GPB = kThreads / GROUP;  // rows per block at a time
  __shared__ RowState<acc> part[kThreads / 32 + 1];
  const int lane = threadIdx.x % GROUP;
  // GROUP == kThreads: the row loop is uniform over the block (the barriers below); GROUP == 32: uniform
  // over the warp (the shuffles).
  for (int64_t r = int64_t(blockIdx.x) * GPB + threadIdx.x / GROUP; r < a.R; r += int64_t(gridDim.x) * GPB) {
    const scalar_t* xr = a.x + r * a.Cs;
    const q_t* qr = PROB ? static_cast<const q_t*>(a.q) + r * a.Cs : nullptr;
    RowState<acc> st = ce::empty_state<acc>();
    const int64_t head = head_elems(xr, a.Cs);
    const int64_t nvec = (a.Cs - head) / VN;
    const int64_t tail = head + nvec * VN;
    for (int64_t c = lane; c < head; c += GROUP) {
      acc v[1] = {a.cap(load_acc(xr, c))};
      ce::online_update(st, v);
      elem_sums<PROB>(st, v[0], c, qr, a);
    }
    const uint4* xv = reinterpret_cast<const uint4*>(xr + head);  // 16-byte aligned
    for (int64_t v0 = lane; v0 < nvec; v0 += int64_t(GROUP) * kUnroll) {
      uint4 raw[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = v0 + int64_t(u) * GROUP;
        if (i < nvec) raw[u] = __ldg(xv + i);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = v0 + int64_t(u) * GROUP;
        if (i < nvec) {
          acc v[VN];
          P::unpack(raw[u], v);
#pragma unroll
          for (int j = 0; j < VN; ++j) v[j] = a.cap(v[j]);
          ce::online_update(st, v);
          if (PROB || a.smooth) {
#pragma unroll
            for (int j = 0; j < VN; ++j) elem_sums<PROB>(st, v[j], head + i * VN + j, qr, a);
          }
        }
      }
    }
    for (int64_t c = tail + lane; c < a.Cs; c += GROUP) {
      acc v[1] = {a.cap(load_acc(xr, c))};
      ce::online_update(st, v);
      elem_sums<PROB>(st, v[0], c, qr, a);
    }
    // every thread of the group gets the row's state (block_allreduce ends with a barrier: part[] is free
    // for the next row)
    if constexpr (GROUP == 32)
      st = warp_allreduce(st, ce::Combine{});
    else
      st = block_allreduce<GROUP>(st, part, ce::empty_state<acc>(), ce::Combine{});
    if (lane == 0) {
      acc zt = 0, wt = 0, c = 0;
      if constexpr (PROB) {
        zt = st.a1;  // S1
        wt = st.a2;  // S2
      } else {
        c = a.smooth ? st.a1 : acc(0);
        const int64_t t = static_cast<int64_t>(static_cast<const target_t*>(a.target)[r]);
        if (t != a.ignore_index) {
          if (t < 0 || t >= a.num_classes) {
            atomicMin(a.first_bad, static_cast<unsigned long long>(r));
            zt = std::numeric_limits<acc>::quiet_NaN();
          } else {
            const int64_t local = t - a.offset;
            if (local >= 0 && local < a.Cs) {
              zt = a.cap(load_acc(xr, local));
              wt = a.w ? a.w[local] : acc(1);
            }
          }
        }
      }
      acc* o = a.out + r * 5;
      o[0] = st.m;
      o[1] = st.s;
      o[2] = zt;
      o[3] = wt;
      o[4] = c;
    }
  }
}

template <typename scalar_t>
struct GradArgs {
  using acc = acc_t<scalar_t>;
  const scalar_t* x;   // (R, Cs) contiguous
  scalar_t* g;         // (R, Cs) contiguous; may equal x
  const void* target;  // (R,) class indices, or null
  const void* q;       // (R, Cs) probability target in q_t (the kernels' template argument), or null
  const acc* w;        // (Cs,) or null
  const acc* k;        // (R, 4): lse, A, B1, B0
  int64_t R, Cs, offset, ignore_index;
  bool vec;  // x and g rows share their 16-byte alignment: vector loads and stores
  Cap<acc> cap;
};

template <bool PROB, typename scalar_t, typename q_t>
__device__ __forceinline__ acc_t<scalar_t> grad_elem(acc_t<scalar_t> x, int64_t c, int64_t local, const q_t* qrow,
                                                     const acc_t<scalar_t> (&k)[4], const GradArgs<scalar_t>& a) {
  using acc = acc_t<scalar_t>;
  const acc z = a.cap(x);
  const acc w = a.w ? a.w[c] : acc(1);
  acc g = fast_exp(z - k[0]) * k[1];
  if constexpr (PROB) {
    g -= w * (load_acc(qrow, c) * k[2] + k[3]);
  } else {
    g -= k[2] * w;
    if (c == local) g -= k[3];
  }
  return g * a.cap.slope(z);
}

// Bytes moved: the logits read once and the gradient written once (R * Cs * sizeof(scalar_t) each; an
// ignored row is only written), probability targets read once, weights and coefficients from L2.
template <typename scalar_t, typename target_t, typename q_t, bool PROB, int GROUP>
__global__ void __launch_bounds__(kThreads) grad_kernel(const GradArgs<scalar_t> a) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t>;
  constexpr int VN = P::N;
  constexpr int GPB = kThreads / GROUP;
  const int lane = threadIdx.x % GROUP;
  for (int64_t r = int64_t(blockIdx.x) * GPB + threadIdx.x / GROUP; r < a.R; r += int64_t(gridDim.x) * GPB) {
    const scalar_t* xr = a.x + r * a.Cs;
    scalar_t* gr = a.g + r * a.Cs;
    const q_t* qr = PROB ? static_cast<const q_t*>(a.q) + r * a.Cs : nullptr;
    int64_t local = -1;  // the target's column in this slice; any value outside [0, Cs) matches no column
    bool ignored = false;
    if constexpr (!PROB) {
      const int64_t t = static_cast<int64_t>(static_cast<const target_t*>(a.target)[r]);
      ignored = t == a.ignore_index;
      local = t - a.offset;
    }
    const acc k[4] = {a.k[r * 4], a.k[r * 4 + 1], a.k[r * 4 + 2], a.k[r * 4 + 3]};
    const int64_t head = a.vec ? head_elems(xr, a.Cs) : a.Cs;
    const int64_t nvec = (a.Cs - head) / VN;
    const int64_t tail = head + nvec * VN;
    for (int64_t c = lane; c < head; c += GROUP)
      store_acc(gr, c, ignored ? acc(0) : grad_elem<PROB>(load_acc(xr, c), c, local, qr, k, a));
    const uint4* xv = reinterpret_cast<const uint4*>(xr + head);
    uint4* gv = reinterpret_cast<uint4*>(gr + head);  // aligned as xv (a.vec)
    for (int64_t v0 = lane; v0 < nvec; v0 += int64_t(GROUP) * kUnroll) {
      uint4 raw[kUnroll];
      if (!ignored) {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int64_t i = v0 + int64_t(u) * GROUP;
          if (i < nvec) raw[u] = xv[i];  // not __ldg: in place, the same memory is written
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = v0 + int64_t(u) * GROUP;
        if (i < nvec) {
          acc v[VN];
          if (ignored) {
#pragma unroll
            for (int j = 0; j < VN; ++j) v[j] = acc(0);
          } else {
            P::unpack(raw[u], v);
#pragma unroll
            for (int j = 0; j < VN; ++j) v[j] = grad_elem<PROB>(v[j], head + i * VN + j, local, qr, k, a);
          }
          gv[i] = P::pack(v);
        }
      }
    }
    for (int64_t c = tail + lane; c < a.Cs; c += GROUP)
      store_acc(gr, c, ignored ? acc(0) : grad_elem<PROB>(load_acc(xr, c), c, local, qr, k, a));
  }
}

// Blocks for R rows at GROUP threads per row: enough to fill the GPU, capped (the kernels stride).
int grid_rows(int64_t R, int group, int device) {
  const int64_t per_block = kThreads / group;
  const int64_t want = (R + per_block - 1) / per_block;
  const int64_t cap = int64_t(device_info(device).sm_count) * (2048 / kThreads) * 4;
  return static_cast<int>(std::max<int64_t>(1, std::min(want, cap)));
}

template <typename acc>
Cap<acc> make_cap(std::optional<double> softcap) {
  return softcap ? Cap<acc>{true, static_cast<acc>(*softcap), static_cast<acc>(1.0 / *softcap)}
                 : Cap<acc>{false, acc(1), acc(1)};
}

// The one launcher of both kernels: kernel(target_tag, q_tag, prob_tag, group_tag) names the instance for
// the target kind -- probabilities read in q_t (the logits' dtype or the accumulate dtype, as PartialArgs
// holds them) or class indices (int64 / uint8) -- and the row group (a warp for slices of up to
// kWarpRowMax classes, else the block); it is launched over the rows with `args`. after(target_tag) runs
// once the class-target kernel is queued.
template <typename scalar_t, typename Args, typename Kernel, typename After>
void launch_rows(const PartialArgs& pa, const Args& args, Kernel kernel, After after, cudaStream_t stream) {
  using acc = acc_t<scalar_t>;
  const int device = pa.x.get_device();
  auto go = [&](auto target_tag, auto q_tag, auto prob_tag) {
    auto launch = [&](auto group_tag) {
      constexpr int G = decltype(group_tag)::value;
      const auto k = kernel(target_tag, q_tag, prob_tag, group_tag);
      k<<<grid_rows(pa.R, G, device), kThreads, 0, stream>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (pa.Cs <= kWarpRowMax)
      launch(std::integral_constant<int, 32>{});
    else
      launch(std::integral_constant<int, kThreads>{});
  };
  if (pa.prob) {
    if (pa.target.scalar_type() == pa.x.scalar_type())
      go(int64_t{}, scalar_t{}, std::true_type{});
    else  // the accumulate dtype (ops/ce_partial.cpp partial_args)
      go(int64_t{}, acc{}, std::true_type{});
  } else {
    dispatch_class_target(pa.target.scalar_type(), [&](auto tag) {
      go(tag, acc{}, std::false_type{});
      after(tag);
    });
  }
}

Tensor stats_cuda(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, int64_t class_offset,
                  int64_t num_classes, int64_t ignore_index, double eps, std::optional<double> softcap) {
  const char* op = "fastloss.ce_partial_stats";
  const c10::cuda::CUDAGuard guard(logits.device());
  const PartialArgs pa =
      partial_stats_args(logits, target, weight, class_offset, num_classes, ignore_index, eps, softcap, op);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto dtype = pa.x.scalar_type();
  Tensor out = at::empty({pa.R, 5}, logits.options().dtype(acc_dtype(dtype)));
  if (pa.R == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_ce_partial_stats_cuda", [&] {
    using acc = acc_t<scalar_t>;
    StatsArgs<scalar_t> a{};
    a.x = pa.x.const_data_ptr<scalar_t>();
    a.target = pa.prob ? nullptr : pa.target.const_data_ptr();
    a.q = pa.prob ? pa.target.const_data_ptr() : nullptr;
    a.w = pa.weight.defined() ? pa.weight.const_data_ptr<acc>() : nullptr;
    a.out = out.mutable_data_ptr<acc>();
    a.R = pa.R;
    a.Cs = pa.Cs;
    a.offset = class_offset;
    a.num_classes = num_classes;
    a.ignore_index = ignore_index;
    a.c1 = static_cast<acc>(1.0 - eps);
    a.c0 = static_cast<acc>(eps / static_cast<double>(num_classes));
    a.smooth = eps > 0;
    a.cap = make_cap<acc>(softcap);
    Tensor first_bad;  // class targets: the first bad row (integer atomicMin), reported from the device
    if (!pa.prob) {
      first_bad = at::full({}, std::numeric_limits<int64_t>::max(), pa.target.options().dtype(at::kLong));
      a.first_bad = reinterpret_cast<unsigned long long*>(first_bad.mutable_data_ptr<int64_t>());
    }
    auto kernel = [](auto target_tag, auto q_tag, auto prob_tag, auto group_tag) {
      return &stats_kernel<scalar_t, decltype(target_tag), decltype(q_tag), decltype(prob_tag)::value,
                           decltype(group_tag)::value>;
    };
    auto after = [&](auto tag) {
      using target_t = decltype(tag);
      report_device_error(first_bad, error_proto(op, DeviceErrorKind::ClassTarget, num_classes, ignore_index),
                          TargetValue<target_t>{pa.target.const_data_ptr<target_t>()}, stream);
    };
    launch_rows<scalar_t>(pa, a, kernel, after, stream);
  });
  return out;
}

// Writes the gradient into g (contiguous like pa.x; may be pa.x itself).
void grad_into(const PartialArgs& pa, Tensor& g) {
  if (pa.R == 0 || pa.Cs == 0) return;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto dtype = pa.x.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_ce_partial_grad_cuda", [&] {
    using acc = acc_t<scalar_t>;
    GradArgs<scalar_t> a{};
    a.x = pa.x.const_data_ptr<scalar_t>();
    a.g = g.mutable_data_ptr<scalar_t>();
    a.target = pa.prob ? nullptr : pa.target.const_data_ptr();
    a.q = pa.prob ? pa.target.const_data_ptr() : nullptr;
    a.w = pa.weight.defined() ? pa.weight.const_data_ptr<acc>() : nullptr;
    a.k = pa.coef.const_data_ptr<acc>();
    a.R = pa.R;
    a.Cs = pa.Cs;
    a.offset = pa.class_offset;
    a.ignore_index = pa.ignore_index;
    a.vec = ((reinterpret_cast<uintptr_t>(a.x) ^ reinterpret_cast<uintptr_t>(a.g)) & 15) == 0;
    a.cap = make_cap<acc>(pa.softcap);
    auto kernel = [](auto target_tag, auto q_tag, auto prob_tag, auto group_tag) {
      return &grad_kernel<scalar_t, decltype(target_tag), decltype(q_tag), decltype(prob_tag)::value,
                          decltype(group_tag)::value>;
    };
    launch_rows<scalar_t>(pa, a, kernel, [](auto) {}, stream);
  });
}

Tensor grad_cuda(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight, const Tensor& coef,
                 int64_t class_offset, int64_t ignore_index, std::optional<double> softcap) {
  const c10::cuda::CUDAGuard guard(logits.device());
  return partial_grad_out(
      partial_grad_args(logits, target, weight, coef, class_offset, ignore_index, softcap, "fastloss.ce_partial_grad"),
      grad_into);
}

void grad_inplace_cuda(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                       const Tensor& coef, int64_t class_offset, int64_t ignore_index, std::optional<double> softcap) {
  const c10::cuda::CUDAGuard guard(logits.device());
  partial_grad_inplace(
      logits,
      partial_grad_args(logits, target, weight, coef, class_offset, ignore_index, softcap, "fastloss.ce_partial_grad_"),
      grad_into);
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  // PollFirst: each op first raises the errors earlier calls' kernels recorded (common/device_errors.h)
  m.impl("ce_partial_stats", &cuda::PollFirst<&cuda::stats_cuda>::call);
  m.impl("ce_partial_grad", &cuda::PollFirst<&cuda::grad_cuda>::call);
  m.impl("ce_partial_grad_", &cuda::PollFirst<&cuda::grad_inplace_cuda>::call);
}

}  // namespace fastloss
