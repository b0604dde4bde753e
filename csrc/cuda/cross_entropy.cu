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
// K-D inputs (N, C, d1..dk) use a thread per (n, d) position, coalesced across positions.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "common/cuda/block_reduce.cuh"
#include "common/options.h"
#include "ops/cross_entropy.h"

namespace fastloss {
namespace cuda {
namespace {

using at::Tensor;

template <typename acc>
struct RowState {
  acc m, s, a1, a2;  // running max, sum exp(x - m); a1/a2: the sums the target kind needs
};

template <typename acc>
__device__ __forceinline__ void combine(RowState<acc>& x, const RowState<acc>& y) {
  const acc M = x.m > y.m ? x.m : y.m;
  if (M == -std::numeric_limits<acc>::infinity()) {
    x.s = x.s + y.s;
  } else {
    x.s = x.s * fast_exp(x.m - M) + y.s * fast_exp(y.m - M);
  }
  x.m = M;
  x.a1 += y.a1;
  x.a2 += y.a2;
}

template <typename acc>
__device__ __forceinline__ RowState<acc> shfl_xor_state(const RowState<acc>& v, int o) {
  RowState<acc> r;
  r.m = __shfl_xor_sync(0xffffffffu, v.m, o);
  r.s = __shfl_xor_sync(0xffffffffu, v.s, o);
  r.a1 = __shfl_xor_sync(0xffffffffu, v.a1, o);
  r.a2 = __shfl_xor_sync(0xffffffffu, v.a2, o);
  return r;
}

// combine() is symmetric up to commutative float ops (a + b == b + a bitwise), so the xor
// butterfly leaves identical bits in every lane.
template <typename acc>
__device__ __forceinline__ void warp_combine(RowState<acc>& v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) combine(v, shfl_xor_state(v, o));
}

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

template <bool PROB, typename acc>
__device__ __forceinline__ void elem_sums(RowState<acc>& st, acc x, acc q, acc w, acc eps, acc invC, bool smooth) {
  // pass-1 sums for one element: label smoothing needs sum w_c x_c; probability targets need
  // S1 = sum w_c t'_c and S2 = sum w_c t'_c x_c with t'_c = (1-eps) q_c + eps/C.
  if (PROB) {
    const acc t = (q * (acc(1) - eps) + eps * invC) * w;
    st.a1 += t;
    st.a2 += t * x;
  } else if (smooth) {
    st.a1 += w * x;
  }
}

template <typename acc, int N>
__device__ __forceinline__ void online_update(RowState<acc>& st, const acc (&v)[N]) {
  acc lm = v[0];
#pragma unroll
  for (int j = 1; j < N; ++j) lm = v[j] > lm ? v[j] : lm;
  if (lm > st.m) {
    st.s = st.s * fast_exp(st.m - lm);
    st.m = lm;
  }
  if (st.m != -std::numeric_limits<acc>::infinity()) {
#pragma unroll
    for (int j = 0; j < N; ++j) st.s += fast_exp(v[j] - st.m);
  }
}

// Row driver shared by the warp- and block-per-row kernels. GROUP threads (lane = index in group)
// handle one row; REG vectors per thread stay in registers, smem_vecs more in shared memory, and
// the rest streams through UNROLL loads in flight per thread. Rows are split into a head (up to the
// first 16-byte boundary), nvec full vectors and a tail. In-row indices are 32-bit (C < 2^31 is
// checked on the host); row offsets are 64-bit.
template <typename scalar_t, typename target_t, bool PROB, int GROUP, int REG, int UNROLL>
struct RowWorker {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t>;
  static constexpr int VN = P::N;

  const CEParams<scalar_t>& p;
  const int lane;
  uint4* smem_cache;  // [smem_vecs][GROUP], nullable

  __device__ __forceinline__ acc wgt(int c) const { return p.weight ? p.weight[c] : acc(1); }

