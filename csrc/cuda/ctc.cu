// CUDA kernels of ctc_loss (schema and plan in ops/ctc.cpp, conventions in ops/ctc.h).
//
// 1. ctc_recursion_kernel, grid (N, 1 or 3): block (n, 0) runs the alpha recursion of sample n over all
//    its time steps in one launch (one state per thread, K states per thread for long targets; the
//    previous row in shared memory, one barrier per step) and writes nll[n]; with the gradient wanted,
//    block (n, 1) runs the beta recursion backward in time at the same time, and both store their rows
//    (N, T, 2S+1) for step 2, and block (n, 2) links the states of repeated labels. The log_probs
//    each state needs (its label's column) are loaded kPrefetch steps ahead so the global-load
//    latency leaves the sequential chain.
// 2. ctc_grad_kernel, one block per (t, n) row: writes exp(lp[t, n, :]) * f for every class, then
//    overwrites the target's classes with (exp(lp) - sum of occupancies) * f. Occupancies of one label
//    are summed by the one thread that owns its first state, along a precomputed chain of its
//    repeats; the blank's by a fixed-order block reduction. No atomics: bitwise deterministic. The
//    blocks stride over the rows: T * N may pass gridDim.x's limit of 2^31 - 1 (the launch caps the
//    grid there instead of truncating T * N to 32 bits).
// 3. ctc_loss_out_kernel: the per-sample losses to the output (none), or their mean/sum in a fixed order.
// Moves: log_probs gathered by label in step 1 (2S+1 values per t and sample, twice), read once more
// and the gradient written once in step 2, plus the alpha/beta rows (8 * T * (2S+1) bytes per sample
// in float32) written once and read once.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "common/cuda/block_reduce.cuh"
#include "common/cuda/device_errors.cuh"
#include "common/errors.h"
#include "ops/ctc.h"

