// The cross_entropy row kernels (see cross_entropy.cu for what they compute and move), as templates.
// Included by one translation unit per dtype (cross_entropy_<dtype>.cu), which instantiates
// launch_ce for that dtype, so the heaviest compile spreads over as many cores as there are.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <cooperative_groups.h>

#include <limits>

#include "common/cuda/block_reduce.cuh"
#include "common/options.h"
#include "cuda/cross_entropy_launch.cuh"
#include "ops/cross_entropy.h"

namespace fastloss {
namespace cuda {
namespace ce {

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

// combine() as the op of warp_allreduce / block_allreduce (common/cuda/block_reduce.cuh): symmetric up
// to commutative float ops (a + b == b + a bitwise), so the xor butterfly leaves identical bits in every lane.
struct Combine {
  template <typename acc>
  __device__ __forceinline__ RowState<acc> operator()(RowState<acc> x, const RowState<acc>& y) const {
    combine(x, y);
    return x;
  }
};

// The state combine() leaves unchanged.
template <typename acc>
__device__ __forceinline__ RowState<acc> empty_state() {
  return RowState<acc>{-std::numeric_limits<acc>::infinity(), acc(0), acc(0), acc(0)};
}

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
// first 16-byte boundary), nvec full vectors and a tail. In-row indices are 32-bit (C < 2^31 - 64 is
// checked on the host); row offsets are 64-bit. No 32-bit index can wrap: the vector loops count
// vectors (nvec <= C / 2, stepping at most UNROLL * GROUP <= 4096 past it), element indices are formed
// only for vectors below nvec (<= C), head and tail indices stay below C; the one loop over single
// classes (the fill of an ignored row) counts in 64 bits.
// SPLIT > 1: a cluster of SPLIT blocks (on different SMs) shares each row, block `rank` taking a
// contiguous share of its vectors; the blocks' partial states meet through distributed shared
// memory (xchg), so each SM keeps only its share of a row on chip and holds two rows' shares at once.
template <typename scalar_t, typename target_t, bool PROB, int GROUP, int REG, int UNROLL, int SPLIT = 1>
struct RowWorker {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t>;
  static constexpr int VN = P::N;

  const CEParams<scalar_t>& p;
  const int lane;
  uint4* smem_cache;  // [smem_vecs][GROUP], nullable
  int rank = 0;                     // block rank in the cluster (SPLIT > 1)
  RowState<acc>* xchg = nullptr;    // this block's partial state, read by the cluster (SPLIT > 1)

  __device__ __forceinline__ acc wgt(int c) const { return p.weight ? p.weight[c] : acc(1); }

  // VN class weights from c0: 16-byte loads when the address allows (it does for aligned rows).
  __device__ __forceinline__ void wgt_vec(int c0, acc (&w)[VN]) const {
    const acc* wp = p.weight + c0;
    constexpr int PER = 16 / sizeof(acc);
    if (VN % PER == 0 && aligned16(wp)) {
#pragma unroll
      for (int j = 0; j < VN; j += PER) Pack<acc>::unpack(*reinterpret_cast<const uint4*>(wp + j), w + j);
    } else {
#pragma unroll
      for (int j = 0; j < VN; ++j) w[j] = wp[j];
    }
  }

  __device__ __forceinline__ void pass1_vec(RowState<acc>& st, const uint4& raw, const scalar_t* qrow, bool qvec,
                                            int c0, bool smooth, acc invC) const {
    acc v[VN];
    P::unpack(raw, v);
    online_update(st, v);
    if (PROB || smooth) {
      acc w[VN];
      if (p.weight) {
        wgt_vec(c0, w);
      } else {
#pragma unroll
        for (int j = 0; j < VN; ++j) w[j] = acc(1);
      }
      if (PROB) {
        acc q[VN];
        if (qvec) {
          P::unpack(*reinterpret_cast<const uint4*>(qrow + c0), q);
        } else {
#pragma unroll
          for (int j = 0; j < VN; ++j) q[j] = load_acc(qrow, c0 + j);
        }
#pragma unroll
        for (int j = 0; j < VN; ++j) elem_sums<true>(st, v[j], q[j], w[j], p.eps, invC, smooth);
      } else {
#pragma unroll
        for (int j = 0; j < VN; ++j) elem_sums<false>(st, v[j], acc(0), w[j], p.eps, invC, smooth);
      }
    }
  }

