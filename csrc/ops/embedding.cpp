// Schemas of the row-wise embedding losses (ops/embedding.h) and the plan both devices share.
#include "ops/embedding.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/alloc.h"
#include "common/errors.h"

namespace fastloss {

RowPlan plan_rows(const char* op, std::vector<at::Tensor> inputs, const c10::optional<at::Tensor>& target,
                  int64_t reduction, c10::optional<c10::ScalarType> out_dtype) {
  RowPlan p;
  p.reduction = to_reduction(reduction, op);
  const at::Tensor& x = inputs[0];
  for (size_t j = 0; j < inputs.size(); ++j) {
    const at::Tensor& t = inputs[j];
    check_floating(t, "input", op);
    check_same_device(x, "the first input", t, "another input", op);
    TORCH_CHECK(t.scalar_type() == x.scalar_type() && t.sizes() == x.sizes(), op,
                ": expected inputs of one dtype and shape (broadcast them first), got ", x.scalar_type(), " ",
                shape(x.sizes()), " and ", t.scalar_type(), " ", shape(t.sizes()));
  }
  if (x.dim() > 0) {
    p.D = x.size(-1);
    p.row_shape = x.sizes().slice(0, x.dim() - 1).vec();
  }
  for (int64_t s : p.row_shape) p.rows *= s;
  for (auto& t : inputs) p.in.push_back(t.contiguous());
  const auto adt = acc_dtype(x.scalar_type());
  if (target.has_value() && target->defined()) {
    check_same_device(x, "input", *target, "target", op);
    TORCH_CHECK(target->numel() == p.rows, op, ": expected a target with one value per row (", num(p.rows),
                "), got shape ", shape(target->sizes()));
    p.target = target->to(adt).contiguous();
  }
  p.out_dtype = out_dtype.value_or(x.scalar_type());
  TORCH_CHECK(p.out_dtype == x.scalar_type() || p.out_dtype == adt, op, ": out_dtype must be the input's dtype or ",
              adt, ", got ", p.out_dtype);
  return p;
}

at::Tensor row_backward_factor(const RowPlan& p, const at::Tensor& grad_loss, const char* op) {
  check_same_device(p.in[0], "input", grad_loss, "grad_loss", op);
  const auto adt = acc_dtype(p.in[0].scalar_type());
  if (p.reduction == Reduction::None) {
    TORCH_CHECK(grad_loss.numel() == p.rows, op, ": grad_loss must have ", num(p.rows), " elements, got ",
                num(grad_loss.numel()));
    return grad_loss.to(adt).contiguous().view({-1});
  }
  TORCH_CHECK(grad_loss.numel() == 1, op, ": grad_loss must have 1 element, got ", num(grad_loss.numel()));
  at::Tensor k = grad_loss.to(adt).reshape({1});
  return p.reduction == Reduction::Mean ? k / static_cast<double>(p.rows) : k;
}

}  // namespace fastloss

TORCH_LIBRARY_FRAGMENT(fastloss, m) {
  // The public op (no gradient flags: its C++ autograd, autograd/embedding.cpp, decides them and calls the
  // internal op below):
  m.def(
      "triplet_margin_loss(Tensor anchor, Tensor positive, Tensor negative, float margin=1.0, float p=2.0, "
      "float eps=1e-06, bool swap=False, int reduction=1, ScalarType? out_dtype=None) -> Tensor");
  m.def(
      "cosine_embedding_loss(Tensor input1, Tensor input2, Tensor target, float margin=0.0, int reduction=1, "
      "ScalarType? out_dtype=None) -> Tensor");
  // Internal. Forward: one pass over each row computes its distances and loss; with grad_now (mean/sum only)
  // a second pass over the same row, while it is still in cache, writes the gradients already
  // divided by the mean's denominator, so backward only scales them by grad_output.
  m.def(
      "_triplet_margin_forward(Tensor anchor, Tensor positive, Tensor negative, float margin, float p, float eps, "
      "bool swap, int reduction, bool[3] grad_now, ScalarType? out_dtype) "
      "-> (Tensor loss, Tensor grad_anchor, Tensor grad_positive, Tensor grad_negative)");
  m.def(
      "_triplet_margin_backward(Tensor grad_loss, Tensor anchor, Tensor positive, Tensor negative, float margin, "
      "float p, float eps, bool swap, int reduction, bool[3] output_mask) "
      "-> (Tensor grad_anchor, Tensor grad_positive, Tensor grad_negative)");
  // target: one value per row (1, -1, or anything else for a zero loss).
  m.def(
      "_cosine_embedding_forward(Tensor input1, Tensor input2, Tensor target, float margin, int reduction, "
      "bool[2] grad_now, ScalarType? out_dtype) -> (Tensor loss, Tensor grad_input1, Tensor grad_input2)");
  m.def(
      "_cosine_embedding_backward(Tensor grad_loss, Tensor input1, Tensor input2, Tensor target, float margin, "
      "int reduction, bool[2] output_mask) -> (Tensor grad_input1, Tensor grad_input2)");
}
