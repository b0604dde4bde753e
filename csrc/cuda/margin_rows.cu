// CUDA engine of the margin_rows family (math in ops/margin_rows.h, op glue in ops/margin_rows_ops.h).
// A group of threads owns one row at a time: a warp (8 rows per 256-thread block) for short rows, the
// whole block for long ones; groups stride over the rows. Every sum is per thread in a fixed order,
// then a fixed shuffle / block tree: no floating-point atomics, bitwise repeatable.
//
// multi_margin (mm_kernel): the group reads y and x_y, then streams the row once (16-byte loads when
// aligned), adding the hinge terms and -- gradient wanted -- writing d/dx_i with the same 16-byte
// stores and summing them; after the group's reduction one thread writes d/dx_y = -sum. Moves per
// row: C scores read, C gradients written, one target and one weight read. A tiny kernel checks the
// N targets first, so the host's wait for that check overlaps the row kernel.
//
// multilabel_margin (ml_kernel): the group reads the target row once (every entry range-checked, as
// torch's CPU kernel does; the list ends at the first -1) while staging the scores in shared memory in
// the accumulate type, next to one 64-bit counter per class and a bitmap of the listed classes. The
// listed classes are marked in the bitmap (integer atomicOr: a class listed twice sets its bit twice,
// order-free); then one sweep of the staged row per listed target k (O(K C), as torch): each thread
// counts, for the non-target classes it owns, the active pairs z = 1 - x_t + x_i > 0 (+1 in the class's
// counter, which only that thread touches) and the warp's total is subtracted from the target's counter
// with one integer atomic (order-free, so deterministic). A last sweep writes every gradient as
// counter / C.
// Race-free by construction: during the sweeps the bitmap is only read (its atomics are ordered before
// by a group barrier), a non-target's counter is read and written by its owner thread only, and a listed
// class's counter is touched by the atomics only -- nobody reads it until the group barrier after the
// last sweep. (The bitmap replaces the old mark -1 in the counter itself, which was written by several
// threads for a repeated class and read by the owner while other warps added to it.) Cost: C / 8 more
// bytes of shared memory per row (1% of the 12 per class staged in float32); in the sweep a bitmap word
// load (one word serves 32 consecutive classes: a broadcast) instead of the counter's load, the counter
// read and written only for active pairs.
// Moves per row: C scores and C targets read, C gradients written. Rows too long for shared memory
// keep the counters in a per-block global scratch and re-read the scores from L2.
//
// A bad target is never read through: the row's loss and gradient are NaN, and with validation on the
// first bad position is reported from the device without a host sync (common/device_errors.h).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <type_traits>

#include "common/cuda/block_reduce.cuh"
#include "common/cuda/device_errors.cuh"
#include "common/options.h"
#include "ops/margin_rows_ops.h"

namespace fastloss {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 256;
constexpr int kScratch = kThreads / 32 + 1;
constexpr int64_t kNoBad = std::numeric_limits<int64_t>::max();

// G threads own a row: a warp (G = 32) or the whole 256-thread block.
template <int G>
struct Group {
  static_assert(G == 32 || G == kThreads, "a group is a warp or the block");
  static constexpr int kPerBlock = kThreads / G;  // rows a block works on at once
  static __device__ __forceinline__ int tid() { return G == 32 ? static_cast<int>(threadIdx.x & 31) : threadIdx.x; }
  static __device__ __forceinline__ int slot() { return G == 32 ? static_cast<int>(threadIdx.x / 32) : 0; }
  // Orders the group's shared/global memory accesses (a warp's __syncwarp, the block's barrier).
  static __device__ __forceinline__ void sync() {
    if constexpr (G == 32)
      __syncwarp();
    else
      __syncthreads();
  }
  // Fixed-order sum over the group; every thread gets the same bits. scratch: kScratch slots.
  template <typename T>
  static __device__ __forceinline__ T sum(T v, T* scratch) {
    if constexpr (G == 32)
      return warp_sum(v);
    else
      return block_sum<kThreads>(v, scratch);
  }
  static __device__ __forceinline__ int64_t minimum(int64_t v, int64_t* scratch) {
    if constexpr (G == 32)
      return warp_allreduce(v, MinOp{});
    else
      return block_allreduce<kThreads>(v, scratch, int64_t{kNoBad}, MinOp{});  // a value: kNoBad is host memory
  }
};

template <typename acc>
__device__ __forceinline__ acc qnan() {
  return std::numeric_limits<acc>::quiet_NaN();
}

// Row factor of the gradient: kscale * (kdev[r] or kdev[0], or 1 without kdev).
template <typename acc>
struct RowK {
  const acc* kdev;
  bool single;
  acc kscale;
  __device__ __forceinline__ acc operator()(int64_t r) const { return kscale * (kdev ? kdev[single ? 0 : r] : acc(1)); }
};

// ---------------------------------------------------------------------------------------------
// multi_margin

__global__ void mm_target_kernel(const int64_t* target, int64_t n, int64_t C, unsigned long long* first_bad) {
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const int64_t y = target[i];
    if (y < 0 || y >= C) atomicMin(first_bad, static_cast<unsigned long long>(i));
  }
}

