// The op glue of the cross_entropy family, written once for both devices (as ops/pointwise_ops.h,
// ops/embedding_ops.h, ops/margin_rows_ops.h): argument checks, buffers and the dtype / class-target
// dispatch are here. Dev (cpu/cross_entropy.cpp, cuda/cross_entropy.cu) supplies the kernels:
//   check_row_length(op, classes): a limit of its row kernels (rows contiguous in the classes);
//   cross_entropy<scalar_t, target_t>(plan, CeBuffers&, ignore_index, eps, out_dtype, op): the mean's
//     denominator (validating class targets), the row kernels filling row_loss / lse / grad, and the
//     reduced loss; target_t is int64_t (unused) for probability targets;
//   nll_loss<scalar_t, target_t>(plan, x, target, w, row_loss, ignore_index, out_dtype, op) -> (loss, total_weight);
//   target_backward<scalar_t>(x, lse, w, grad_loss factor, k, view, out): d(loss)/d(probability target);
//   nll_grad_buffer(input, view): nll_loss_backward's output before the scatter (the zeros it needs);
//   nll_backward<scalar_t, target_t>(target, w, grad_loss factor, total_weight, mean, view, ignore_index, out).
// Class-target errors are raised on the host (CPU) or reported from the device without a sync (CUDA:
// common/device_errors.h).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "common/alloc.h"
#include "common/common.h"
#include "common/errors.h"
#include "ops/cross_entropy.h"

namespace fastloss {

// cross_entropy's forward buffers, laid out for both devices' row kernels.
struct CeBuffers {
  at::Tensor x;          // the logits: a 2-D input with unit class stride in place (any row stride), else contiguous
  int64_t x_row_stride;  // rows path: elements between rows
  bool rows_path;        // rows contiguous in the classes (inner == 1); else the strided K-D path
  at::Tensor target;     // contiguous: class indices, or probabilities in the input's dtype
  at::Tensor weight;     // (C,) in the accumulate dtype, or undefined
  at::Tensor row_loss;   // (rows,) in the accumulate dtype
  at::Tensor lse;        // (rows,) when save_lse, else empty
  at::Tensor grad;       // the input's shape (contiguous) when compute_grad, else empty
};

template <class Dev>
struct CrossEntropyOps {
  using Tensor = at::Tensor;