  __device__ __forceinline__ void pass1_vec(RowState<acc>& st, const uint4& raw, const scalar_t* qrow, bool qvec,
                                            int c0, bool smooth, acc invC) const {
    acc v[VN];
    P::unpack(raw, v);
    online_update(st, v);
    if (PROB) {
      acc q[VN];
      if (qvec) {
        P::unpack(*reinterpret_cast<const uint4*>(qrow + c0), q);
      } else {
#pragma unroll
        for (int j = 0; j < VN; ++j) q[j] = load_acc(qrow, c0 + j);
      }
#pragma unroll
      for (int j = 0; j < VN; ++j) elem_sums<true>(st, v[j], q[j], wgt(c0 + j), p.eps, invC, smooth);
    } else if (smooth) {
#pragma unroll
      for (int j = 0; j < VN; ++j) elem_sums<false>(st, v[j], acc(0), wgt(c0 + j), p.eps, invC, smooth);
    }
  }

  __device__ __forceinline__ void pass1_scalar(RowState<acc>& st, const scalar_t* xrow, const scalar_t* qrow, int c,
                                               bool smooth, acc invC) const {
    acc v[1] = {load_acc(xrow, c)};
    online_update(st, v);
    elem_sums<PROB>(st, v[0], PROB ? load_acc(qrow, c) : acc(0), wgt(c), p.eps, invC, smooth);
  }

  // Gradient of one element: p_c A - (class) B1 w_c - [c==t] B0, or (prob) p_c A - w_c (B1 q_c + B0).
  // lse = m + log_s, applied as (x - m) - log_s: exact for the largest logits even when m is huge.
  __device__ __forceinline__ acc grad_elem(acc x, int c, acc m, acc log_s, acc A, acc B1, acc B0, int t, acc q,
                                           bool smooth) const {
    const acc pr = fast_exp((x - m) - log_s) * A;
    if (PROB) return pr - wgt(c) * (q * B1 + B0);
    acc g = pr;
    if (smooth) g -= B1 * wgt(c);
    if (c == t) g -= B0;
    return g;
  }

  __device__ __forceinline__ void grad_vec(const uint4& raw, scalar_t* grow, bool gvec, int c0, acc m, acc log_s,
                                           acc A, acc B1, acc B0, int t, const scalar_t* qrow, bool smooth) const {
    acc v[VN];
    P::unpack(raw, v);
#pragma unroll
    for (int j = 0; j < VN; ++j)
      v[j] = grad_elem(v[j], c0 + j, m, log_s, A, B1, B0, t, PROB ? load_acc(qrow, c0 + j) : acc(0), smooth);
    if (gvec) {
      const uint4 o = P::pack(v);
      __stcs(reinterpret_cast<int4*>(grow + c0), make_int4(o.x, o.y, o.z, o.w));
    } else {
#pragma unroll
      for (int j = 0; j < VN; ++j) store_acc(grow, c0 + j, v[j]);
    }
  }

  // Reduce the group's states; every thread of the group ends with the total.
  __device__ __forceinline__ RowState<acc> reduce(RowState<acc> st, RowState<acc>* scratch) const {
    warp_combine(st);
    if (GROUP == 32) return st;
    constexpr int W = GROUP / 32;
    const int warp = lane / 32, wl = lane & 31;
    if (wl == 0) scratch[warp] = st;
    __syncthreads();
    if (warp == 0) {
      RowState<acc> t = wl < W ? scratch[wl]
                               : RowState<acc>{-std::numeric_limits<acc>::infinity(), acc(0), acc(0), acc(0)};
      warp_combine(t);
      if (wl == 0) scratch[W] = t;
    }
    __syncthreads();
    RowState<acc> r = scratch[W];
    __syncthreads();
    return r;
  }