namespace fastloss {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kPrefetch = 4;
constexpr int kGradThreads = 128;
// link[n][s] chains the states of one label: the next state with the same label (-1: none). A state
// whose label already occurred (and every blank) stores -(next + 3) instead, so only a chain's head
// reads >= -1 and its owner sums the chain.
__host__ __device__ __forceinline__ int32_t encode_link(bool head, int32_t next) { return head ? next : -(next + 3); }
__host__ __device__ __forceinline__ int32_t link_next(int32_t v) { return v >= -1 ? v : -v - 3; }

template <typename acc>
__device__ __forceinline__ acc ninf() {
  return -std::numeric_limits<acc>::infinity();
}

struct Sample {
  int64_t Tn, L, off;
};

// A bad label's error record: its value, and the sample and label index it sits at (the plan's
// target lengths and offsets are on the device in meta).
template <typename target_t>
struct CtcLabelValue {
  const target_t* targets;
  const int64_t* meta;
  int64_t N;
  __device__ void operator()(int64_t pos, DeviceErrorRecord& r) const {
    r.pos = pos;
    r.value = static_cast<int64_t>(targets[pos]);
    r.p[2] = -1;
    for (int64_t n = 0; n < N; ++n)
      if (pos >= meta[2 * N + n] && pos < meta[2 * N + n] + meta[N + n]) {
        r.p[2] = n;
        r.p[3] = meta[2 * N + n];
        break;
      }
  }
};

__device__ __forceinline__ Sample sample_of(const int64_t* meta, int64_t N, int64_t n) {
  return {meta[n], meta[N + n], meta[2 * N + n]};
}

// Label of state s (blank for even s); an invalid label is recorded in first_bad and read as blank.
template <typename target_t>
__device__ __forceinline__ int64_t label_of(const target_t* tg, const Sample& S, int64_t s, int64_t C, int64_t blank,
                                            unsigned long long* first_bad) {
  if ((s & 1) == 0 || s >= 2 * S.L + 1) return blank;
  const int64_t pos = S.off + (s - 1) / 2;
  const int64_t v = static_cast<int64_t>(tg[pos]);
  if (ctc_label_ok(v, C, blank)) return v;
  if (first_bad) atomicMin(first_bad, static_cast<unsigned long long>(pos));
  return -1;
}

// __launch_bounds__(1024): blocks of up to 1024 threads must fit the register file (64 per thread).
template <typename scalar_t, typename target_t, int K>
__global__ void __launch_bounds__(1024)
    ctc_recursion_kernel(const scalar_t* __restrict__ lp, const target_t* __restrict__ tg,
                         const int64_t* __restrict__ meta, int64_t T, int64_t N, int64_t C, int64_t blank, int64_t W,
                         acc_t<scalar_t>* alpha_tab, acc_t<scalar_t>* beta_tab, double* alpha_off, double* beta_off,
                         int32_t* link, double* nll, unsigned long long* first_bad) {
  using acc = acc_t<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ acc wmax[2][32];  // per-warp maxima of the last two rows
  acc* rows = reinterpret_cast<acc*>(smem_raw);  // 2 rows of W + 2: alpha at [2, 2 + W), beta at [0, W)
  const int64_t n = blockIdx.x;
  const bool backward = blockIdx.y == 1;
  const Sample S = sample_of(meta, N, n);
  const int64_t Sp = 2 * S.L + 1;
  const int64_t R = W + 2;
  if (blockIdx.y == 2) {  // the chains of repeated labels, for the gradient kernel, beside the recursions
    for (int64_t s = threadIdx.x; s < W; s += blockDim.x) {
      int32_t v = encode_link(false, -1);
      if ((s & 1) && s < Sp) {
        const int64_t l = label_of(tg, S, s, C, blank, nullptr);
        bool head = true;
        for (int64_t q = 1; q < s && head; q += 2) head = label_of(tg, S, q, C, blank, nullptr) != l;
        int32_t next = -1;
        for (int64_t q = s + 2; q < Sp && next < 0; q += 2)
          if (label_of(tg, S, q, C, blank, nullptr) == l) next = static_cast<int32_t>(q);
        v = encode_link(head, next);
      }
      link[n * W + s] = v;
    }
    return;
  }
  for (int64_t i = threadIdx.x; i < 2 * R; i += blockDim.x) rows[i] = ninf<acc>();

  // this thread's states, their labels and whether the skip transition is allowed
  int32_t lab[K];  // labels < C < 2^31; 32-bit halves their registers (the 64-register cap of 1024 threads)
  bool skip[K];
  bool bad = false;
#pragma unroll
  for (int j = 0; j < K; ++j) {
    const int64_t s = threadIdx.x + int64_t(j) * blockDim.x;
    const int64_t l = label_of(tg, S, s, C, blank, backward ? nullptr : first_bad);
    bad |= l < 0;
    lab[j] = static_cast<int32_t>(l < 0 ? blank : l);
    skip[j] = false;
    if ((s & 1) && s < Sp) {
      const int64_t other = backward ? s + 2 : s - 2;  // alpha: from s - 2; beta: from s + 2
      if (other >= 1 && other < Sp) {
        const int64_t lo = label_of(tg, S, other, C, blank, nullptr);
        skip[j] = lo != l;
      }
    }
  }
  bad = __syncthreads_or(bad);  // also orders the -inf fill before the first row
  const int64_t Tn = S.Tn;
  if (Tn == 0 || bad) {
    if (!backward && threadIdx.x == 0)
      nll[n] =
          bad ? std::numeric_limits<double>::quiet_NaN() : (S.L == 0 ? -0.0 : std::numeric_limits<double>::infinity());
    return;
  }
  acc* tab = backward ? beta_tab : alpha_tab;
  double* offs = backward ? beta_off : alpha_off;
  // Rows are kept relative to the previous row's maximum and the offsets summed in double (thread 0):
  // float32 then rounds at the size of a row's spread (~|log_probs|), not at |alpha| ~ T log C. The
  // maximum of row t costs no extra barrier: each warp leaves its maximum in wmax[t & 1] before the
  // step's barrier, and every thread combines them at step t + 1.
  const int warps = blockDim.x / 32, lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  auto publish_max = [&](acc m, int64_t t) {
    m = warp_allreduce(m, [](acc x, acc y) { return y > x ? y : x; });
    if (lane == 0) wmax[t & 1][warp] = m;
  };
  auto row_max = [&](int64_t t) {  // the shift of row t: its maximum, 0 when not finite
    acc m = ninf<acc>();
    for (int w = 0; w < warps; ++w) m = wmax[t & 1][w] > m ? wmax[t & 1][w] : m;
    return isfinite(m) ? m : acc(0);
  };
  double O = 0;  // (thread 0) offset of the current row: true value = stored value + O
  const int64_t stride_t = N * C;
  auto lp_at = [&](int64_t t, int64_t l) -> acc { return load_acc(lp, t * stride_t + n * C + l); };
  auto store = [&](int64_t t, int64_t s, acc v) {
    if (tab) tab[(n * T + t) * W + s] = v;
  };
  const int base = backward ? 0 : 2;  // where state 0 sits in a row

  // first step: t = 0 (alpha) or t = Tn - 1 (beta)
  const int64_t t_first = backward ? Tn - 1 : 0;
  acc* cur = rows + (t_first & 1) * R;
  acc mine = ninf<acc>();
#pragma unroll
  for (int j = 0; j < K; ++j) {
    const int64_t s = threadIdx.x + int64_t(j) * blockDim.x;
    if (s >= Sp) continue;
    const bool start = backward ? (s == Sp - 1 || (S.L > 0 && s == Sp - 2)) : (s == 0 || (S.L > 0 && s == 1));
    const acc v = start ? lp_at(t_first, lab[j]) : ninf<acc>();
    cur[base + s] = v;
    store(t_first, s, v);
    mine = v > mine ? v : mine;
  }
  publish_max(mine, t_first);
  if (offs && threadIdx.x == 0) offs[n * T + t_first] = 0;

  // the remaining Tn - 1 steps, label columns prefetched kPrefetch steps ahead
  acc pre[kPrefetch][K];
  const int64_t dir = backward ? -1 : 1;
#pragma unroll
  for (int d = 0; d < kPrefetch; ++d)
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const int64_t s = threadIdx.x + int64_t(j) * blockDim.x;
      const int64_t k = 1 + d;  // step index (1 .. Tn - 1)
      pre[d][j] = (s < Sp && k < Tn) ? lp_at(t_first + dir * k, lab[j]) : acc(0);
    }
  __syncthreads();
  for (int64_t k0 = 1; k0 < Tn; k0 += kPrefetch) {
#pragma unroll
    for (int d = 0; d < kPrefetch; ++d) {
      const int64_t k = k0 + d;
      if (k >= Tn) break;  // uniform over the block
      const int64_t t = t_first + dir * k;
      const acc* prev = rows + ((t - dir) & 1) * R;
      acc* out = rows + (t & 1) * R;
      const acc shift = row_max(t - dir);
      acc mine = ninf<acc>();
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int64_t s = threadIdx.x + int64_t(j) * blockDim.x;
        if (s >= Sp) continue;
        acc v;
        if (backward)
          v = ctc_lse3(prev[s], prev[s + 1], skip[j] ? prev[s + 2] : ninf<acc>());
        else
          v = ctc_lse3(prev[s + 2], prev[s + 1], skip[j] ? prev[s] : ninf<acc>());
        v = (v - shift) + pre[d][j];
        out[base + s] = v;
        store(t, s, v);
        mine = v > mine ? v : mine;
        const int64_t kn = k + kPrefetch;
        if (kn < Tn) pre[d][j] = lp_at(t_first + dir * kn, lab[j]);
      }
      publish_max(mine, t);
      if (threadIdx.x == 0) {
        O += static_cast<double>(shift);
        if (offs) offs[n * T + t] = O;
      }
      __syncthreads();
    }
  }
  if (!backward && threadIdx.x == 0) {
    const acc* last = rows + ((Tn - 1) & 1) * R + 2;
    const acc r = S.L == 0 ? last[0] : ctc_lse2(last[Sp - 1], last[Sp - 2]);
    nll[n] = -(O + static_cast<double>(r));
  }
}