template <typename scalar_t>
struct MmIo {
  using acc = acc_t<scalar_t>;
  const scalar_t* x;
  const int64_t* target;
  const acc* weight;  // or null
  scalar_t* grad;     // or null: not wanted
  acc* row_loss;      // or null (backward)
  RowK<acc> k;
  acc margin;
  int64_t rows, C;
  bool vec;  // C a multiple of the 16-byte vector and x (and grad) 16-byte aligned
};

template <typename scalar_t, int P, int G>
__global__ void __launch_bounds__(kThreads) mm_kernel(const MmIo<scalar_t> io) {
  using acc = acc_t<scalar_t>;
  using Gr = Group<G>;
  using Pk = Pack<scalar_t>;
  __shared__ acc scratch[kScratch];
  const int tid = Gr::tid();
  const int64_t C = io.C;
  const acc Ca = static_cast<acc>(C);
  const int64_t step = int64_t(gridDim.x) * Gr::kPerBlock;
  for (int64_t r = int64_t(blockIdx.x) * Gr::kPerBlock + Gr::slot(); r < io.rows; r += step) {
    const int64_t off = r * C;
    const scalar_t* x = io.x + off;
    scalar_t* g = io.grad ? io.grad + off : nullptr;
    const int64_t y = io.target[r];  // the same value in the whole group: uniform branches below
    if (y < 0 || y >= C) {           // refused on the host, or (validation off) a NaN row
      if (g)
        for (int64_t i = tid; i < C; i += G) store_acc(g, i, qnan<acc>());
      if (tid == 0 && io.row_loss) io.row_loss[r] = qnan<acc>();
      continue;
    }
    const acc wy = io.weight ? io.weight[y] : acc(1);
    const acc mxy = io.margin - load_acc(x, y);
    const acc coef = wy * io.k(r) / Ca;
    acc s = 0, gs = 0;
    if (io.vec) {
      const int64_t nv = C / Pk::N;
      const uint4* xv = reinterpret_cast<const uint4*>(x);
      uint4* gv = reinterpret_cast<uint4*>(g);
      for (int64_t v = tid; v < nv; v += G) {
        acc xe[Pk::N], ge[Pk::N];
        Pk::unpack(xv[v], xe);
#pragma unroll
        for (int e = 0; e < Pk::N; ++e) {
          acc dz;
          const acc t = mm_term<P>(mxy, xe[e], &dz);
          const bool self = v * Pk::N + e == y;  // its slot is overwritten below, after the group's sums
          s += self ? acc(0) : t;
          ge[e] = self ? acc(0) : coef * dz;
          gs += ge[e];
        }
        if (g) gv[v] = Pk::pack(ge);
      }
    } else {
      for (int64_t i = tid; i < C; i += G) {
        if (i == y) continue;
        acc dz;
        s += mm_term<P>(mxy, load_acc(x, i), &dz);
        const acc ge = coef * dz;
        gs += ge;
        if (g) store_acc(g, i, ge);
      }
    }
    s = Gr::sum(s, scratch);
    gs = Gr::sum(gs, scratch);
    Gr::sync();  // every store of the row (the 0 at y included) ordered before d/dx_y
    if (tid == 0) {
      if (io.row_loss) io.row_loss[r] = s * wy / Ca;
      if (g) store_acc(g, y, -gs);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// multilabel_margin

template <typename scalar_t>
struct MlIo {
  using acc = acc_t<scalar_t>;
  const scalar_t* x;
  const int64_t* target;
  scalar_t* grad;  // or null
  acc* row_loss;   // or null
  RowK<acc> k;
  int64_t rows, C;
  long long* scratch;  // per-block counters in global memory (SMEM = false), else null
  unsigned long long* first_bad;
};

// 32-bit words of the bitmap of listed classes of one row.
__host__ __device__ __forceinline__ int64_t ml_mark_words(int64_t C) { return (C + 31) / 32; }

// SMEM: the row's scores (acc), counters (int64) and listed-class bitmap in dynamic shared memory, laid
// out as [counters of every group of the block][scores of every group][bitmaps of every group]; else
// counters and bitmap in io.scratch, ml_scratch_longs(C) int64 per block.
__host__ __device__ __forceinline__ int64_t ml_scratch_longs(int64_t C) { return C + (ml_mark_words(C) + 1) / 2; }

template <typename scalar_t, int G, bool SMEM>
__global__ void __launch_bounds__(kThreads) ml_kernel(const MlIo<scalar_t> io) {
  using acc = acc_t<scalar_t>;
  using Gr = Group<G>;
  static_assert(SMEM || G == kThreads, "global-memory counters are per block");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ acc ascratch[kScratch];
  __shared__ int64_t iscratch[kScratch];
  const int tid = Gr::tid();
  const int64_t C = io.C;
  const acc Ca = static_cast<acc>(C);
  long long* cnt;  // per class: active pairs won by a non-target; minus the pairs lost by a listed class
  unsigned* mark;  // bit i: class i is listed
  acc* xs = nullptr;
  const int64_t words = ml_mark_words(C);
  if constexpr (SMEM) {
    long long* all = reinterpret_cast<long long*>(smem_raw);
    cnt = all + int64_t(Gr::slot()) * C;
    acc* xall = reinterpret_cast<acc*>(all + int64_t(Gr::kPerBlock) * C);
    xs = xall + int64_t(Gr::slot()) * C;
    mark = reinterpret_cast<unsigned*>(xall + int64_t(Gr::kPerBlock) * C) + int64_t(Gr::slot()) * words;
  } else {
    cnt = io.scratch + int64_t(blockIdx.x) * ml_scratch_longs(C);
    mark = reinterpret_cast<unsigned*>(cnt + C);
  }
  auto listed = [&](int64_t i) { return (mark[i >> 5] >> (i & 31)) & 1u; };
  const int64_t step = int64_t(gridDim.x) * Gr::kPerBlock;
  for (int64_t r = int64_t(blockIdx.x) * Gr::kPerBlock + Gr::slot(); r < io.rows; r += step) {
    const int64_t off = r * C;
    const int64_t* t = io.target + off;
    const scalar_t* x = io.x + off;
    scalar_t* g = io.grad ? io.grad + off : nullptr;
    // 1. the target row, once: the list's length K (first -1) and the first invalid entry; the
    //    scores staged; the counters zeroed (each thread touches only the classes i = tid + n G) and
    //    the bitmap cleared
    int64_t K = C, bad = kNoBad;
    for (int64_t i = tid; i < C; i += G) {
      const int64_t v = t[i];
      if (v == -1) {
        if (i < K) K = i;
      } else if ((v < -1 || v >= C) && i < bad) {
        bad = i;
      }
      if constexpr (SMEM) xs[i] = load_acc(x, i);
      cnt[i] = 0;
    }
    for (int64_t w = tid; w < words; w += G) mark[w] = 0;
    K = Gr::minimum(K, iscratch);
    bad = Gr::minimum(bad, iscratch);
    Gr::sync();  // staged scores, zeroed counters and cleared bitmap visible to the whole group
    if (bad != kNoBad) {  // uniform in the group
      if (tid == 0 && io.first_bad) atomicMin(io.first_bad, static_cast<unsigned long long>(off + bad));
      if (g)
        for (int64_t i = tid; i < C; i += G) store_acc(g, i, qnan<acc>());
      if (tid == 0 && io.row_loss) io.row_loss[r] = qnan<acc>();
      continue;  // nothing shared was written after the last sync: the next row may start
    }
    // 2. mark the listed classes: integer atomics (a class listed twice sets its bit twice, order-free),
    //    all done before the barrier, and only read after it
    for (int64_t q = tid; q < K; q += G) {
      const int64_t j = t[q];
      atomicOr(mark + (j >> 5), 1u << (j & 31));
    }
    Gr::sync();
    // 3. one sweep per listed target. The bitmap is read-only here; a non-target's counter is touched
    //    by its owner only, a listed class's by the atomics only.
    acc s = 0;
    for (int64_t q = 0; q < K; ++q) {
      const int64_t j = t[q];  // one address for the whole group: a broadcast load
      const acc c = acc(1) - (SMEM ? xs[j] : load_acc(x, j));
      int n = 0;
      for (int64_t i = tid; i < C; i += G) {
        if (listed(i)) continue;  // never a non-target
        const acc z = ml_z(c, SMEM ? xs[i] : load_acc(x, i));
        if (z > acc(0)) {
          s += z;
          ++cnt[i];
          ++n;
        }
      }
      n = warp_sum(n);
      if ((threadIdx.x & 31) == 0 && n != 0)
        atomicAdd(reinterpret_cast<unsigned long long*>(cnt + j), static_cast<unsigned long long>(-int64_t(n)));
    }
    s = Gr::sum(s, ascratch);
    Gr::sync();  // every warp's atomics on the listed classes' counters done before any thread reads them
    if (tid == 0 && io.row_loss) io.row_loss[r] = s / Ca;
    if (g) {
      const acc gk = io.k(r) / Ca;
      for (int64_t i = tid; i < C; i += G) store_acc(g, i, static_cast<acc>(cnt[i]) * gk);
    }
    Gr::sync();  // the next row overwrites the staged scores and the counters
  }
}

// ---------------------------------------------------------------------------------------------
// host side

// The fields MmIo and MlIo share: the scores, targets, gradient, per-row losses and row factor.
template <class Io>
void fill_rows_io(Io& io, const MarginRowsPlan& p, const MarginRun& run) {
  using scalar_t = std::remove_const_t<std::remove_pointer_t<decltype(io.x)>>;
  using acc = typename Io::acc;
  io.x = p.input.const_data_ptr<scalar_t>();
  io.target = p.target.const_data_ptr<int64_t>();
  io.grad = run.grad.numel() ? run.grad.mutable_data_ptr<scalar_t>() : nullptr;
  io.row_loss = run.row_loss.defined() ? run.row_loss.mutable_data_ptr<acc>() : nullptr;
  io.k = RowK<acc>{run.kdev.defined() ? run.kdev.const_data_ptr<acc>() : nullptr, run.single,
                   static_cast<acc>(run.kscale)};
  io.rows = p.rows;
  io.C = p.C;
}

// A multilabel error names the entry's row and column.
struct MultilabelValue {
  const int64_t* target;
  int64_t C;
  __device__ void operator()(int64_t pos, DeviceErrorRecord& r) const {
    r.pos = pos;
    r.value = target[pos];
    r.p[1] = pos / C;
    r.p[2] = pos % C;
  }
};

int capped_blocks(int64_t groups_needed, int cap) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(groups_needed, cap)));
}