  __device__ void run_row(int64_t row, RowState<acc>* scratch) const {
    const int C = static_cast<int>(p.C);
    const scalar_t* xrow = p.x + row * p.x_row_stride;
    scalar_t* grow = p.grad ? p.grad + row * p.C : nullptr;
    const scalar_t* qrow = PROB ? static_cast<const scalar_t*>(p.target) + row * p.C : nullptr;
    int t = 0;
    if (!PROB) {
      const int64_t t64 = static_cast<int64_t>(static_cast<const target_t*>(p.target)[row]);
      const bool ignored = t64 == p.ignore_index;
      if (ignored || t64 < 0 || t64 >= C) {
        // Ignored rows: loss 0, gradient 0, logits never read. Out-of-range targets (reachable only
        // with the host check off or inside graph capture): NaN, never an out-of-bounds access.
        const acc fill = ignored ? acc(0) : std::numeric_limits<acc>::quiet_NaN();
        if (lane == 0) {
          p.row_loss[row] = fill;
          if (p.lse) p.lse[row] = fill;
        }
        if (grow)
          for (int c = lane; c < C; c += GROUP) store_acc(grow, c, fill);
        return;
      }
      t = static_cast<int>(t64);
    }
    const acc invC = acc(1) / static_cast<acc>(C);
    const bool smooth = !PROB && p.eps != acc(0);

    const int misalign = static_cast<int>(reinterpret_cast<uintptr_t>(xrow) & 15) / static_cast<int>(sizeof(scalar_t));
    const int head = min(C, misalign == 0 ? 0 : VN - misalign);
    const int nvec = (C - head) / VN;
    const int tail0 = head + nvec * VN;
    const uint4* xv = reinterpret_cast<const uint4*>(xrow + head);
    const bool gvec = grow && (((reinterpret_cast<uintptr_t>(grow) ^ reinterpret_cast<uintptr_t>(xrow)) & 15) == 0);
    const bool qvec = PROB && (((reinterpret_cast<uintptr_t>(qrow) ^ reinterpret_cast<uintptr_t>(xrow)) & 15) == 0);
    const int smem_end = REG + p.smem_vecs;  // vector slots k < smem_end are on chip

    RowState<acc> st{-std::numeric_limits<acc>::infinity(), acc(0), acc(0), acc(0)};
    // ---- pass 1: registers (all loads issued before any use)
    uint4 cache[REG];
#pragma unroll
    for (int k = 0; k < REG; ++k) {
      const int v = lane + k * GROUP;
      if (v < nvec) cache[k] = xv[v];
    }
#pragma unroll
    for (int k = 0; k < REG; ++k) {
      const int v = lane + k * GROUP;
      if (v < nvec) pass1_vec(st, cache[k], qrow, qvec, head + v * VN, smooth, invC);
    }
    // ---- pass 1: the rest, UNROLL loads in flight; slots below smem_end are kept in shared memory
    for (int k0 = REG; lane + k0 * GROUP < nvec; k0 += UNROLL) {
      uint4 buf[UNROLL];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int v = lane + (k0 + u) * GROUP;
        if (v < nvec) buf[u] = xv[v];
      }
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int k = k0 + u, v = lane + k * GROUP;
        if (v < nvec) {
          if (k < smem_end) smem_cache[(k - REG) * GROUP + lane] = buf[u];
          pass1_vec(st, buf[u], qrow, qvec, head + v * VN, smooth, invC);
        }
      }
    }
    if (lane < head) pass1_scalar(st, xrow, qrow, lane, smooth, invC);
    if (lane < C - tail0) pass1_scalar(st, xrow, qrow, tail0 + lane, smooth, invC);

    st = reduce(st, scratch);
    const acc m = st.m, log_s = ::log(st.s), lse = m + log_s;
    const acc scale = p.denom ? acc(1) / *p.denom : p.host_scale;
    acc loss, A, B1, B0;
    if (PROB) {
      loss = prob_row_loss<acc>(m, log_s, st.a1, st.a2, C);
      A = st.a1 * scale;
      B1 = (acc(1) - p.eps) * scale;
      B0 = p.eps * invC * scale;
    } else {
      const acc W = p.wsum ? *p.wsum : static_cast<acc>(C);
      const auto k = class_row_coef<acc>(m, log_s, load_acc(xrow, t), st.a1, wgt(t), W, p.eps, static_cast<acc>(C));
      loss = k.loss;
      A = k.a * scale;
      B1 = k.b_smooth * scale;  // times w_c
      B0 = k.b_target * scale;  // at c == t
    }
    if (lane == 0) {
      p.row_loss[row] = loss;
      if (p.lse) p.lse[row] = lse;
    }
    if (!grow) return;

