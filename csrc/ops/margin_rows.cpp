// Schemas of the margin_rows family (ops/margin_rows.h) and the argument plan both devices share, so
// CPU and CUDA refuse the same inputs with the same words (torch's checks, in torch's order).
#include "ops/margin_rows.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/alloc.h"
#include "common/errors.h"

namespace fastloss {

namespace {

// torch's multi_margin / multilabel_margin shape rule: (N, C) with C > 0, (C,) with C > 0, or a 0-d
// input (one class). Sets rows and C.
void check_input_rows(const char* op, const at::Tensor& input, MarginRowsPlan& p) {
  check_floating(input, "input", op);
  const int64_t nd = input.dim();
  TORCH_CHECK((nd == 2 && input.size(1) != 0) || (nd == 1 && input.size(0) != 0) || nd == 0, op,
              ": Expected non-empty vector or matrix with optional 0-dim batch size, but got: ", shape(input.sizes()));
  p.rows = nd == 2 ? input.size(0) : 1;
  p.C = nd == 0 ? 1 : input.size(nd - 1);
}

void check_long_target(const char* op, const at::Tensor& input, const at::Tensor& target) {
  check_same_device(input, "input", target, "target", op);
  TORCH_CHECK(target.scalar_type() == c10::kLong, op, ": expected scalar type Long but found ", target.scalar_type(),
              " (target must hold int64 class indices)");
}

void finish_plan(const char* op, const at::Tensor& input, const at::Tensor& target, int64_t reduction,
                 c10::optional<c10::ScalarType> out_dtype, MarginRowsPlan& p) {
  p.reduction = to_reduction(reduction, op);
  p.input = input.contiguous();
  p.target = target.contiguous();
  const auto adt = acc_dtype(input.scalar_type());
  p.out_dtype = out_dtype.value_or(input.scalar_type());
  TORCH_CHECK(p.out_dtype == input.scalar_type() || p.out_dtype == adt, op, ": out_dtype must be the input's dtype or ",
              adt, ", got ", p.out_dtype);
}

}  // namespace

MarginRowsPlan plan_multi_margin(const char* op, const at::Tensor& input, const at::Tensor& target, int64_t p,
                                 const c10::optional<at::Tensor>& weight, int64_t reduction,
                                 c10::optional<c10::ScalarType> out_dtype) {
  MarginRowsPlan pl;
  pl.op = op;
  TORCH_CHECK_VALUE(p == 1 || p == 2, op, ": only p == 1 and p == 2 supported (got p = ", num(p), ")");
  check_input_rows(op, input, pl);
  check_long_target(op, input, target);
  TORCH_CHECK(target.dim() <= 1 && target.numel() == pl.rows, op,
              ": target tensor should be 1-D with size equal to the number of input samples (batch size). "
              "Expected target size [",
              num(pl.rows), "], but got ", shape(target.sizes()), ". Input has shape ", shape(input.sizes()), ".");
  if (weight.has_value() && weight->defined()) {
    check_same_device(input, "input", *weight, "weight", op);
    check_floating(*weight, "weight", op);
    TORCH_CHECK(weight->dim() <= 1 && weight->numel() == pl.C, op, ": inconsistent weight size, expected ", num(pl.C),
                " but got ", shape(weight->sizes()));
    pl.weight = weight->to(acc_dtype(input.scalar_type())).contiguous();
  }
  if (target.dim() > 0) pl.none_shape = {pl.rows};  // torch: a 0-d target gives a 0-d 'none' loss
  finish_plan(op, input, target, reduction, out_dtype, pl);
  return pl;
}

MarginRowsPlan plan_multilabel_margin(const char* op, const at::Tensor& input, const at::Tensor& target,
                                      int64_t reduction, c10::optional<c10::ScalarType> out_dtype) {
  MarginRowsPlan pl;
  pl.op = op;
  check_input_rows(op, input, pl);
  check_long_target(op, input, target);
  const bool ok = input.dim() <= 1 ? target.dim() <= 1 && target.numel() == pl.C
                                   : target.dim() == 2 && target.size(0) == pl.rows && target.size(1) == pl.C;
  TORCH_CHECK(ok, op, ": inconsistent target size: ", shape(target.sizes()),
              " for input of size: ", shape(input.sizes()),
              " (expected the input's shape, or a 0-d / 1-element target for a 0-d input)");
  if (target.dim() == 2) pl.none_shape = {pl.rows};  // torch: one loss per row of a 2-D target, else 0-d
  finish_plan(op, input, target, reduction, out_dtype, pl);
  return pl;
}

void raise_multi_margin_target(const char* op, int64_t value, int64_t C, int64_t position) {
  TORCH_CHECK(false, op, ": target ", num(value), " is out of range: expected a class index in [0, ", num(C),
              ") (at target position ", num(position), ")");
  __builtin_unreachable();
}

void raise_multilabel_target(const char* op, int64_t value, int64_t C, int64_t row, int64_t col) {
  TORCH_CHECK(false, op, ": target ", num(value), " at [", num(row), ", ", num(col),
              "] is out of range: expected a class index in [0, ", num(C),
              ") or -1 (which ends the row's target list); torch checks every entry, also those after the first "
              "-1");
  __builtin_unreachable();
}

MarginRun margin_forward_run(const MarginRowsPlan& p, bool grad_now, const char* op) {
  TORCH_CHECK(!grad_now || p.reduction != Reduction::None, op, ": grad_now needs reduction mean or sum");
  MarginRun run;
  run.grad = grad_buffer(p.input, grad_now);
  run.kscale = p.reduction == Reduction::Mean && p.rows > 0 ? 1.0 / static_cast<double>(p.rows) : 1.0;
  run.row_loss = at::empty({p.rows}, p.input.options().dtype(acc_dtype(p.input.scalar_type())));
  return run;
}

MarginRun margin_backward_run(const MarginRowsPlan& p, const at::Tensor& grad_loss, const char* op) {
  check_same_device(p.input, "input", grad_loss, "grad_loss", op);
  const auto adt = acc_dtype(p.input.scalar_type());
  MarginRun run;
  run.grad = empty_for_write_like(p.input);
  if (p.reduction == Reduction::None) {
    TORCH_CHECK(grad_loss.numel() == p.rows, op, ": grad_loss must have ", num(p.rows), " elements, got ",
                num(grad_loss.numel()));
    run.kdev = grad_loss.to(adt).contiguous().view({-1});
    run.single = false;
  } else {
    TORCH_CHECK(grad_loss.numel() == 1, op, ": grad_loss must have 1 element, got ", num(grad_loss.numel()));
    run.kdev = grad_loss.to(adt).reshape({1}).contiguous();
    run.single = true;
    if (p.reduction == Reduction::Mean && p.rows > 0) run.kscale = 1.0 / static_cast<double>(p.rows);
  }
  return run;
}

}  // namespace fastloss