template <typename scalar_t, typename target_t>
__global__ void __launch_bounds__(kGradThreads)
    ctc_grad_kernel(const scalar_t* __restrict__ lp, const target_t* __restrict__ tg, const int64_t* __restrict__ meta,
                    int64_t N, int64_t C, int64_t blank, int64_t W, const acc_t<scalar_t>* __restrict__ alpha_tab,
                    const acc_t<scalar_t>* __restrict__ beta_tab, const double* __restrict__ alpha_off,
                    const double* __restrict__ beta_off, const int32_t* __restrict__ link,
                    const double* __restrict__ nll, int64_t T, bool mean, bool zero_infinity,
                    scalar_t* __restrict__ grad) {
  using acc = acc_t<scalar_t>;
  __shared__ acc scratch[kGradThreads / 32 + 1];
  // rows (t, n) of the (T, N, C) layout, block-strided: T * N may pass gridDim.x's 2^31 - 1 (the loop
  // condition is uniform over the block, so the barriers of block_sum stay uniform)
  for (int64_t r = blockIdx.x; r < T * N; r += gridDim.x) {
    const int64_t t = r / N, n = r % N;
    const Sample S = sample_of(meta, N, n);
    const scalar_t* x = lp + r * C;
    scalar_t* g = grad + r * C;
    const double nl = nll[n], inf = std::numeric_limits<double>::infinity();
    if (t >= S.Tn || !(nl < inf)) {  // past the input length; or an impossible alignment / NaN
      // torch's exp(lse + nll - lp) is NaN in every class then (0 with zero_infinity for an inf loss)
      const acc v = (t >= S.Tn || (zero_infinity && nl == inf)) ? acc(0) : std::numeric_limits<acc>::quiet_NaN();
      for (int64_t c = threadIdx.x; c < C; c += kGradThreads) store_acc(g, c, v);
      continue;
    }
    const acc f = static_cast<acc>(ctc_grad_factor(mean, S.L, N));
    for (int64_t c = threadIdx.x; c < C; c += kGradThreads) store_acc(g, c, exp(load_acc(x, c)) * f);

    const int64_t Sp = 2 * S.L + 1;
    const acc* a = alpha_tab + (n * T + t) * W;
    const acc* b = beta_tab + (n * T + t) * W;
    const acc lpb = load_acc(x, blank);
    // alpha + beta + nll: the rows' large offsets cancel in double, leaving a small correction
    const acc corr = static_cast<acc>(alpha_off[n * T + t] + beta_off[n * T + t] + nl);
    auto occ = [&](int64_t s, acc lpl) { return exp(a[s] + b[s] - lpl + corr); };
    acc blank_sum = 0;  // fixed order: thread's states in turn, then the block tree
    for (int64_t s = 2 * threadIdx.x; s < Sp; s += 2 * kGradThreads) blank_sum += occ(s, lpb);
    blank_sum = block_sum<kGradThreads>(blank_sum, scratch);  // its barriers order the row writes above
    for (int64_t s = 2 * threadIdx.x + 1; s < Sp; s += 2 * kGradThreads) {
      const int32_t v = link[n * W + s];
      if (v < -1) continue;  // not the first state of its label
      const int64_t l = static_cast<int64_t>(tg[S.off + (s - 1) / 2]);
      if (!ctc_label_ok(l, C, blank)) continue;  // reported by the recursion kernel; never indexed
      const acc lpl = load_acc(x, l);
      acc sum = occ(s, lpl);
      for (int32_t q = v; q >= 0; q = link_next(link[n * W + q])) sum += occ(q, lpl);
      store_acc(g, l, (exp(lpl) - sum) * f);
    }
    if (threadIdx.x == 0) store_acc(g, blank, (exp(lpb) - blank_sum) * f);
  }
}