  __device__ __forceinline__ void pass1_scalar(RowState<acc>& st, const scalar_t* xrow, const scalar_t* qrow, int c,
                                               bool smooth, acc invC) const {
    acc v[1] = {load_acc(xrow, c)};
    online_update(st, v);
    elem_sums<PROB>(st, v[0], PROB ? load_acc(qrow, c) : acc(0), wgt(c), p.eps, invC, smooth);
  }

  // Gradient of one element, without the target term: p_c A - (class) B1 w_c, or (prob)
  // p_c A - w_c (B1 q_c + B0). p_c = exp((x - m) - log_s) = 2^((x - m) log2e - log2_s).
  __device__ __forceinline__ acc grad_elem(acc x, acc w, acc m, acc log2_s, acc A, acc B1, acc B0, acc q,
                                           bool smooth) const {
    const acc pr = fast_exp2((x - m) * acc(1.4426950408889634) - log2_s) * A;
    if (PROB) return pr - w * (q * B1 + B0);
    return smooth ? pr - B1 * w : pr;
  }

  __device__ __forceinline__ void grad_vec(const uint4& raw, scalar_t* grow, bool gvec, int c0, acc m, acc log2_s,
                                           acc A, acc B1, acc B0, int t, const scalar_t* qrow, bool smooth) const {
    acc v[VN], w[VN];
    P::unpack(raw, v);
    if (p.weight && (PROB || smooth)) {
      wgt_vec(c0, w);
    } else {
#pragma unroll
      for (int j = 0; j < VN; ++j) w[j] = acc(1);
    }
#pragma unroll
    for (int j = 0; j < VN; ++j)
      v[j] = grad_elem(v[j], w[j], m, log2_s, A, B1, B0, PROB ? load_acc(qrow, c0 + j) : acc(0), smooth);
    if (!PROB && static_cast<unsigned>(t - c0) < static_cast<unsigned>(VN)) {  // the target is in this vector
#pragma unroll
      for (int j = 0; j < VN; ++j)
        if (j == t - c0) v[j] -= B0;
    }
    if (gvec) {
      const uint4 o = P::pack(v);
      __stcs(reinterpret_cast<int4*>(grow + c0), make_int4(o.x, o.y, o.z, o.w));
    } else {
#pragma unroll
      for (int j = 0; j < VN; ++j) store_acc(grow, c0 + j, v[j]);
    }
  }

  // Reduce the group's states; every thread of the group ends with the total.
  // (GROUP > 32: the whole block, lane == threadIdx.x.)
  __device__ __forceinline__ RowState<acc> reduce(RowState<acc> st, RowState<acc>* scratch) const {
    if constexpr (GROUP == 32)
      return warp_allreduce(st, Combine{});
    else
      return block_allreduce<GROUP>(st, scratch, empty_state<acc>(), Combine{});
  }

  // Every block of the cluster ends with combine(state of rank 0, state of rank 1, ...), in rank
  // order: bitwise the same everywhere.
  __device__ __forceinline__ RowState<acc> cluster_combine(RowState<acc> st) const {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    namespace cg = cooperative_groups;
    cg::cluster_group cluster = cg::this_cluster();
    if (lane == 0) *xchg = st;
    cluster.sync();
    RowState<acc> total = *cluster.map_shared_rank(xchg, 0);
#pragma unroll
    for (int r = 1; r < SPLIT; ++r) combine(total, *cluster.map_shared_rank(xchg, r));
    cluster.sync();  // every block has read every xchg before the next row overwrites it
    return total;
#else
    return st;
#endif
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
        if (lane == 0 && rank == 0) {
          p.row_loss[row] = fill;
          if (p.lse) p.lse[row] = fill;
        }
        // c counts in 64 bits: C may be 2^31 - 65 (check_row_length_32bit), and c + GROUP * SPLIT (up
        // to 1024) past the last class would wrap an int.
        if (grow)
          for (int64_t c = rank * GROUP + lane; c < C; c += GROUP * SPLIT) store_acc(grow, c, fill);
        return;
      }
      t = static_cast<int>(t64);
    }
    const acc invC = acc(1) / static_cast<acc>(C);
    const bool smooth = !PROB && p.eps != acc(0);