  static std::tuple<Tensor, Tensor, Tensor> cross_entropy(const Tensor& input, const Tensor& target,
                                                          const c10::optional<Tensor>& weight, int64_t reduction,
                                                          int64_t ignore_index, double label_smoothing,
                                                          bool compute_grad, bool save_lse,
                                                          c10::optional<c10::ScalarType> out_dtype) {
    const char* op = "fastloss.cross_entropy";
    const CrossEntropyPlan p =
        plan_cross_entropy(input, target, weight, reduction, ignore_index, label_smoothing, true, op);
    const auto dtype = input.scalar_type();
    const auto aopt = input.options().dtype(acc_dtype(dtype));
    CeBuffers b;
    b.rows_path = p.inner == 1;
    if (b.rows_path) Dev::check_row_length(op, p.classes);
    b.x = (b.rows_path && input.dim() == 2 && input.stride(1) == 1) ? input : input.contiguous();
    b.x_row_stride = (b.rows_path && input.dim() == 2) ? b.x.stride(0) : p.classes;
    b.target = p.prob_target ? target.to(dtype).contiguous() : target.contiguous();
    b.weight = as_acc(weight, acc_dtype(dtype));
    b.row_loss = at::empty({p.rows()}, aopt);
    b.lse = at::empty({save_lse ? p.rows() : 0}, aopt);
    b.grad = compute_grad ? empty_for_write(input.sizes(), input.options()) : at::empty({0}, input.options());
    const auto out_t = out_dtype.value_or(dtype);
    Tensor loss = AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_cross_entropy", [&] {
      auto run = [&](auto tag) {
        return Dev::template cross_entropy<scalar_t, decltype(tag)>(p, b, ignore_index, label_smoothing, out_t, op);
      };
      return p.prob_target ? run(int64_t{}) : dispatch_class_target(b.target.scalar_type(), run);
    });
    return std::make_tuple(loss, b.grad, b.lse);
  }

  // d(loss)/d(target) for probability targets: grad_loss k w_c (lse_r - x_c), k = (1 - eps) [/ rows for mean].
  static Tensor cross_entropy_target_backward(const Tensor& grad_loss, const Tensor& input, const Tensor& lse,
                                              const c10::optional<Tensor>& weight, int64_t reduction,
                                              double label_smoothing) {
    const Reduction red = to_reduction(reduction, "fastloss.cross_entropy_target_backward");
    const auto dtype = input.scalar_type();
    const auto adt = acc_dtype(dtype);
    const Tensor x = input.contiguous();
    const ClassView v = class_view(input);
    const Tensor g = grad_loss.to(adt).contiguous();
    const Tensor w = as_acc(weight, adt);
    Tensor out = empty_for_write(input.sizes(), input.options());
    if (input.numel() == 0) return out;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_ce_target_bwd", [&] {
      using acc = acc_t<scalar_t>;
      const acc k = (red == Reduction::Mean ? acc(1) / static_cast<acc>(v.rows()) : acc(1)) *
                    (acc(1) - static_cast<acc>(label_smoothing));
      Dev::template target_backward<scalar_t>(x, lse.const_data_ptr<acc>(),
                                              w.defined() ? w.const_data_ptr<acc>() : nullptr,
                                              RowFactor<acc>{g.const_data_ptr<acc>(), g.numel() == 1}, k, v, out);
    });
    return out;
  }

  static std::tuple<Tensor, Tensor> nll_loss(const Tensor& input, const Tensor& target,
                                             const c10::optional<Tensor>& weight, int64_t reduction,
                                             int64_t ignore_index, c10::optional<c10::ScalarType> out_dtype) {
    const char* op = "fastloss.nll_loss";
    const CrossEntropyPlan p = plan_cross_entropy(input, target, weight, reduction, ignore_index, 0.0, false, op);
    const auto dtype = input.scalar_type();
    const auto adt = acc_dtype(dtype);
    const Tensor x = input.contiguous();
    const Tensor tgt = target.contiguous();
    const Tensor w = as_acc(weight, adt);
    Tensor row_loss = at::empty({p.rows()}, input.options().dtype(adt));
    const auto out_t = out_dtype.value_or(dtype);
    return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_nll_loss", [&] {
      return dispatch_class_target(tgt.scalar_type(), [&](auto tag) {
        return Dev::template nll_loss<scalar_t, decltype(tag)>(p, x, tgt, w, row_loss, ignore_index, out_t, op);
      });
    });
  }

  // Zeros everywhere but the target entry of each non-ignored row.
  static Tensor nll_loss_backward(const Tensor& grad_loss, const Tensor& input, const Tensor& target,
                                  const c10::optional<Tensor>& weight, int64_t reduction, int64_t ignore_index,
                                  const Tensor& total_weight) {
    const Reduction red = to_reduction(reduction, "fastloss.nll_loss_backward");
    const auto dtype = input.scalar_type();
    const auto adt = acc_dtype(dtype);
    const ClassView v = class_view(input);
    const Tensor tgt = target.contiguous();
    const Tensor g = grad_loss.to(adt).contiguous();
    const Tensor w = as_acc(weight, adt);
    const Tensor tw = total_weight.to(adt);
    Tensor out = Dev::nll_grad_buffer(input, v);
    if (input.numel() == 0 || tgt.numel() == 0) return out;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fastloss_nll_loss_bwd", [&] {
      using acc = acc_t<scalar_t>;
      dispatch_class_target(tgt.scalar_type(), [&](auto tag) {
        Dev::template nll_backward<scalar_t, decltype(tag)>(tgt, w.defined() ? w.const_data_ptr<acc>() : nullptr,
                                                            RowFactor<acc>{g.const_data_ptr<acc>(), g.numel() == 1}, tw,
                                                            red == Reduction::Mean, v, ignore_index, out);
      });
    });
    return out;
  }
};

}  // namespace fastloss