// The per-sample losses (zero_infinity applied) to `out`: as they are for reduction none, else their
// sum or mean (each divided by its target length clamped to 1), summed by one thread in sample order.
template <typename scalar_t>
__global__ void ctc_loss_out_kernel(const double* __restrict__ nll, const int64_t* __restrict__ meta, int64_t N,
                                    int reduction, bool zero_infinity, scalar_t* __restrict__ out) {
  using acc = acc_t<scalar_t>;
  auto loss = [&](int64_t n) {
    const double v = nll[n];
    return zero_infinity && v == std::numeric_limits<double>::infinity() ? 0.0 : v;
  };
  if (reduction == static_cast<int>(Reduction::None)) {
    for (int64_t n = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; n < N; n += int64_t(gridDim.x) * blockDim.x)
      store_acc(out, n, static_cast<acc>(loss(n)));
    return;
  }
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  const bool mean = reduction == static_cast<int>(Reduction::Mean);
  double s = 0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t L = meta[N + n];
    s += mean ? loss(n) / ctc_target_norm(L) : loss(n);
  }
  store_acc(out, 0, static_cast<acc>(mean ? s / double(N) : s));
}

// smem: the dynamic shared memory (the two rows). A block's limit applies to it plus the kernel's static
// shared memory (its per-warp maxima, 2 x 32 accumulators, read from the compiled kernel once per
// instantiation): without the opt-in the dynamic part may only reach 48 KB minus the static part, so a
// longest target of 3055-3070 labels (float32 accumulation; 1519-1534 in float64) needed the opt-in
// although its rows alone stayed under 48 KB.
template <typename scalar_t, typename target_t, int K>
void launch_recursion(const CtcPlan& p, const int64_t* meta, int64_t W, int threads, size_t smem, bool grad,
                      acc_t<scalar_t>* alpha, acc_t<scalar_t>* beta, double* aoff, double* boff, int32_t* link,
                      double* nll, unsigned long long* first_bad, cudaStream_t stream) {
  auto kernel = ctc_recursion_kernel<scalar_t, target_t, K>;
  static const size_t static_smem = [kernel] {
    cudaFuncAttributes a{};
    C10_CUDA_CHECK(cudaFuncGetAttributes(&a, kernel));
    return a.sharedSizeBytes;
  }();
  TORCH_CHECK(static_smem + smem <= static_cast<size_t>(device_info(p.log_probs.get_device()).smem_optin),
              "fastloss.ctc_loss: targets of ", num(p.max_target), " labels need more shared memory (",
              num(static_cast<int64_t>(static_smem + smem)), " bytes) than this GPU offers");
  if (static_smem + smem > 48 * 1024)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  const dim3 grid(static_cast<unsigned>(p.N), grad ? 3 : 1);  // y: alpha, beta, label chains
  kernel<<<grid, threads, smem, stream>>>(p.log_probs.const_data_ptr<scalar_t>(), p.targets.const_data_ptr<target_t>(),
                                          meta, p.T, p.N, p.C, p.blank, W, alpha, beta, aoff, boff, link, nll,
                                          first_bad);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<Tensor, Tensor> ctc_loss_cuda(const Tensor& log_probs, const Tensor& targets, const Tensor& input_lengths,
                                         const Tensor& target_lengths, int64_t blank, int64_t reduction,
                                         bool zero_infinity, bool grad_now) {
  const c10::cuda::CUDAGuard guard(log_probs.device());
  // The plan (lengths, offsets, the longest target) is made on the host and copied from a temporary host
  // buffer: a graph would replay that copy from freed memory, and fixed lengths besides. Refused, as torch's
  // CUDA ctc_loss (whose blocking copy fails the capture).
  TORCH_CHECK(!capturing(),
              "fastloss.ctc_loss: CUDA graph capture is not supported (the lengths are "
              "read on the host for each call)");
  const CtcPlan p = plan_ctc(log_probs, targets, input_lengths, target_lengths, blank, reduction, zero_infinity);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto dev = p.log_probs.device();
  const auto adt = acc_dtype(p.log_probs.scalar_type());
  const int64_t W = 2 * p.max_target + 1;  // states per row
  TORCH_CHECK(p.C <= std::numeric_limits<int32_t>::max(),
              "fastloss.ctc_loss: more than 2^31 - 1 classes are not supported on CUDA, got ", num(p.C));
  TORCH_CHECK(p.N <= std::numeric_limits<int32_t>::max(),
              "fastloss.ctc_loss: a batch of more than 2^31 - 1 samples is not supported on CUDA (one block per "
              "sample), got ",
              num(p.N));
  // staged through pinned memory (torch's caching host allocator) so the upload never waits for the GPU
  const Tensor meta = p.meta.pin_memory().to(dev, /*non_blocking=*/true);
  Tensor loss = at::empty(p.reduction == Reduction::None ? std::vector<int64_t>{p.N} : std::vector<int64_t>{},
                          p.log_probs.options());
  Tensor grad = grad_now ? at::empty_like(p.log_probs) : at::empty({0}, p.log_probs.options());
  Tensor nll = at::empty({p.N}, p.log_probs.options().dtype(at::kDouble));
  Tensor alpha, beta, aoff, boff, link;
  if (grad_now) {
    alpha = at::empty({p.N, p.T, W}, nll.options().dtype(adt));
    beta = at::empty({p.N, p.T, W}, nll.options().dtype(adt));
    aoff = at::empty({p.N, p.T}, nll.options());
    boff = at::empty({p.N, p.T}, nll.options());
    link = at::empty({p.N, W}, nll.options().dtype(at::kInt));
  }
  Tensor first_bad;
  if (!p.targets_checked) first_bad = at::full({}, std::numeric_limits<int64_t>::max(), meta.options());

  // K states per thread: the fewest that fit the states of the longest target into 1024 threads
  int K = 1;
  while (K < 8 && W > int64_t(K) * 1024) K *= 2;
  TORCH_CHECK(W <= int64_t(K) * 1024,
              "fastloss.ctc_loss: targets longer than 4095 labels are not supported on CUDA, got ", num(p.max_target));
  const int threads = static_cast<int>(std::min<int64_t>(1024, ((W + K - 1) / K + 31) / 32 * 32));
  // the rows; the capacity check (with the kernel's static shared memory) is in launch_recursion
  const size_t smem = 2 * static_cast<size_t>(W + 2) * (adt == at::kDouble ? 8 : 4);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.log_probs.scalar_type(), "fastloss_ctc_cuda", [&] {
    using acc = acc_t<scalar_t>;
    auto run = [&](auto tag) {
      using target_t = decltype(tag);
      acc* ap = grad_now ? alpha.mutable_data_ptr<acc>() : nullptr;
      acc* bp = grad_now ? beta.mutable_data_ptr<acc>() : nullptr;
      int32_t* lk = grad_now ? link.mutable_data_ptr<int32_t>() : nullptr;
      double* ao = grad_now ? aoff.mutable_data_ptr<double>() : nullptr;
      double* bo = grad_now ? boff.mutable_data_ptr<double>() : nullptr;
      auto* fb =
          first_bad.defined() ? reinterpret_cast<unsigned long long*>(first_bad.mutable_data_ptr<int64_t>()) : nullptr;
      const int64_t* mp = meta.const_data_ptr<int64_t>();
      double* np = nll.mutable_data_ptr<double>();
      switch (K) {
        case 1:
          launch_recursion<scalar_t, target_t, 1>(p, mp, W, threads, smem, grad_now, ap, bp, ao, bo, lk, np, fb,
                                                  stream);
          break;
        case 2:
          launch_recursion<scalar_t, target_t, 2>(p, mp, W, threads, smem, grad_now, ap, bp, ao, bo, lk, np, fb,
                                                  stream);
          break;
        case 4:
          launch_recursion<scalar_t, target_t, 4>(p, mp, W, threads, smem, grad_now, ap, bp, ao, bo, lk, np, fb,
                                                  stream);
          break;
        default:
          launch_recursion<scalar_t, target_t, 8>(p, mp, W, threads, smem, grad_now, ap, bp, ao, bo, lk, np, fb,
                                                  stream);
      }
      if (first_bad.defined())  // the recursion kernel recorded bad labels (and gave their samples NaN)
        report_device_error(first_bad, error_proto("fastloss.ctc_loss", DeviceErrorKind::CtcLabel, p.C, p.blank),
                            CtcLabelValue<target_t>{p.targets.const_data_ptr<target_t>(), mp, p.N}, stream);
      if (grad_now) {
        // one block per (t, n) row up to gridDim.x's limit; the kernel strides over the rest
        const unsigned grad_blocks =
            static_cast<unsigned>(std::min<int64_t>(p.T * p.N, std::numeric_limits<int32_t>::max()));
        ctc_grad_kernel<scalar_t, target_t><<<grad_blocks, kGradThreads, 0, stream>>>(
            p.log_probs.const_data_ptr<scalar_t>(), p.targets.const_data_ptr<target_t>(), mp, p.N, p.C, p.blank, W, ap,
            bp, ao, bo, lk, np, p.T, p.reduction == Reduction::Mean, p.zero_infinity,
            grad.mutable_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      const int out_blocks =
          p.reduction == Reduction::None ? static_cast<int>(std::min<int64_t>((p.N + 255) / 256, 1024)) : 1;
      ctc_loss_out_kernel<scalar_t><<<out_blocks, 256, 0, stream>>>(np, mp, p.N, static_cast<int>(p.reduction),
                                                                    p.zero_infinity, loss.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (p.targets.scalar_type() == at::kInt)
      run(int32_t{});
    else
      run(int64_t{});
  });
  return {loss, grad};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) { m.impl("_ctc_loss_forward", &cuda::PollFirst<&cuda::ctc_loss_cuda>::call); }

}  // namespace fastloss