    const int misalign = static_cast<int>(reinterpret_cast<uintptr_t>(xrow) & 15) / static_cast<int>(sizeof(scalar_t));
    const int head = min(C, misalign == 0 ? 0 : VN - misalign);
    const int nvec_row = (C - head) / VN;
    const int tail0 = head + nvec_row * VN;
    // This block's vectors: [vb, vb + nvec) of the row (all of them unless SPLIT > 1).
    int vb = 0, nvec = nvec_row;
    if (SPLIT > 1) {
      const int per = (nvec_row + SPLIT - 1) / SPLIT;
      vb = min(nvec_row, rank * per);
      nvec = min(nvec_row, vb + per) - vb;
    }
    const bool mine_head = rank == 0, mine_tail = rank == SPLIT - 1;
    const uint4* xv = reinterpret_cast<const uint4*>(xrow + head) + vb;
    const int e0 = head + vb * VN;  // element index of this block's first vector
    const bool gvec = grow && (((reinterpret_cast<uintptr_t>(grow) ^ reinterpret_cast<uintptr_t>(xrow)) & 15) == 0);
    const bool qvec = PROB && (((reinterpret_cast<uintptr_t>(qrow) ^ reinterpret_cast<uintptr_t>(xrow)) & 15) == 0);
    const int smem_end = REG + p.smem_vecs;  // vector slots k < smem_end are on chip

    RowState<acc> st{-std::numeric_limits<acc>::infinity(), acc(0), acc(0), acc(0)};
    // ---- pass 1. Every load of the row is issued before any is used: the register slots, then
    // the shared-memory slots as asynchronous copies (cp.async: global -> shared, no registers), so
    // up to the whole row is in flight at once; then the register slots are processed, the rest of
    // the row streams through UNROLL loads in flight, and the shared-memory slots are processed once
    // their copies land. Each thread only ever reads back its own slots: no barrier is needed.
    uint4 cache[REG];
#pragma unroll
    for (int k = 0; k < REG; ++k) {
      const int v = lane + k * GROUP;
      if (v < nvec) cache[k] = xv[v];
    }
    for (int k = REG; k < smem_end && lane + k * GROUP < nvec; ++k)
      cp_async16(smem_cache + (k - REG) * GROUP + lane, xv + lane + k * GROUP);
#pragma unroll
    for (int k = 0; k < REG; ++k) {
      const int v = lane + k * GROUP;
      if (v < nvec) pass1_vec(st, cache[k], qrow, qvec, e0 + v * VN, smooth, invC);
    }
    for (int k0 = smem_end; lane + k0 * GROUP < nvec; k0 += UNROLL) {
      uint4 buf[UNROLL];
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int v = lane + (k0 + u) * GROUP;
        if (v < nvec) buf[u] = xv[v];
      }
#pragma unroll
      for (int u = 0; u < UNROLL; ++u) {
        const int v = lane + (k0 + u) * GROUP;
        if (v < nvec) pass1_vec(st, buf[u], qrow, qvec, e0 + v * VN, smooth, invC);
      }
    }
    cp_async_wait_all();
    for (int k = REG; k < smem_end && lane + k * GROUP < nvec; ++k)
      pass1_vec(st, smem_cache[(k - REG) * GROUP + lane], qrow, qvec, e0 + (lane + k * GROUP) * VN, smooth, invC);
    if (mine_head && lane < head) pass1_scalar(st, xrow, qrow, lane, smooth, invC);
    if (mine_tail && lane < C - tail0) pass1_scalar(st, xrow, qrow, tail0 + lane, smooth, invC);

    st = reduce(st, scratch);
    if (SPLIT > 1) st = cluster_combine(st);
    const acc m = st.m, log_s = ::log(st.s), lse = m + log_s, log2_s = ::log2(st.s);
    const acc scale = p.denom ? acc(1) / *p.denom : p.host_scale;
    const auto rg = row_grad<acc>(PROB, m, log_s, st.a1, st.a2, PROB ? acc(0) : load_acc(xrow, t),
                                  PROB ? acc(1) : wgt(t), p.wsum ? *p.wsum : static_cast<acc>(C), p.eps, C, scale);
    const acc loss = rg.loss, A = rg.A, B1 = rg.B1, B0 = rg.B0;
    if (lane == 0 && rank == 0) {
      p.row_loss[row] = loss;
      if (p.lse) p.lse[row] = lse;
    }
    if (!grow) return;

