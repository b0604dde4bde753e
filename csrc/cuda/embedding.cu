// CUDA engine of the row-wise embedding losses (math in ops/embedding.h, op glue in
// ops/embedding_ops.h). One warp per row: 16-byte loads of every input, the row's sums merged by a
// butterfly of shuffles (every lane ends with the same bits, no atomics), then -- gradients
// wanted -- a second sweep of the same row, which the warp has just brought into L1/L2, writing
// every input's gradient once. Minimal traffic of triplet forward+backward (mean): 3 reads and 3
// gradient writes of (rows, D); the per-row loss (rows x 4 bytes) is reduced in a fixed order.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda/block_reduce.cuh"
#include "common/cuda/device_errors.cuh"
#include "ops/embedding_ops.h"

namespace fastloss {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kRowWarps = 8;  // rows per 256-thread block

template <typename scalar_t, int NI>
struct RowsIo {
  using acc = acc_t<scalar_t>;
  const scalar_t* in[NI];
  scalar_t* g[NI];  // null: not wanted
  const acc* kdev;  // row factor on the device (backward), or null
  bool single;      // kdev has one value for every row
  acc kscale;
  acc* row_loss;        // or null
  const acc* target;    // one per row (cosine), or null
  int64_t rows, D;
  bool vec;             // D a multiple of the vector width and every pointer 16-byte aligned
  bool any_grad;
};

template <typename scalar_t, typename M>
__global__ void __launch_bounds__(kRowWarps * 32) rows_kernel(const M m, const RowsIo<scalar_t, M::kIn> io) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t>;
  constexpr int NI = M::kIn;
  const int lane = threadIdx.x & 31;
  const int64_t step = int64_t(gridDim.x) * kRowWarps;
  struct State {  // a plain struct, so warp_allreduce can shuffle it
    acc v[M::kState];
  };
  for (int64_t r = int64_t(blockIdx.x) * kRowWarps + threadIdx.x / 32; r < io.rows; r += step) {
    const int64_t off = r * io.D;
    State st;  // the row's sums
    m.init(st.v);
    if (io.vec) {
      const int64_t nv = io.D / P::N;
      for (int64_t v = lane; v < nv; v += 32) {
        acc x[NI][P::N];
#pragma unroll
        for (int j = 0; j < NI; ++j) P::unpack(reinterpret_cast<const uint4*>(io.in[j] + off)[v], x[j]);
#pragma unroll
        for (int e = 0; e < P::N; ++e) {
          acc xe[NI];
#pragma unroll
          for (int j = 0; j < NI; ++j) xe[j] = x[j][e];
          m.add(st.v, xe);
        }
      }
    } else {
      for (int64_t i = lane; i < io.D; i += 32) {
        acc xe[NI];
#pragma unroll
        for (int j = 0; j < NI; ++j) xe[j] = load_acc(io.in[j], off + i);
        m.add(st.v, xe);
      }
    }
    // merged over the warp: every lane ends with the row's sums (M::merge is commutative)
    st = warp_allreduce(st, [&m](State x, const State& y) {
      m.merge(x.v, y.v);
      return x;
    });
    const acc k = io.kscale * (io.kdev ? io.kdev[io.single ? 0 : r] : acc(1));
    const auto R = m.finish(st.v, io.target ? io.target[r] : acc(0), k);
    if (lane == 0 && io.row_loss) io.row_loss[r] = R.loss;
    if (!io.any_grad) continue;
    if (io.vec) {
      const int64_t nv = io.D / P::N;
      for (int64_t v = lane; v < nv; v += 32) {
        acc x[NI][P::N], g[NI][P::N];
#pragma unroll
        for (int j = 0; j < NI; ++j) P::unpack(reinterpret_cast<const uint4*>(io.in[j] + off)[v], x[j]);
#pragma unroll
        for (int e = 0; e < P::N; ++e) {
          acc xe[NI], ge[NI];
#pragma unroll
          for (int j = 0; j < NI; ++j) xe[j] = x[j][e];
          m.grad(R, xe, ge);
#pragma unroll
          for (int j = 0; j < NI; ++j) g[j][e] = ge[j];
        }
#pragma unroll
        for (int j = 0; j < NI; ++j)
          if (io.g[j]) reinterpret_cast<uint4*>(io.g[j] + off)[v] = P::pack(g[j]);
      }
    } else {
      for (int64_t i = lane; i < io.D; i += 32) {
        acc xe[NI], ge[NI];
#pragma unroll
        for (int j = 0; j < NI; ++j) xe[j] = load_acc(io.in[j], off + i);
        m.grad(R, xe, ge);
#pragma unroll
        for (int j = 0; j < NI; ++j)
          if (io.g[j]) store_acc(io.g[j], off + i, ge[j]);
      }
    }
  }
}

struct CudaRows {
  template <typename Make>
  static void rows(const RowPlan& p, Make&& make, RowRun& run) {
    if (p.rows == 0) return;
    const c10::cuda::CUDAGuard guard(p.in[0].device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    const int sms = device_info(p.in[0].get_device()).sm_count;
    const int blocks = static_cast<int>(
        std::max<int64_t>(1, std::min<int64_t>((p.rows + kRowWarps - 1) / kRowWarps, int64_t(sms) * 16)));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.in[0].scalar_type(), "fastloss_rows_cuda", [&] {
      using acc = acc_t<scalar_t>;
      const auto m = make(acc{});
      using M = std::decay_t<decltype(m)>;
      constexpr int NI = M::kIn;
      RowsIo<scalar_t, NI> io{};
      io.vec = p.D % Pack<scalar_t>::N == 0;
      for (int j = 0; j < NI; ++j) {
        io.in[j] = p.in[j].const_data_ptr<scalar_t>();
        io.g[j] = run.grads[j].numel() ? run.grads[j].mutable_data_ptr<scalar_t>() : nullptr;
        io.any_grad = io.any_grad || io.g[j];
        io.vec = io.vec && aligned16(io.in[j]) && (!io.g[j] || aligned16(io.g[j]));
      }
      io.kdev = run.kdev.defined() ? run.kdev.const_data_ptr<acc>() : nullptr;
      io.single = run.single;
      io.kscale = static_cast<acc>(run.kscale);
      io.row_loss = run.row_loss.defined() ? run.row_loss.mutable_data_ptr<acc>() : nullptr;
      io.target = p.target.defined() ? p.target.const_data_ptr<acc>() : nullptr;
      io.rows = p.rows;
      io.D = p.D;
      rows_kernel<scalar_t, M><<<blocks, kRowWarps * 32, 0, stream>>>(m, io);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }

  static Tensor finish(const RowPlan& p, const Tensor& row_loss) {
    const c10::cuda::CUDAGuard guard(row_loss.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    return AT_DISPATCH_FLOATING_TYPES(row_loss.scalar_type(), "fastloss_rows_finish_cuda", [&] {
      return finish_loss<scalar_t>(row_loss, p.reduction, nullptr, static_cast<scalar_t>(p.rows), p.out_dtype,
                                   p.row_shape, stream);
    });
  }
};

using Ops = EmbeddingOps<CudaRows>;

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  m.impl("_triplet_margin_forward", &cuda::PollFirst<&cuda::Ops::triplet>::call);
  m.impl("_triplet_margin_backward", &cuda::PollFirst<&cuda::Ops::triplet_backward>::call);
  m.impl("_cosine_embedding_forward", &cuda::PollFirst<&cuda::Ops::cosine>::call);
  m.impl("_cosine_embedding_backward", &cuda::PollFirst<&cuda::Ops::cosine_backward>::call);
}

}  // namespace fastloss