struct CudaMarginRows {
  static int64_t multi_margin(const MarginRowsPlan& p, int pw, double margin, MarginRun& run) {
    if (p.rows == 0) return -1;
    const c10::cuda::CUDAGuard guard(p.input.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    const int sms = device_info(p.input.get_device()).sm_count;
    if (validation_mode() != kValidateOff) {
      Tensor first_bad = at::full({}, kNoBad, p.target.options());
      mm_target_kernel<<<capped_blocks((p.rows + kThreads - 1) / kThreads, 1024), kThreads, 0, stream>>>(
          p.target.const_data_ptr<int64_t>(), p.rows, p.C,
          reinterpret_cast<unsigned long long*>(first_bad.mutable_data_ptr<int64_t>()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      report_device_error(first_bad, error_proto(p.op, DeviceErrorKind::MultiMargin, p.C),
                          TargetValue<int64_t>{p.target.const_data_ptr<int64_t>()}, stream);
    }
    const bool warp = p.C <= 2048;
    const int blocks = warp ? capped_blocks((p.rows + 7) / 8, sms * 16) : capped_blocks(p.rows, sms * 16);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.input.scalar_type(), "fastloss_multi_margin_cuda", [&] {
      using acc = acc_t<scalar_t>;
      MmIo<scalar_t> io{};
      fill_rows_io(io, p, run);
      io.weight = p.weight.defined() ? p.weight.const_data_ptr<acc>() : nullptr;
      io.margin = static_cast<acc>(margin);
      io.vec = p.C % Pack<scalar_t>::N == 0 && aligned16(io.x) && (!io.grad || aligned16(io.grad));
      auto launch = [&](auto kernel) {
        kernel<<<blocks, kThreads, 0, stream>>>(io);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (pw == 1) {
        if (warp)
          launch(mm_kernel<scalar_t, 1, 32>);
        else
          launch(mm_kernel<scalar_t, 1, kThreads>);
      } else {
        if (warp)
          launch(mm_kernel<scalar_t, 2, 32>);
        else
          launch(mm_kernel<scalar_t, 2, kThreads>);
      }
    });
    return -1;  // a bad target is reported from the device (report_device_error)
  }

  static int64_t multilabel(const MarginRowsPlan& p, MarginRun& run) {
    if (p.rows == 0) return -1;
    const c10::cuda::CUDAGuard guard(p.input.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    const DeviceInfo dev = device_info(p.input.get_device());
    Tensor first_bad = at::full({}, kNoBad, p.target.options());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.input.scalar_type(), "fastloss_multilabel_cuda", [&] {
      using acc = acc_t<scalar_t>;
      MlIo<scalar_t> io{};
      fill_rows_io(io, p, run);
      io.first_bad = reinterpret_cast<unsigned long long*>(first_bad.mutable_data_ptr<int64_t>());
      // a row's counters, scores and bitmap of listed classes
      const int64_t per_row = p.C * static_cast<int64_t>(sizeof(long long) + sizeof(acc)) + ml_mark_words(p.C) * 4;
      // dynamic shared memory beyond 48 KB needs an opt-in; 1 KB is left for the static scratch
      constexpr int64_t kDefaultSmem = 48 * 1024, kStatic = 1024;
      Tensor scratch;
      if (int64_t(Group<32>::kPerBlock) * per_row + kStatic <= kDefaultSmem) {  // short rows: a warp each
        const size_t smem = static_cast<size_t>(Group<32>::kPerBlock * per_row);
        ml_kernel<scalar_t, 32, true>
            <<<capped_blocks((p.rows + 7) / 8, dev.sm_count * 16), kThreads, smem, stream>>>(io);
      } else if (per_row + kStatic <= dev.smem_optin) {  // a block each, the row in shared memory
        const int smem = static_cast<int>(per_row);
        auto kernel = ml_kernel<scalar_t, kThreads, true>;
        if (smem + kStatic > kDefaultSmem)
          C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        kernel<<<capped_blocks(p.rows, dev.sm_count * 16), kThreads, smem, stream>>>(io);
      } else {  // rows too long for shared memory: counters in a per-block global scratch
        // C int64 counters (and the bitmap) per block: at most max(256 MiB, the input's size) in all --
        // torch's own kernel allocates an input-sized is_target -- so few, very long rows cannot take 4x
        // the input
        const int64_t budget = std::max<int64_t>(int64_t(256) << 20, p.rows * p.C * int64_t(sizeof(scalar_t)));
        const int64_t fit = std::max<int64_t>(1, budget / (ml_scratch_longs(p.C) * int64_t(sizeof(int64_t))));
        const int blocks = capped_blocks(std::min(p.rows, fit), dev.sm_count * 2);
        scratch = at::empty({blocks, ml_scratch_longs(p.C)}, p.target.options());
        io.scratch = reinterpret_cast<long long*>(scratch.mutable_data_ptr<int64_t>());
        ml_kernel<scalar_t, kThreads, false><<<blocks, kThreads, 0, stream>>>(io);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    report_device_error(first_bad, error_proto(p.op, DeviceErrorKind::Multilabel, p.C),
                        MultilabelValue{p.target.const_data_ptr<int64_t>(), p.C}, stream);
    return -1;  // a bad target is reported from the device (report_device_error)
  }

  static Tensor finish(const MarginRowsPlan& p, const Tensor& row_loss) {
    const c10::cuda::CUDAGuard guard(row_loss.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    return AT_DISPATCH_FLOATING_TYPES(row_loss.scalar_type(), "fastloss_margin_rows_finish_cuda", [&] {
      return finish_loss<scalar_t>(row_loss, p.reduction, nullptr, static_cast<scalar_t>(p.rows), p.out_dtype,
                                   p.none_shape, stream);
    });
  }
};

using Ops = MarginRowsOps<CudaMarginRows>;

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  m.impl("_multi_margin_loss_forward", &cuda::PollFirst<&cuda::Ops::multi_margin>::call);
  m.impl("_multi_margin_loss_backward", &cuda::PollFirst<&cuda::Ops::multi_margin_backward>::call);
  m.impl("_multilabel_margin_loss_forward", &cuda::PollFirst<&cuda::Ops::multilabel>::call);
  m.impl("_multilabel_margin_loss_backward", &cuda::PollFirst<&cuda::Ops::multilabel_backward>::call);
}

}  // namespace fastloss