    // ---- pass 2: gradient from registers, shared memory, then a re-read of the rest (L2)
#pragma unroll
    for (int k = 0; k < REG; ++k) {
      const int v = lane + k * GROUP;
      if (v < nvec) grad_vec(cache[k], grow, gvec, head + v * VN, m, log_s, A, B1, B0, t, qrow, smooth);
    }
    for (int k0 = REG; lane + k0 * GROUP < nvec; k0 += UNROLL) {
      uint4 buf[UNROLL];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int k = k0 + u, v = lane + k * GROUP;
        if (v < nvec) buf[u] = k < smem_end ? smem_cache[(k - REG) * GROUP + lane] : xv[v];
      }
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int v = lane + (k0 + u) * GROUP;
        if (v < nvec) grad_vec(buf[u], grow, gvec, head + v * VN, m, log_s, A, B1, B0, t, qrow, smooth);
      }
    }
    auto scalar_grad = [&](int c) {
      store_acc(grow, c,
                grad_elem(load_acc(xrow, c), c, m, log_s, A, B1, B0, t, PROB ? load_acc(qrow, c) : acc(0), smooth));
    };
    if (lane < head) scalar_grad(lane);
    if (lane < C - tail0) scalar_grad(tail0 + lane);
  }
};

// One warp per row; THREADS/32 rows per block at a time. Rows of up to 32*REG vectors stay in registers.
template <typename scalar_t, typename target_t, bool PROB, int THREADS, int REG>
__global__ void __launch_bounds__(THREADS, 3) ce_warp_rows_kernel(const CEParams<scalar_t> p) {
  using acc = acc_t<scalar_t>;
  RowWorker<scalar_t, target_t, PROB, 32, REG, 4> w{p, static_cast<int>(threadIdx.x & 31), nullptr};
  const int64_t warps = int64_t(gridDim.x) * (THREADS / 32);
  for (int64_t row = int64_t(blockIdx.x) * (THREADS / 32) + threadIdx.x / 32; row < p.rows; row += warps)
    w.run_row(row, static_cast<RowState<acc>*>(nullptr));
}

// One block per row (persistent grid), the row cached in registers and dynamic shared memory.
template <typename scalar_t, typename target_t, bool PROB, int THREADS, int REG, int MINB>
__global__ void __launch_bounds__(THREADS, MINB) ce_block_rows_kernel(const CEParams<scalar_t> p) {
  using acc = acc_t<scalar_t>;
  __shared__ RowState<acc> scratch[THREADS / 32 + 1];
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  RowWorker<scalar_t, target_t, PROB, THREADS, REG, 8> w{p, static_cast<int>(threadIdx.x),
                                                         reinterpret_cast<uint4*>(dyn_smem)};
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) w.run_row(row, scratch);
}