TORCH_LIBRARY_FRAGMENT(fastloss, m) {
  // The public op (no gradient flags: its C++ autograd, autograd/margin_rows.cpp, decides them and calls the
  // internal op below):
  m.def(
      "multi_margin_loss(Tensor self, Tensor target, int p=1, float margin=1.0, Tensor? weight=None, "
      "int reduction=1, ScalarType? out_dtype=None) -> Tensor");
  m.def("multilabel_margin_loss(Tensor self, Tensor target, int reduction=1, ScalarType? out_dtype=None) -> Tensor");
  // Internal. One pass over each row: the loss and, with grad_now (mean/sum only), d(loss)/d(input) already
  // divided by the mean's denominator, so backward only scales it by grad_output. weight: per class,
  // any floating dtype (read in the accumulate type). Targets: int64 class indices of shape () / (N,).
  m.def(
      "_multi_margin_loss_forward(Tensor input, Tensor target, int p, float margin, Tensor? weight, int reduction, "
      "bool grad_now, ScalarType? out_dtype) -> (Tensor loss, Tensor grad_input)");
  m.def(
      "_multi_margin_loss_backward(Tensor grad_loss, Tensor input, Tensor target, int p, float margin, "
      "Tensor? weight, int reduction) -> Tensor grad_input");
  // target: the input's shape, int64; each row's class list ends at its first -1.
  m.def(
      "_multilabel_margin_loss_forward(Tensor input, Tensor target, int reduction, bool grad_now, "
      "ScalarType? out_dtype) -> (Tensor loss, Tensor grad_input)");
  m.def(
      "_multilabel_margin_loss_backward(Tensor grad_loss, Tensor input, Tensor target, int reduction) "
      "-> Tensor grad_input");
}
