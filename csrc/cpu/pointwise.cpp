// CPU kernels of the pointwise family (math in ops/pointwise.h). One loop body serves forward and
// backward: per element it reads a, b (c, grad_loss) once, and writes the loss ('none') and each
// requested gradient once; mean/sum reduce in fixed-size chunks summed in a fixed order, so the
// result does not depend on the thread count and no loss-sized temporary exists.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/common.h"
#include "common/cpu_reduce.h"
#include "common/errors.h"
#include "ops/pointwise.h"

namespace fastloss {
namespace cpu {
namespace {

using at::Tensor;

// Pointers of one call; null = absent / not wanted.
template <typename scalar_t>
struct PwIo {
  using acc = acc_t<scalar_t>;
  const scalar_t *a, *b, *c;
  acc param;
  scalar_t* loss_s;  // per-element loss, input dtype
  acc* loss_a;       // per-element loss, accumulate dtype (autocast)
  scalar_t* g[3];
  acc gscale;               // constant factor of every gradient (forward: 1/n or 1)
  const scalar_t* gl_s;     // per-element grad_loss (backward, 'none')
  const acc* gl_a;
  acc sub;                  // subtracted from d/dc before scaling (weighted-mean weight gradient)
};

// Elements are processed in tiles: convert the tile's inputs to the accumulate type, evaluate the
// loss and derivatives into small arrays, then sum / scale / store in separate loops. Every loop
// is branch-free over its elements, so the compiler vectorizes them; the per-call choices (weight
// or not, which gradients) are taken once per tile.
constexpr int64_t kTile = 256;

template <typename scalar_t>
inline void load_tile(const scalar_t* src, acc_t<scalar_t>* dst, int64_t m) {
  for (int64_t i = 0; i < m; ++i) dst[i] = static_cast<acc_t<scalar_t>>(src[i]);
}

template <typename scalar_t>
inline void store_tile(scalar_t* dst, const acc_t<scalar_t>* v, const acc_t<scalar_t>* k, acc_t<scalar_t> sub,
                       int64_t m) {
  for (int64_t i = 0; i < m; ++i) dst[i] = static_cast<scalar_t>((v[i] - sub) * k[i]);
}

// Runs elements [begin, end); returns the sum of their losses, in a fixed order: lane j of 8
// accumulates the tile's elements j, j + 8, ..., then the lanes are added pairwise.
template <PwKind K, typename scalar_t>
acc_t<scalar_t> pw_range(const PwIo<scalar_t>& io, int64_t begin, int64_t end) {
  using acc = acc_t<scalar_t>;
  acc A[kTile], B[kTile], C[kTile], L[kTile], DA[kTile], DB[kTile], DC[kTile], KK[kTile];
  acc lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const bool any_grad = io.g[0] || io.g[1] || io.g[2];
  for (int64_t t0 = begin; t0 < end; t0 += kTile) {
    const int64_t m = std::min(kTile, end - t0);
    load_tile(io.a + t0, A, m);
    load_tile(io.b + t0, B, m);
    if (io.c) {
      load_tile(io.c + t0, C, m);
    } else {
      for (int64_t i = 0; i < m; ++i) C[i] = acc(1);
    }
    for (int64_t i = 0; i < m; ++i) {
      const PwOut<acc> o = pw_eval<K, acc>(A[i], B[i], C[i], io.param);
      L[i] = o.loss;
      DA[i] = o.da;
      DB[i] = o.db;
      DC[i] = o.dc;
    }
    int64_t i = 0;
    for (; i + 8 <= m; i += 8)
      for (int j = 0; j < 8; ++j) lane[j] += L[i + j];
    for (int j = 0; i + j < m; ++j) lane[j] += L[i + j];
    if (io.loss_s)
      for (int64_t e = 0; e < m; ++e) io.loss_s[t0 + e] = static_cast<scalar_t>(L[e]);
    if (io.loss_a) std::copy(L, L + m, io.loss_a + t0);
    if (!any_grad) continue;
    if (io.gl_s) {
      load_tile(io.gl_s + t0, KK, m);
      for (int64_t e = 0; e < m; ++e) KK[e] *= io.gscale;
    } else if (io.gl_a) {
      for (int64_t e = 0; e < m; ++e) KK[e] = io.gl_a[t0 + e] * io.gscale;
    } else {
      for (int64_t e = 0; e < m; ++e) KK[e] = io.gscale;
    }
    if (io.g[0]) store_tile(io.g[0] + t0, DA, KK, acc(0), m);
    if (io.g[1]) store_tile(io.g[1] + t0, DB, KK, acc(0), m);
    if (io.g[2]) store_tile(io.g[2] + t0, DC, KK, io.sub, m);
  }
  return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// All n elements, in parallel over fixed 16384-element chunks; the chunk sums are added in order,
// so the result does not depend on the thread count.
template <PwKind K, typename scalar_t>
acc_t<scalar_t> pw_run(const PwIo<scalar_t>& io, int64_t n) {
  using acc = acc_t<scalar_t>;
  constexpr int64_t kChunk = 16384;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<acc> partial(static_cast<size_t>(chunks), acc(0));
  at::parallel_for(0, chunks, 1, [&](int64_t b, int64_t e) {
    for (int64_t ch = b; ch < e; ++ch)
      partial[static_cast<size_t>(ch)] = pw_range<K>(io, ch * kChunk, std::min(n, (ch + 1) * kChunk));
  });
  acc total = 0;
  for (acc v : partial) total += v;
  return total;
}

template <typename scalar_t>
PwIo<scalar_t> make_io(const PwPlan& p, double param) {
  PwIo<scalar_t> io{};
  io.a = p.a.const_data_ptr<scalar_t>();
  io.b = p.b.const_data_ptr<scalar_t>();
  io.c = p.c.defined() ? p.c.const_data_ptr<scalar_t>() : nullptr;
  io.param = static_cast<acc_t<scalar_t>>(param);
  io.gscale = 1;
  return io;
}

template <typename scalar_t>
void set_grads(PwIo<scalar_t>& io, const std::array<Tensor, 3>& g) {
  for (int j = 0; j < 3; ++j) io.g[j] = g[j].numel() ? g[j].mutable_data_ptr<scalar_t>() : nullptr;
}

Tensor weight_sum(const PwPlan& p) {
  Tensor w = at::empty({1}, p.a.options().dtype(acc_dtype(p.a.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.c.scalar_type(), "fastloss_weight_sum_cpu", [&] {
    using acc = acc_t<scalar_t>;
    const scalar_t* c = p.c.const_data_ptr<scalar_t>();
    w.mutable_data_ptr<acc>()[0] = fixed_order_sum<acc>(p.n, [c](int64_t i) { return static_cast<acc>(c[i]); });
  });
  return w;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> pointwise_loss_cpu(const Tensor& a, const Tensor& b,
                                                              const c10::optional<Tensor>& c, int64_t kind,
                                                              double param, int64_t reduction,
                                                              std::array<bool, 3> grad_now,
                                                              c10::optional<c10::ScalarType> out_dtype) {
  const PwPlan p = plan_pointwise(a, b, c, kind, param, reduction, out_dtype);
  const bool any_grad = grad_now[0] || grad_now[1] || grad_now[2];
  TORCH_CHECK(!any_grad || (p.reduction != Reduction::None && !p.by_weight_sum), pw_name(p.kind),
              ": grad_now needs reduction mean or sum (and, for l1/mse with a weight, sum)");
  std::array<Tensor, 3> g{pw_grad_buffer(p, grad_now[0]), pw_grad_buffer(p, grad_now[1]),
                          pw_grad_buffer(p, grad_now[2] && p.c.defined())};
  Tensor loss;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.a.scalar_type(), "fastloss_pointwise_cpu", [&] {
    using acc = acc_t<scalar_t>;
    PwIo<scalar_t> io = make_io<scalar_t>(p, param);
    set_grads(io, g);
    if (p.reduction == Reduction::Mean) io.gscale = acc(1) / static_cast<acc>(p.n);
    dispatch_pw_kind(p.kind, [&](auto kc) {
      constexpr PwKind K = decltype(kc)::value;
      if (p.reduction == Reduction::None) {
        loss = at::empty(p.a.sizes(), p.a.options().dtype(p.out_dtype));
        if (p.out_acc) io.loss_a = loss.mutable_data_ptr<acc>();
        else io.loss_s = loss.mutable_data_ptr<scalar_t>();
        pw_run<K>(io, p.n);
        return;
      }
      acc total = pw_run<K>(io, p.n);
      if (p.reduction == Reduction::Mean) {
        const acc denom = p.by_weight_sum ? weight_sum(p).const_data_ptr<acc>()[0] : static_cast<acc>(p.n);
        total = total / denom;
      }
      loss = at::scalar_tensor(static_cast<double>(total), p.a.options().dtype(p.out_dtype));
    });
  });
  return {loss, g[0], g[1], g[2]};
}

std::tuple<Tensor, Tensor, Tensor> pointwise_loss_backward_cpu(const Tensor& grad_loss, const Tensor& a,
                                                               const Tensor& b, const c10::optional<Tensor>& c,
                                                               int64_t kind, double param, int64_t reduction,
                                                               const Tensor& loss, std::array<bool, 3> mask) {
  const PwPlan p = plan_pointwise(a, b, c, kind, param, reduction, c10::nullopt);
  const char* op = pw_name(p.kind);
  check_same_device(a, "input", grad_loss, "grad_loss", op);
  std::array<Tensor, 3> g{pw_grad_buffer(p, mask[0]), pw_grad_buffer(p, mask[1]),
                          pw_grad_buffer(p, mask[2] && p.c.defined())};
  if (p.n == 0) return {g[0], g[1], g[2]};
  Tensor gl, wsum, single;
  if (p.reduction == Reduction::None) {
    TORCH_CHECK(grad_loss.numel() == p.n, op, ": grad_loss must have ", num(p.n), " elements, got ",
                num(grad_loss.numel()));
    gl = grad_loss.contiguous();
  } else {
    TORCH_CHECK(grad_loss.numel() == 1, op, ": grad_loss must have 1 element, got ", num(grad_loss.numel()));
    if (p.by_weight_sum) wsum = weight_sum(p);
    single = pw_single_factor(p, grad_loss, wsum);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.a.scalar_type(), "fastloss_pointwise_bwd_cpu", [&] {
    using acc = acc_t<scalar_t>;
    PwIo<scalar_t> io = make_io<scalar_t>(p, param);
    set_grads(io, g);
    if (single.defined()) io.gscale = single.const_data_ptr<acc>()[0];
    if (gl.defined()) {
      TORCH_CHECK(gl.scalar_type() == p.a.scalar_type() || gl.scalar_type() == acc_dtype(p.a.scalar_type()), op,
                  ": grad_loss must have the input's dtype or ", acc_dtype(p.a.scalar_type()), ", got ",
                  gl.scalar_type());
      if (gl.scalar_type() == p.a.scalar_type()) io.gl_s = gl.const_data_ptr<scalar_t>();
      else io.gl_a = gl.const_data_ptr<acc>();
    }
    if (p.by_weight_sum && g[2].numel()) io.sub = static_cast<acc>(loss.item<double>());
    dispatch_pw_kind(p.kind, [&](auto kc) {
      constexpr PwKind K = decltype(kc)::value;
      pw_run<K>(io, p.n);
    });
  });
  return {g[0], g[1], g[2]};
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fastloss, CPU, m) {
  m.impl("pointwise_loss", &cpu::pointwise_loss_cpu);
  m.impl("pointwise_loss_backward", &cpu::pointwise_loss_backward_cpu);
}

}  // namespace fastloss