// K-D inputs: one thread per (n, s) row, classes strided by inner. Loads coalesce across threads.
template <typename scalar_t, typename target_t, bool PROB>
__global__ void __launch_bounds__(256) ce_strided_kernel(const CEParams<scalar_t> p) {
  using acc = acc_t<scalar_t>;
  const int64_t C = p.C, D = p.inner;
  const acc invC = acc(1) / static_cast<acc>(C);
  const bool smooth = !PROB && p.eps != acc(0);
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < p.rows;
       row += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = row / D, s = row % D;
    const scalar_t* xb = p.x + n * C * D + s;
    const scalar_t* qb = PROB ? static_cast<const scalar_t*>(p.target) + n * C * D + s : nullptr;
    scalar_t* gb = p.grad ? p.grad + n * C * D + s : nullptr;
    int64_t t = 0;
    if (!PROB) {
      t = static_cast<int64_t>(static_cast<const target_t*>(p.target)[row]);
      if (t == p.ignore_index || t < 0 || t >= C) {
        const acc fill = t == p.ignore_index ? acc(0) : std::numeric_limits<acc>::quiet_NaN();
        p.row_loss[row] = fill;
        if (p.lse) p.lse[row] = fill;
        if (gb)
          for (int64_t c = 0; c < C; ++c) store_acc(gb, c * D, fill);
        continue;
      }
    }
    RowState<acc> st{-std::numeric_limits<acc>::infinity(), acc(0), acc(0), acc(0)};
    for (int64_t c = 0; c < C; ++c) {
      acc v[1] = {load_acc(xb, c * D)};
      online_update(st, v);
      elem_sums<PROB>(st, v[0], PROB ? load_acc(qb, c * D) : acc(0), p.weight ? p.weight[c] : acc(1), p.eps, invC,
                      smooth);
    }
    const acc m = st.m, log_s = ::log(st.s), lse = m + log_s;
    const acc scale = p.denom ? acc(1) / *p.denom : p.host_scale;
    acc A, B1, B0;
    if (PROB) {
      p.row_loss[row] = prob_row_loss<acc>(m, log_s, st.a1, st.a2, C);
      A = st.a1 * scale;
      B1 = (acc(1) - p.eps) * scale;
      B0 = p.eps * invC * scale;
    } else {
      const acc W = p.wsum ? *p.wsum : static_cast<acc>(C);
      const auto k = class_row_coef<acc>(m, log_s, load_acc(xb, t * D), st.a1, p.weight ? p.weight[t] : acc(1), W,
                                         p.eps, static_cast<acc>(C));
      p.row_loss[row] = k.loss;
      A = k.a * scale;
      B1 = k.b_smooth * scale;
      B0 = k.b_target * scale;
    }
    if (p.lse) p.lse[row] = lse;
    if (!gb) continue;
    for (int64_t c = 0; c < C; ++c) {
      const acc wc = p.weight ? p.weight[c] : acc(1);
      acc g = fast_exp((load_acc(xb, c * D) - m) - log_s) * A;
      if (PROB) {
        g -= wc * (load_acc(qb, c * D) * B1 + B0);
      } else {
        if (smooth) g -= B1 * wc;
        if (c == t) g -= B0;
      }
      store_acc(gb, c * D, g);
    }
  }
}

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

bool capturing() {
  return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
}

