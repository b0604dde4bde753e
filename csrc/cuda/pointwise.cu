// CUDA kernels of the pointwise family (math in ops/pointwise.h, shared with the CPU).
// One kernel serves forward and backward. Each block owns a fixed slice of the elements and walks it
// in 16-byte vectors: it reads a, b (c, grad_loss) once and writes the per-element loss ('none') and
// each requested gradient once. mean/sum: each block's partial sum goes to a small buffer and one
// block sums those in order (no atomics: bitwise repeatable, and no loss-sized temporary).
// Minimal traffic, forward+backward of a mean loss on a requiring-grad input: read a, b, write
// d/da = 3 x n x sizeof(T); the backward of grad_output == 1 then costs nothing (in-place scale).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda/block_reduce.cuh"
#include "common/cuda/device_errors.cuh"
#include "ops/pointwise_ops.h"

namespace fastloss {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kPwThreads = 256;
constexpr int kPwVec = 8;  // slice starts are multiples of 8 elements: 16-byte aligned for every dtype

// binary_cross_entropy's bad element for its error record: the code is 2 * position + (target is bad).
template <typename scalar_t>
struct BceValue {
  const scalar_t* a;
  const scalar_t* b;
  __device__ void operator()(int64_t code, DeviceErrorRecord& r) const {
    r.pos = code / 2;
    r.p[0] = code % 2;
    r.fvalue = static_cast<double>(load_acc(code % 2 ? b : a, r.pos));
  }
};

// binary_cross_entropy's domain check, folded into a per-thread minimum (other kinds: nothing).
template <PwKind K, typename acc>
__device__ __forceinline__ void pw_check(const int64_t* first_bad, acc a, acc b, int64_t i, int64_t& bad) {
  if constexpr (K == PwKind::BCE) {
    if (first_bad) {
      const int64_t code = pw_bce_bad(a, b, i);
      if (code >= 0 && code < bad) bad = code;
    }
  }
}

template <PwKind K, typename scalar_t>
__device__ __forceinline__ acc_t<scalar_t> pw_one(const PwIo<scalar_t>& io, int64_t i, acc_t<scalar_t> k,
                                                  acc_t<scalar_t> sub, int64_t& bad) {
  using acc = acc_t<scalar_t>;
  const acc c = io.c ? load_acc(io.c, io.cb.at(i)) : acc(1);
  const acc d = io.d ? load_acc(io.d, io.db.at(i)) : acc(1);
  const acc a = load_acc(io.a, i), b = load_acc(io.b, i);
  pw_check<K>(io.first_bad, a, b, i, bad);
  const PwOut<acc> o = pw_eval<K, acc>(a, b, c, d, io.param, io.param2);
  if (io.loss_s) store_acc(io.loss_s, i, o.loss);
  if (io.loss_a) io.loss_a[i] = o.loss;
  if (io.gl_s) k *= load_acc(io.gl_s, io.glb.at(i));
  if (io.gl_a) k *= io.gl_a[io.glb.at(i)];
  if (io.g[0]) store_acc(io.g[0], i, o.da * k);
  if (io.g[1]) store_acc(io.g[1], i, o.db * k);
  if (io.g[2]) store_acc(io.g[2], i, (o.dc - sub) * k);
  return o.loss;
}

// Vector v of c, d or grad_loss (src: the input's dtype, or grad_loss in the accumulate type under
// autocast): one 16-byte load when dense in the input's dtype, else P::N scalar loads -- cached ones of a
// broadcast source (pos_weight, var, an expanded grad: small, L1/L2-resident); absent: 1.
template <typename scalar_t, typename T, typename acc>
__device__ __forceinline__ void load_vec(const T* src, const PwBcast& bc, int64_t v, acc* out) {
  using P = Pack<scalar_t>;
  if (!src) {
#pragma unroll
    for (int j = 0; j < P::N; ++j) out[j] = acc(1);
  } else if (bc.per) {
    PwBcastCursor<T> cur(src, bc, v * P::N);
#pragma unroll
    for (int j = 0; j < P::N; ++j) out[j] = static_cast<acc>(cur.next());
  } else if constexpr (std::is_same_v<T, scalar_t>) {
    P::unpack(reinterpret_cast<const uint4*>(src)[v], out);
  } else {
#pragma unroll
    for (int j = 0; j < P::N; ++j) out[j] = static_cast<acc>(src[v * P::N + j]);
  }
}

template <PwKind K, typename scalar_t>
__global__ void __launch_bounds__(kPwThreads) pointwise_kernel(const PwIo<scalar_t> io) {
  using acc = acc_t<scalar_t>;
  using P = Pack<scalar_t>;
  static_assert(kPwVec % P::N == 0, "slices must start on 16-byte boundaries");
  const int64_t begin = int64_t(blockIdx.x) * io.per;
  const int64_t end = std::max(begin, std::min(io.n, begin + io.per));  // trailing blocks may own nothing
  const acc k0 = io.gscale * (io.kdev ? *io.kdev : acc(1));
  const acc sub = io.sub ? *io.sub : acc(0);
  acc s = 0;
  int64_t bad = INT64_MAX;  // binary_cross_entropy: this thread's first out-of-domain element
  int64_t i = begin + threadIdx.x;
  if (io.vec) {
    // whole vectors of the slice: P::N elements per thread per step, one 16-byte access per tensor
    const int64_t vbegin = begin / P::N, vend = end / P::N;
    for (int64_t v = vbegin + threadIdx.x; v < vend; v += kPwThreads) {
      acc a[P::N], b[P::N], c[P::N], d[P::N], loss[P::N], g0[P::N], g1[P::N], g2[P::N];
      P::unpack(reinterpret_cast<const uint4*>(io.a)[v], a);
      P::unpack(reinterpret_cast<const uint4*>(io.b)[v], b);
      load_vec<scalar_t>(io.c, io.cb, v, c);
      load_vec<scalar_t>(K == PwKind::BCEWithLogits ? io.d : nullptr, io.db, v, d);  // pos_weight: only there
      acc kk[P::N];  // grad_loss (1 when a single factor) times k0
      if (io.gl_a)
        load_vec<scalar_t>(io.gl_a, io.glb, v, kk);
      else
        load_vec<scalar_t>(io.gl_s, io.glb, v, kk);
#pragma unroll
      for (int j = 0; j < P::N; ++j) kk[j] *= k0;
#pragma unroll
      for (int j = 0; j < P::N; ++j) {
        pw_check<K>(io.first_bad, a[j], b[j], v * P::N + j, bad);
        const PwOut<acc> o = pw_eval<K, acc>(a[j], b[j], c[j], d[j], io.param, io.param2);
        loss[j] = o.loss;
        s += o.loss;
        g0[j] = o.da * kk[j];
        g1[j] = o.db * kk[j];
        g2[j] = (o.dc - sub) * kk[j];
      }
      if (io.loss_s) reinterpret_cast<uint4*>(io.loss_s)[v] = P::pack(loss);
      if (io.loss_a) {
#pragma unroll
        for (int j = 0; j < P::N; ++j) io.loss_a[v * P::N + j] = loss[j];
      }
      if (io.g[0]) reinterpret_cast<uint4*>(io.g[0])[v] = P::pack(g0);
      if (io.g[1]) reinterpret_cast<uint4*>(io.g[1])[v] = P::pack(g1);
      if (io.g[2]) reinterpret_cast<uint4*>(io.g[2])[v] = P::pack(g2);
    }
    i = vend * P::N + threadIdx.x;  // the slice's tail (only the last slice has one)
  }
  for (; i < end; i += kPwThreads) s += pw_one<K>(io, i, k0, sub, bad);
  if (K == PwKind::BCE && bad != INT64_MAX)  // integer atomic: order-free, deterministic
    atomicMin(reinterpret_cast<unsigned long long*>(io.first_bad), static_cast<unsigned long long>(bad));
  if (io.partial) {
    __shared__ acc scratch[kPwThreads / 32 + 1];
    s = block_sum<kPwThreads>(s, scratch);
    if (threadIdx.x == 0) io.partial[blockIdx.x] = s;
  }
}

// Blocks and slice length depend only on n and the device: the same sum order on every run.
void pw_grid(int64_t n, int device, int* blocks, int64_t* per) {
  const int64_t want = (n + int64_t(kPwThreads) * kPwVec - 1) / (int64_t(kPwThreads) * kPwVec);
  const int64_t cap = int64_t(device_info(device).sm_count) * 8;
  *blocks = static_cast<int>(std::max<int64_t>(1, std::min(want, cap)));
  int64_t p = (n + *blocks - 1) / *blocks;
  *per = std::max<int64_t>(kPwVec, (p + kPwVec - 1) / kPwVec * kPwVec);
}

template <typename scalar_t>
bool all_aligned(const PwIo<scalar_t>& io) {
  bool ok = aligned16(io.a) && aligned16(io.b) && (!io.c || io.cb.per || aligned16(io.c)) &&
            (!io.d || io.db.per || aligned16(io.d)) && (!io.loss_s || aligned16(io.loss_s)) &&
            (!io.gl_s || io.glb.per || aligned16(io.gl_s));
  for (int j = 0; j < 3; ++j) ok = ok && (!io.g[j] || aligned16(io.g[j]));
  return ok;
}

template <typename scalar_t>
void launch_pointwise(PwKind kind, PwIo<scalar_t> io, int blocks, cudaStream_t stream) {
  io.vec = all_aligned(io);
  dispatch_pw_kind(kind, [&](auto kc) {
    constexpr PwKind K = decltype(kc)::value;
    pointwise_kernel<K, scalar_t><<<blocks, kPwThreads, 0, stream>>>(io);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The device half of PointwiseOps (ops/pointwise_ops.h).
struct CudaPointwise {
  // sum(c) in the accumulate type, as a one-element device tensor (fixed-order two-stage sum).
  static Tensor weight_sum(const PwPlan& p) {
    const c10::cuda::CUDAGuard guard(p.a.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    Tensor w = at::empty({1}, p.a.options().dtype(acc_dtype(p.a.scalar_type())));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.c.scalar_type(), "fastloss_weight_sum_cuda", [&] {
      using acc = acc_t<scalar_t>;
      launch_sum<acc>(ElementReader<scalar_t>{p.c.const_data_ptr<scalar_t>()}, p.n, nullptr, acc(1), w, stream);
    });
    return w;
  }

  // 'none': one launch; mean/sum: the launch writes per-block partials, one block sums them in
  // order into the loss, divided by n or by *wsum (device pointer: no host sync).
  template <typename scalar_t>
  static void forward(const PwPlan& p, PwIo<scalar_t> io, const Tensor& loss, const Tensor& wsum) {
    using acc = acc_t<scalar_t>;
    const bool none = p.reduction == Reduction::None;
    if (none && p.n == 0) return;
    const c10::cuda::CUDAGuard guard(p.a.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    int blocks;
    pw_grid(p.n, p.a.get_device(), &blocks, &io.per);
    Tensor partial;
    if (!none) {
      partial = at::empty({blocks}, p.a.options().dtype(acc_dtype(p.a.scalar_type())));
      io.partial = partial.mutable_data_ptr<acc>();
    }
    launch_pointwise<scalar_t>(p.kind, io, blocks, stream);
    if (none) return;
    const bool mean = p.reduction == Reduction::Mean;
    launch_final_sum<acc>(partial.const_data_ptr<acc>(), blocks, wsum.defined() ? wsum.const_data_ptr<acc>() : nullptr,
                          mean ? static_cast<acc>(p.n) : acc(1), loss, stream);
  }

  template <typename scalar_t>
  static void backward(const PwPlan& p, PwIo<scalar_t> io) {
    const c10::cuda::CUDAGuard guard(p.a.device());
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    int blocks;
    pw_grid(p.n, p.a.get_device(), &blocks, &io.per);
    launch_pointwise<scalar_t>(p.kind, io, blocks, stream);
  }

  // Queues the report of binary_cross_entropy's check after the forward's kernels: no host sync; the
  // error is raised by a later fastloss call (strict validation: here). -1: nothing to raise now.
  static int64_t first_bad(const PwPlan& p, const Tensor& t) {
    const c10::cuda::CUDAGuard guard(t.device());
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.a.scalar_type(), "fastloss_bce_report", [&] {
      report_device_error(t, error_proto(pw_name(p.kind), DeviceErrorKind::BceDomain),
                          BceValue<scalar_t>{p.a.const_data_ptr<scalar_t>(), p.b.const_data_ptr<scalar_t>()},
                          c10::cuda::getCurrentCUDAStream().stream());
    });
    return -1;
  }
};

using Ops = PointwiseOps<CudaPointwise>;

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  m.impl("_pointwise_forward", &cuda::PollFirst<&cuda::Ops::forward>::call);
  m.impl("_pointwise_backward", &cuda::PollFirst<&cuda::Ops::backward>::call);
}

}  // namespace fastloss