    // ---- pass 2: gradient from registers, shared memory, then a re-read of the rest (L2)
#pragma unroll
    for (int k = 0; k < REG; ++k) {
      const int v = lane + k * GROUP;
      if (v < nvec) grad_vec(cache[k], grow, gvec, e0 + v * VN, m, log2_s, A, B1, B0, t, qrow, smooth);
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
        if (v < nvec) grad_vec(buf[u], grow, gvec, e0 + v * VN, m, log2_s, A, B1, B0, t, qrow, smooth);
      }
    }
    auto scalar_grad = [&](int c) {
      acc g = grad_elem(load_acc(xrow, c), wgt(c), m, log2_s, A, B1, B0, PROB ? load_acc(qrow, c) : acc(0), smooth);
      if (!PROB && c == t) g -= B0;
      store_acc(grow, c, g);
    };
    if (mine_head && lane < head) scalar_grad(lane);
    if (mine_tail && lane < C - tail0) scalar_grad(tail0 + lane);
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
template <typename scalar_t, typename target_t, bool PROB, int THREADS, int REG, int UNROLL, int MINB>
__global__ void __launch_bounds__(THREADS, MINB) ce_block_rows_kernel(const CEParams<scalar_t> p) {
  using acc = acc_t<scalar_t>;
  __shared__ RowState<acc> scratch[THREADS / 32 + 1];
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  RowWorker<scalar_t, target_t, PROB, THREADS, REG, UNROLL> w{p, static_cast<int>(threadIdx.x),
                                                              reinterpret_cast<uint4*>(dyn_smem)};
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) w.run_row(row, scratch);
}

