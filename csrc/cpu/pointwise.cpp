// CPU kernels of the pointwise family (math in ops/pointwise.h). One loop body serves forward and
// backward: per element it reads a, b (c, grad_loss) once, and writes the loss ('none') and each
// requested gradient once; mean/sum reduce in fixed-size chunks summed in a fixed order, so the
// result does not depend on the thread count and no loss-sized temporary exists.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

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

template <PwKind K, typename scalar_t>
inline acc_t<scalar_t> pw_element(const PwIo<scalar_t>& io, int64_t i) {
  using acc = acc_t<scalar_t>;
  const acc c = io.c ? static_cast<acc>(io.c[i]) : acc(1);
  const PwOut<acc> o = pw_eval<K, acc>(static_cast<acc>(io.a[i]), static_cast<acc>(io.b[i]), c, io.param);
  if (io.loss_s) io.loss_s[i] = static_cast<scalar_t>(o.loss);
  if (io.loss_a) io.loss_a[i] = o.loss;
  acc k = io.gscale;
  if (io.gl_s) k *= static_cast<acc>(io.gl_s[i]);
  if (io.gl_a) k *= io.gl_a[i];
  if (io.g[0]) io.g[0][i] = static_cast<scalar_t>(o.da * k);
  if (io.g[1]) io.g[1][i] = static_cast<scalar_t>(o.db * k);
  if (io.g[2]) io.g[2][i] = static_cast<scalar_t>((o.dc - io.sub) * k);
  return o.loss;
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
        at::parallel_for(0, p.n, 32768, [&](int64_t begin, int64_t end) {
          for (int64_t i = begin; i < end; ++i) pw_element<K>(io, i);
        });
        return;
      }
      acc total = fixed_order_sum<acc>(p.n, [&io](int64_t i) { return pw_element<K>(io, i); });
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
      at::parallel_for(0, p.n, 32768, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) pw_element<K>(io, i);
      });
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
