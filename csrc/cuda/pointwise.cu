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
#include "common/errors.h"
#include "ops/pointwise.h"

namespace fastloss {
namespace cuda {
namespace {

using at::Tensor;

constexpr int kPwThreads = 256;
constexpr int kPwVec = 8;  // slice starts are multiples of 8 elements: 16-byte aligned for every dtype

template <typename scalar_t>
struct PwIo {
  using acc = acc_t<scalar_t>;
  const scalar_t *a, *b, *c;  // c null: 1
  acc param;
  int64_t n, per;             // elements, elements per block (a multiple of kPwVec)
  scalar_t* loss_s;           // per-element loss in the input dtype ('none'), or null
  acc* loss_a;                // per-element loss in the accumulate dtype (autocast), or null
  acc* partial;               // one sum per block (mean/sum), or null
  scalar_t* g[3];             // gradients, null = not wanted
  acc gscale;                 // constant gradient factor (forward: 1/n or 1)
  const acc* kdev;            // device gradient factor (backward mean/sum), or null
  const scalar_t* gl_s;       // per-element grad_loss (backward 'none'), or null
  const acc* gl_a;
  const acc* sub;             // subtracted from d/dc before scaling (weighted-mean weight gradient), or null
  bool vec;                   // every pointer 16-byte aligned
};

template <PwKind K, typename scalar_t>
__device__ __forceinline__ acc_t<scalar_t> pw_one(const PwIo<scalar_t>& io, int64_t i, acc_t<scalar_t> k,
                                                  acc_t<scalar_t> sub) {
  using acc = acc_t<scalar_t>;
  const acc c = io.c ? load_acc(io.c, i) : acc(1);
  const PwOut<acc> o = pw_eval<K, acc>(load_acc(io.a, i), load_acc(io.b, i), c, io.param);
  if (io.loss_s) store_acc(io.loss_s, i, o.loss);
  if (io.loss_a) io.loss_a[i] = o.loss;
  if (io.gl_s) k *= load_acc(io.gl_s, i);
  if (io.gl_a) k *= io.gl_a[i];
  if (io.g[0]) store_acc(io.g[0], i, o.da * k);
  if (io.g[1]) store_acc(io.g[1], i, o.db * k);
  if (io.g[2]) store_acc(io.g[2], i, (o.dc - sub) * k);
  return o.loss;
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
  int64_t i = begin + threadIdx.x;
  if (io.vec) {
    // whole vectors of the slice: P::N elements per thread per step, one 16-byte access per tensor
    const int64_t vbegin = begin / P::N, vend = end / P::N;
    for (int64_t v = vbegin + threadIdx.x; v < vend; v += kPwThreads) {
      acc a[P::N], b[P::N], c[P::N], loss[P::N], g0[P::N], g1[P::N], g2[P::N];
      P::unpack(reinterpret_cast<const uint4*>(io.a)[v], a);
      P::unpack(reinterpret_cast<const uint4*>(io.b)[v], b);
      if (io.c) {
        P::unpack(reinterpret_cast<const uint4*>(io.c)[v], c);
      } else {
#pragma unroll
        for (int j = 0; j < P::N; ++j) c[j] = acc(1);
      }
      acc kk[P::N];
      if (io.gl_s) {
        P::unpack(reinterpret_cast<const uint4*>(io.gl_s)[v], kk);
#pragma unroll
        for (int j = 0; j < P::N; ++j) kk[j] *= k0;
      } else {
#pragma unroll
        for (int j = 0; j < P::N; ++j) kk[j] = io.gl_a ? k0 * io.gl_a[v * P::N + j] : k0;
      }
#pragma unroll
      for (int j = 0; j < P::N; ++j) {
        const PwOut<acc> o = pw_eval<K, acc>(a[j], b[j], c[j], io.param);
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
  for (; i < end; i += kPwThreads) s += pw_one<K>(io, i, k0, sub);
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
PwIo<scalar_t> make_io(const PwPlan& p, double param, const std::array<Tensor, 3>& g) {
  PwIo<scalar_t> io{};
  io.a = p.a.const_data_ptr<scalar_t>();
  io.b = p.b.const_data_ptr<scalar_t>();
  io.c = p.c.defined() ? p.c.const_data_ptr<scalar_t>() : nullptr;
  io.param = static_cast<acc_t<scalar_t>>(param);
  io.n = p.n;
  io.gscale = 1;
  for (int j = 0; j < 3; ++j) io.g[j] = g[j].numel() ? g[j].mutable_data_ptr<scalar_t>() : nullptr;
  return io;
}

template <typename scalar_t>
bool all_aligned(const PwIo<scalar_t>& io) {
  bool ok = aligned16(io.a) && aligned16(io.b) && (!io.c || aligned16(io.c)) && (!io.loss_s || aligned16(io.loss_s)) &&
            (!io.gl_s || aligned16(io.gl_s));
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

// sum(c) in the accumulate type, as a one-element device tensor (fixed-order two-stage sum).
Tensor weight_sum(const PwPlan& p, cudaStream_t stream) {
  const auto adt = acc_dtype(p.a.scalar_type());
  Tensor w = at::empty({1}, p.a.options().dtype(adt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.c.scalar_type(), "fastloss_weight_sum_cuda", [&] {
    using acc = acc_t<scalar_t>;
    launch_sum<acc>(ElementReader<scalar_t>{p.c.const_data_ptr<scalar_t>()}, p.n, nullptr, acc(1), w, stream);
  });
  return w;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> pointwise_loss_cuda(const Tensor& a, const Tensor& b,
                                                               const c10::optional<Tensor>& c, int64_t kind,
                                                               double param, int64_t reduction,
                                                               std::array<bool, 3> grad_now,
                                                               c10::optional<c10::ScalarType> out_dtype) {
  const PwPlan p = plan_pointwise(a, b, c, kind, param, reduction, out_dtype);
  const bool any_grad = grad_now[0] || grad_now[1] || grad_now[2];
  TORCH_CHECK(!any_grad || (p.reduction != Reduction::None && !p.by_weight_sum), pw_name(p.kind),
              ": grad_now needs reduction mean or sum (and, for l1/mse with a weight, sum)");
  const c10::cuda::CUDAGuard guard(a.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  std::array<Tensor, 3> g{pw_grad_buffer(p, grad_now[0]), pw_grad_buffer(p, grad_now[1]),
                          pw_grad_buffer(p, grad_now[2] && p.c.defined())};
  const bool none = p.reduction == Reduction::None;
  Tensor loss = none ? at::empty(p.a.sizes(), p.a.options().dtype(p.out_dtype))
                     : at::empty({}, p.a.options().dtype(p.out_dtype));
  int blocks;
  int64_t per;
  pw_grid(p.n, a.get_device(), &blocks, &per);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.a.scalar_type(), "fastloss_pointwise_cuda", [&] {
    using acc = acc_t<scalar_t>;
    PwIo<scalar_t> io = make_io<scalar_t>(p, param, g);
    io.per = per;
    Tensor partial;
    if (none) {
      if (p.n == 0) return;
      if (p.out_acc) io.loss_a = loss.mutable_data_ptr<acc>();
      else io.loss_s = loss.mutable_data_ptr<scalar_t>();
    } else {
      partial = at::empty({blocks}, p.a.options().dtype(acc_dtype(p.a.scalar_type())));
      io.partial = partial.mutable_data_ptr<acc>();
      if (p.reduction == Reduction::Mean) io.gscale = acc(1) / static_cast<acc>(p.n);
    }
    launch_pointwise<scalar_t>(p.kind, io, blocks, stream);
    if (!none) {
      const bool mean = p.reduction == Reduction::Mean;
      Tensor wsum = p.by_weight_sum ? weight_sum(p, stream) : Tensor();
      launch_final_sum<acc>(partial.const_data_ptr<acc>(), blocks, wsum.defined() ? wsum.const_data_ptr<acc>() : nullptr,
                            mean ? static_cast<acc>(p.n) : acc(1), loss, stream);
    }
  });
  return {loss, g[0], g[1], g[2]};
}

std::tuple<Tensor, Tensor, Tensor> pointwise_loss_backward_cuda(const Tensor& grad_loss, const Tensor& a,
                                                                const Tensor& b, const c10::optional<Tensor>& c,
                                                                int64_t kind, double param, int64_t reduction,
                                                                const Tensor& loss, std::array<bool, 3> mask) {
  const PwPlan p = plan_pointwise(a, b, c, kind, param, reduction, c10::nullopt);
  const char* op = pw_name(p.kind);
  check_same_device(a, "input", grad_loss, "grad_loss", op);
  check_same_device(a, "input", loss, "loss", op);
  const c10::cuda::CUDAGuard guard(a.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  std::array<Tensor, 3> g{pw_grad_buffer(p, mask[0]), pw_grad_buffer(p, mask[1]),
                          pw_grad_buffer(p, mask[2] && p.c.defined())};
  if (p.n == 0) return {g[0], g[1], g[2]};
  Tensor gl, single, lsub;
  if (p.reduction == Reduction::None) {
    TORCH_CHECK(grad_loss.numel() == p.n, op, ": grad_loss must have ", num(p.n), " elements, got ",
                num(grad_loss.numel()));
    TORCH_CHECK(grad_loss.scalar_type() == p.a.scalar_type() || grad_loss.scalar_type() == acc_dtype(p.a.scalar_type()),
                op, ": grad_loss must have the input's dtype or ", acc_dtype(p.a.scalar_type()), ", got ",
                grad_loss.scalar_type());
    gl = grad_loss.contiguous();
  } else {
    TORCH_CHECK(grad_loss.numel() == 1, op, ": grad_loss must have 1 element, got ", num(grad_loss.numel()));
    Tensor wsum = p.by_weight_sum ? weight_sum(p, stream) : Tensor();
    single = pw_single_factor(p, grad_loss, wsum);
    if (p.by_weight_sum && g[2].numel()) lsub = loss.to(acc_dtype(p.a.scalar_type())).reshape({1});
  }
  int blocks;
  int64_t per;
  pw_grid(p.n, a.get_device(), &blocks, &per);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.a.scalar_type(), "fastloss_pointwise_bwd_cuda", [&] {
    using acc = acc_t<scalar_t>;
    PwIo<scalar_t> io = make_io<scalar_t>(p, param, g);
    io.per = per;
    if (single.defined()) io.kdev = single.const_data_ptr<acc>();
    if (lsub.defined()) io.sub = lsub.const_data_ptr<acc>();
    if (gl.defined()) {
      if (gl.scalar_type() == p.a.scalar_type()) io.gl_s = gl.const_data_ptr<scalar_t>();
      else io.gl_a = gl.const_data_ptr<acc>();
    }
    launch_pointwise<scalar_t>(p.kind, io, blocks, stream);
  });
  return {g[0], g[1], g[2]};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(fastloss, CUDA, m) {
  m.impl("pointwise_loss", &cuda::pointwise_loss_cuda);
  m.impl("pointwise_loss_backward", &cuda::pointwise_loss_backward_cuda);
}

}  // namespace fastloss
