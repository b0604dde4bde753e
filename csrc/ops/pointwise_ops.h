// The op kernels of the pointwise family, written once for both devices (as ops/embedding_ops.h):
// Dev (cpu/pointwise.cpp, cuda/pointwise.cu) supplies weight_sum(), forward<scalar_t>() -- run the
// loop and, for mean/sum, write the reduced loss --, backward<scalar_t>() -- run the loop -- and
// first_bad() -- binary_cross_entropy's domain check result, read on the host (CPU), or reported from the
// device without a sync (CUDA: -1 here, raised by a later call; see common/device_errors.h).
// Checks, buffers, factors and the kernel pointers (make_pw_io) are here.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <limits>
#include <tuple>

#include "common/alloc.h"
#include "common/errors.h"
#include "ops/pointwise.h"

namespace fastloss {

template <typename scalar_t>
PwIo<scalar_t> make_pw_io(const PwPlan& p, double param, double param2, const std::array<at::Tensor, 3>& g) {
  PwIo<scalar_t> io{};
  io.a = p.a.const_data_ptr<scalar_t>();
  io.b = p.b.const_data_ptr<scalar_t>();
  io.c = p.c.defined() ? p.c.const_data_ptr<scalar_t>() : nullptr;
  io.d = p.d.defined() ? p.d.const_data_ptr<scalar_t>() : nullptr;
  io.cb = p.cb;
  io.db = p.db;
  io.param = static_cast<acc_t<scalar_t>>(param);
  io.param2 = static_cast<acc_t<scalar_t>>(param2);
  io.n = p.n;
  io.gscale = 1;
  for (int j = 0; j < 3; ++j) io.g[j] = g[j].numel() ? g[j].mutable_data_ptr<scalar_t>() : nullptr;
  return io;
}

template <class Dev>
struct PointwiseOps {
  using Tensor = at::Tensor;

  static std::array<Tensor, 3> grad_buffers(const PwPlan& p, std::array<bool, 3> wanted) {
    return {grad_buffer(p.a, wanted[0]), grad_buffer(p.a, wanted[1]), grad_buffer(p.a, wanted[2] && p.c.defined())};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> forward(const Tensor& a, const Tensor& b,
                                                            const c10::optional<Tensor>& c, int64_t kind, double param,
                                                            int64_t reduction, std::array<bool, 3> grad_now,
                                                            c10::optional<c10::ScalarType> out_dtype,
                                                            const c10::optional<Tensor>& d, double param2) {
    const PwPlan p = plan_pointwise(a, b, c, kind, param, reduction, out_dtype, d);
    const bool any_grad = grad_now[0] || grad_now[1] || grad_now[2];
    TORCH_CHECK(!any_grad || (p.reduction != Reduction::None && !p.by_weight_sum), pw_name(p.kind),
                ": grad_now needs reduction mean or sum (and, for l1/mse with a weight, sum)");
    const std::array<Tensor, 3> g = grad_buffers(p, grad_now);
    const bool none = p.reduction == Reduction::None;
    Tensor loss = none ? empty_for_write(p.a.sizes(), p.a.options().dtype(p.out_dtype))
                       : at::empty({}, p.a.options().dtype(p.out_dtype));
    const Tensor wsum = !none && p.by_weight_sum ? Dev::weight_sum(p) : Tensor();
    // binary_cross_entropy's domain check: the first bad element's code (pw_bce_bad), min over the pass
    Tensor first_bad;
    if (p.kind == PwKind::BCE && p.n > 0)
      first_bad = at::full({1}, std::numeric_limits<int64_t>::max(), p.a.options().dtype(at::kLong));
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.a.scalar_type(), "fastloss_pointwise", [&] {
      using acc = acc_t<scalar_t>;
      PwIo<scalar_t> io = make_pw_io<scalar_t>(p, param, param2, g);
      if (first_bad.defined()) io.first_bad = first_bad.mutable_data_ptr<int64_t>();
      if (none && p.out_acc) io.loss_a = loss.mutable_data_ptr<acc>();
      if (none && !p.out_acc) io.loss_s = loss.mutable_data_ptr<scalar_t>();
      if (p.reduction == Reduction::Mean) io.gscale = acc(1) / static_cast<acc>(p.n);
      Dev::template forward<scalar_t>(p, io, loss, wsum);
    });
    if (first_bad.defined()) pw_bce_raise(p, Dev::first_bad(p, first_bad));
    return {loss, g[0], g[1], g[2]};
  }

  static std::tuple<Tensor, Tensor, Tensor> backward(const Tensor& grad_loss, const Tensor& a, const Tensor& b,
                                                     const c10::optional<Tensor>& c, int64_t kind, double param,
                                                     int64_t reduction, const Tensor& loss, std::array<bool, 3> mask,
                                                     const c10::optional<Tensor>& d, double param2) {
    const PwPlan p = plan_pointwise(a, b, c, kind, param, reduction, c10::nullopt, d);
    const char* op = pw_name(p.kind);
    check_same_device(a, "input", grad_loss, "grad_loss", op);
    check_same_device(a, "input", loss, "loss", op);
    const std::array<Tensor, 3> g = grad_buffers(p, mask);
    if (p.n == 0) return {g[0], g[1], g[2]};
    const auto adt = acc_dtype(p.a.scalar_type());
    Tensor gl, single, sub;
    PwBcast glb;
    if (p.reduction == Reduction::None) {
      TORCH_CHECK(grad_loss.numel() == p.n, op, ": grad_loss must have ", num(p.n), " elements, got ",
                  num(grad_loss.numel()));
      TORCH_CHECK(grad_loss.scalar_type() == p.a.scalar_type() || grad_loss.scalar_type() == adt, op,
                  ": grad_loss must have the input's dtype or ", adt, ", got ", grad_loss.scalar_type());
      // the grad of loss.sum() / loss.mean() is an expanded scalar, of a per-row sum an expanded column:
      // read through its source rather than materialized
      gl = grad_loss.sizes() == p.a.sizes() ? pw_broadcast_source(grad_loss, &glb) : grad_loss.contiguous();
    } else {
      TORCH_CHECK(grad_loss.numel() == 1, op, ": grad_loss must have 1 element, got ", num(grad_loss.numel()));
      single = pw_single_factor(p, grad_loss, p.by_weight_sum ? Dev::weight_sum(p) : Tensor());
      if (p.by_weight_sum && g[2].numel()) sub = loss.to(adt).reshape({1});  // stays on the device: no sync
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.a.scalar_type(), "fastloss_pointwise_bwd", [&] {
      using acc = acc_t<scalar_t>;
      PwIo<scalar_t> io = make_pw_io<scalar_t>(p, param, param2, g);
      if (single.defined()) io.kdev = single.const_data_ptr<acc>();
      if (sub.defined()) io.sub = sub.const_data_ptr<acc>();
      if (gl.defined() && gl.scalar_type() == p.a.scalar_type()) io.gl_s = gl.const_data_ptr<scalar_t>();
      if (gl.defined() && gl.scalar_type() != p.a.scalar_type()) io.gl_a = gl.const_data_ptr<acc>();
      io.glb = glb;
      Dev::template backward<scalar_t>(p, io);
    });
    return {g[0], g[1], g[2]};
  }
};

}  // namespace fastloss