// A cluster of two blocks per row, on two SMs (sm_90): each holds half of the row on chip, so a
// 256 KB row fits with two blocks resident per SM, whose phases then overlap.
template <typename scalar_t, typename target_t, bool PROB, int THREADS, int REG, int UNROLL, int MINB>
__global__ void __launch_bounds__(THREADS, MINB) ce_cluster_rows_kernel(const CEParams<scalar_t> p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  using acc = acc_t<scalar_t>;
  __shared__ RowState<acc> scratch[THREADS / 32 + 1];
  __shared__ RowState<acc> xchg;
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  const int rank = static_cast<int>(cooperative_groups::this_cluster().block_rank());
  RowWorker<scalar_t, target_t, PROB, THREADS, REG, UNROLL, 2> w{p, static_cast<int>(threadIdx.x),
                                                                 reinterpret_cast<uint4*>(dyn_smem), rank, &xchg};
  for (int64_t row = blockIdx.x / 2; row < p.rows; row += gridDim.x / 2) w.run_row(row, scratch);
#else
  __trap();  // never launched below sm_90 (launch_ce falls back)
#endif
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
    const acc m = st.m, log_s = ::log(st.s), lse = m + log_s, log2_s = ::log2(st.s);
    const acc scale = p.denom ? acc(1) / *p.denom : p.host_scale;
    const auto rg = row_grad<acc>(PROB, m, log_s, st.a1, st.a2, PROB ? acc(0) : load_acc(xb, t * D),
                                  (PROB || !p.weight) ? acc(1) : p.weight[t], p.wsum ? *p.wsum : static_cast<acc>(C),
                                  p.eps, C, scale);
    const acc A = rg.A, B1 = rg.B1, B0 = rg.B0;
    p.row_loss[row] = rg.loss;
    if (p.lse) p.lse[row] = lse;
    if (!gb) continue;
    for (int64_t c = 0; c < C; ++c) {
      const acc wc = p.weight ? p.weight[c] : acc(1);
      acc g = fast_exp2((load_acc(xb, c * D) - m) * acc(1.4426950408889634) - log2_s) * A;
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
  // Measured on an H100 (benchmarks/RESULTS.md): a warp per row while a row fits its registers;
  // blocks of 256 threads, two per SM, up to 128 KB rows (the two overlap each other's latency);
  // beyond, one block of 1024 threads per SM holding up to ~220 KB of the row in shared memory.
  if (config < 0) config = nvec <= 32 * 4 ? 0 : (nvec <= 8192 ? 1 : 2);
  if (config == 0) {
    constexpr int T = 256;
    const int blocks =
        static_cast<int>(std::min<int64_t>((p.rows + T / 32 - 1) / (T / 32), int64_t(info.sm_count) * 32));
    p.smem_vecs = 0;
    ce_warp_rows_kernel<scalar_t, target_t, PROB, T, 4><<<blocks, T, 0, stream>>>(p);
  } else {
    // per_sm blocks share the SM's shared memory; each caches what fits of its row there.
    auto launch_block = [&](auto kernel, int T, int REG, int per_sm) {
      const int64_t want = std::max<int64_t>(0, (nvec + T - 1) / T - REG);
      const int64_t budget = std::min<int64_t>(info.smem_optin, info.smem_per_sm / per_sm - 1024) - 1024;
      int64_t smem_vecs = std::min(want, std::max<int64_t>(0, budget / (int64_t(T) * 16)));
      const int64_t cap = option(Option::CeSmemVecs);
      if (cap >= 0) smem_vecs = std::min(smem_vecs, cap);
      p.smem_vecs = static_cast<int>(smem_vecs);
      const int bytes = static_cast<int>(smem_vecs * T * 16);
      if (bytes > 0)  // static + dynamic above 48 KB needs the opt-in; setting it is cheap
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
      const int blocks = static_cast<int>(std::min<int64_t>(p.rows, int64_t(info.sm_count) * per_sm));
      kernel<<<blocks, T, bytes, stream>>>(p);
    };
    // Few vectors in registers (more spill at these block sizes); shared memory holds the bulk.
    // (Also measured and dropped: 512 threads x 1 or 2 blocks per SM -- slower on every shape.)
    if (config == 3 && info.major < 9) config = 2;  // clusters need sm_90
    if (config == 1) {
      launch_block(ce_block_rows_kernel<scalar_t, target_t, PROB, 256, 4, 8, 2>, 256, 4, 2);
    } else if (config == 2) {
      launch_block(ce_block_rows_kernel<scalar_t, target_t, PROB, 1024, 2, 4, 1>, 1024, 2, 1);
    } else {
      // 2-block clusters of 512 threads, two blocks per SM, each caching its half row.
      constexpr int T = 512, REG = 2;
      auto kernel = ce_cluster_rows_kernel<scalar_t, target_t, PROB, T, REG, 4, 2>;
      const int64_t half = (nvec + 1) / 2;
      const int64_t want = std::max<int64_t>(0, (half + T - 1) / T - REG);
      const int64_t budget = std::min<int64_t>(info.smem_optin, info.smem_per_sm / 2 - 1024) - 1024;
      int64_t smem_vecs = std::min(want, std::max<int64_t>(0, budget / (int64_t(T) * 16)));
      const int64_t cap = option(Option::CeSmemVecs);
      if (cap >= 0) smem_vecs = std::min(smem_vecs, cap);
      p.smem_vecs = static_cast<int>(smem_vecs);
      const int bytes = static_cast<int>(smem_vecs * T * 16);
      if (bytes > 0) C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
      cudaLaunchConfig_t cfg = {};
      cfg.gridDim = dim3(static_cast<unsigned>(2 * std::min<int64_t>(p.rows, info.sm_count)));
      cfg.blockDim = dim3(T);
      cfg.dynamicSmemBytes = bytes;
      cfg.stream = stream;
      cudaLaunchAttribute attr[1];
      attr[0].id = cudaLaunchAttributeClusterDimension;
      attr[0].val.clusterDim.x = 2;
      attr[0].val.clusterDim.y = 1;
      attr[0].val.clusterDim.z = 1;
      cfg.attrs = attr;
      cfg.numAttrs = 1;
      C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, p));
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace ce
}  // namespace cuda
}  // namespace fastloss

// Explicit instantiations of every launch_ce a dtype needs (class targets int64/uint8, probabilities).
#define FASTLOSS_CE_INSTANTIATE(T)                                                                       \
  template void fastloss::cuda::ce::launch_ce<T, int64_t, false>(const CEParams<T>&, int, cudaStream_t); \
  template void fastloss::cuda::ce::launch_ce<T, uint8_t, false>(const CEParams<T>&, int, cudaStream_t); \
  template void fastloss::cuda::ce::launch_ce<T, int64_t, true>(const CEParams<T>&, int, cudaStream_t);