// Raises (IndexError) for the first invalid class target. One device-to-host read: skipped inside
// CUDA graph capture and when turned off; the kernels never index out of bounds either way.
template <typename target_t>
void check_targets(const Tensor& first_bad, const Tensor& target, int64_t C, int64_t ignore_index, const char* op) {
  if (!option(Option::ValidateTargets) || capturing()) return;
  const auto pos = static_cast<int64_t>(first_bad.item<int64_t>());
  if (pos == std::numeric_limits<int64_t>::max()) return;
  const auto value = target.reshape({-1})[pos].item<int64_t>();
  TORCH_CHECK_INDEX(false, op, ": Target ", value, " is out of bounds: expected a class in [0, ", C,
                    ") or ignore_index=", ignore_index, " (at flat target position ", pos, ")");
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

template <typename scalar_t, typename target_t, bool PROB>
void launch_ce(const CEParams<scalar_t>& p0, int device, cudaStream_t stream) {
  CEParams<scalar_t> p = p0;
  if (p.rows == 0) return;
  const DeviceInfo info = device_info(device);
  if (p.inner != 1) {
    const int blocks = static_cast<int>(std::min<int64_t>((p.rows + 255) / 256, int64_t(info.sm_count) * 16));
    ce_strided_kernel<scalar_t, target_t, PROB><<<blocks, 256, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  constexpr int VN = Pack<scalar_t>::N;
  const int64_t nvec = (p.C + VN - 1) / VN;
  int config = static_cast<int>(option(Option::CeConfig));
  if (config < 0) config = nvec <= 32 * 4 ? 0 : (nvec <= 256 * 8 ? 1 : 2);
  if (config == 0) {
    constexpr int T = 256;
    const int blocks = static_cast<int>(std::min<int64_t>((p.rows + T / 32 - 1) / (T / 32), int64_t(info.sm_count) * 32));
    p.smem_vecs = 0;
    ce_warp_rows_kernel<scalar_t, target_t, PROB, T, 4><<<blocks, T, 0, stream>>>(p);
  } else {
    auto launch_block = [&](auto kernel, int T, int REG, int per_sm) {
      int64_t want = std::max<int64_t>(0, (nvec + T - 1) / T - REG);
      const int64_t fit = std::max<int64_t>(0, (info.smem_optin - 1024) / (int64_t(T) * 16));
      int64_t smem_vecs = std::min(want, fit);
      const int64_t cap = option(Option::CeSmemVecs);
      if (cap >= 0) smem_vecs = std::min(smem_vecs, cap);
      p.smem_vecs = static_cast<int>(smem_vecs);
      const int bytes = static_cast<int>(smem_vecs * T * 16);
      if (bytes > 48 * 1024)
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
      const int blocks = static_cast<int>(std::min<int64_t>(p.rows, int64_t(info.sm_count) * per_sm));
      kernel<<<blocks, T, bytes, stream>>>(p);
    };
    // Few vectors in registers (more spill at these block sizes); shared memory holds the bulk:
    // up to ~220 KB of a row per SM, so a 128K-class bf16 row is read from DRAM once.
    if (config == 1)
      launch_block(ce_block_rows_kernel<scalar_t, target_t, PROB, 256, 4, 2>, 256, 4, 4);
    else
      launch_block(ce_block_rows_kernel<scalar_t, target_t, PROB, 512, 4, 1>, 512, 4, 1);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  TORCH_CHECK(!rows_path || pl.classes < (int64_t(1) << 31) - 64, op,
              ": CUDA rows of more than 2^31 - 64 classes are not supported (got ", pl.classes, ")");
  // A 2-D input whose rows are contiguous is read in place whatever its row stride.
  Tensor x = (rows_path && input.dim() == 2 && input.stride(1) == 1) ? input : input.contiguous();
  const int64_t x_row_stride = (rows_path && input.dim() == 2) ? x.stride(0) : pl.classes;
  Tensor tgt = pl.prob_target ? target.to(dtype).contiguous() : target.contiguous();
  Tensor w = (weight.has_value() && weight->defined()) ? weight->to(adt).contiguous() : Tensor();
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
      p.denom = mean ? denom.template const_data_ptr<acc>() : nullptr;
      p.host_scale = acc(1);
      launch_ce<scalar_t, target_t, false>(p, device, stream);
      Tensor loss = finish_loss<acc>(row_loss, pl.reduction, denom.template const_data_ptr<acc>(), acc(1),
                                     out_dtype.value_or(dtype), pl.row_shape, stream);
      check_targets<target_t>(first_bad, tgt, pl.classes, ignore_index, op);
      return std::make_tuple(loss, grad, lse);
    };
    return tgt.scalar_type() == at::kByte ? run(uint8_t{}) : run(int64_t{});
  });
}

// ---------------------------------------------------------------------------------------------
template <typename acc>
struct RowFactor {
  const acc* p;
  bool single;
  __device__ __forceinline__ acc operator()(int64_t r) const { return single ? p[0] : p[r]; }
};

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
  const int64_t C = input.dim() == 1 ? input.size(0) : input.size(1);
  const int64_t outer = input.dim() == 1 ? 1 : input.size(0);
  const int64_t D = C == 0 || outer == 0 ? 1 : input.numel() / (outer * C);
  Tensor g = grad_loss.to(adt).contiguous();
  Tensor w = (weight.has_value() && weight->defined()) ? weight->to(adt).contiguous() : Tensor();
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

template <typename scalar_t, typename target_t>
__global__ void nll_backward_kernel(const target_t* target, const acc_t<scalar_t>* w, RowFactor<acc_t<scalar_t>> f,
                                    const acc_t<scalar_t>* total_weight, bool mean, int64_t numel, int64_t C,
                                    int64_t D, int64_t ignore_index, scalar_t* out) {
  using acc = acc_t<scalar_t>;
  const acc scale = mean ? acc(1) / *total_weight : acc(1);
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < numel; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t s = e % D, nc = e / D, c = nc % C, n = nc / C, r = n * D + s;
    const int64_t t = static_cast<int64_t>(target[r]);
    acc v = acc(0);
    if (c == t && t != ignore_index) v = -(w ? w[t] : acc(1)) * f(r) * scale;
    store_acc(out, e, v);
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
  Tensor w = (weight.has_value() && weight->defined()) ? weight->to(adt).contiguous() : Tensor();
  Tensor row_loss = at::empty({pl.rows()}, input.options().dtype(adt));
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_nll_loss_cuda", [&] {
    using acc = acc_t<scalar_t>;
    const acc* wp = w.defined() ? w.const_data_ptr<acc>() : nullptr;
    auto run = [&](auto tag) {
      using target_t = decltype(tag);
      auto [denom, first_bad] = class_target_pass<acc, target_t>(tgt, wp, ignore_index, pl.classes, stream);
      if (pl.rows() > 0) {
        nll_forward_kernel<scalar_t, target_t><<<grid_for(pl.rows(), 256, input.get_device()), 256, 0, stream>>>(
            x.const_data_ptr<scalar_t>(), tgt.const_data_ptr<target_t>(), wp, pl.rows(), pl.classes,
            std::max<int64_t>(pl.inner, 1), ignore_index, row_loss.mutable_data_ptr<acc>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      Tensor loss = finish_loss<acc>(row_loss, pl.reduction, denom.template const_data_ptr<acc>(), acc(1),
                                     out_dtype.value_or(dtype), pl.row_shape, stream);
      check_targets<target_t>(first_bad, tgt, pl.classes, ignore_index, op);
      return std::make_tuple(loss, denom);
    };
    return tgt.scalar_type() == at::kByte ? run(uint8_t{}) : run(int64_t{});
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
  const int64_t C = input.dim() == 1 ? input.size(0) : input.size(1);
  const int64_t D = input.dim() <= 2 ? 1 : input.numel() / std::max<int64_t>(1, input.size(0) * C);
  Tensor tgt = target.contiguous();
  Tensor g = grad_loss.to(adt).contiguous();
  Tensor w = (weight.has_value() && weight->defined()) ? weight->to(adt).contiguous() : Tensor();
  Tensor tw = total_weight.to(adt);
  Tensor out = at::empty(input.sizes(), input.options());
  if (input.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_nll_loss_bwd_cuda", [&] {
    using acc = acc_t<scalar_t>;
    auto run = [&](auto tag) {
      using target_t = decltype(tag);
      nll_backward_kernel<scalar_t, target_t><<<grid_for(input.numel(), 256, input.get_device()), 256, 0, stream>>>(
          tgt.const_data_ptr<target_t>(), w.defined() ? w.const_data_ptr<acc>() : nullptr,
          RowFactor<acc>{g.const_data_ptr<acc>(), g.numel() == 1}, tw.const_data_ptr<acc>(), red == Reduction::Mean,
          input.numel(), C, std::max<int64_t>(D, 1), ignore_index, out.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (tgt.scalar_type() == at::kByte)
      run(uint8_t{});
    else
      run(int64_t{});
  });
  return out;
}

}  // namespace

}  // namespace cuda

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  m.impl("cross_entropy", &cuda::cross_entropy_cuda);
  m.impl("cross_entropy_target_backward", &cuda::cross_entropy_target_backward_cuda);
  m.impl("nll_loss", &cuda::nll_loss_cuda);
  m.impl("nll_loss_backward", &cuda::nll_loss_backward_cuda);
}

}  // namespace fastloss
