// Schemas of the cross_entropy family, and the argument checks both devices share.
#include "ops/cross_entropy.h"

#include <torch/library.h>

#include "common/errors.h"

namespace fastloss {

CrossEntropyPlan plan_cross_entropy(const at::Tensor& input, const at::Tensor& target,
                                    const c10::optional<at::Tensor>& weight, int64_t reduction, int64_t ignore_index,
                                    double label_smoothing, bool allow_prob, const char* op) {
  CrossEntropyPlan p;
  p.reduction = to_reduction(reduction, op);
  TORCH_CHECK_VALUE(input.dim() >= 1, op, ": expected input with 1 or more dimensions (got ", num(input.dim()), ")");
  check_floating(input, "input", op);
  check_same_device(input, "input", target, "target", op);
  const int64_t C = input.dim() == 1 ? input.size(0) : input.size(1);
  p.classes = C;
  p.outer = input.dim() == 1 ? 1 : input.size(0);
  for (int64_t d = 2; d < input.dim(); ++d) p.inner *= input.size(d);

  p.prob_target = allow_prob && input.sizes() == target.sizes();
  if (p.prob_target) {
    TORCH_CHECK(at::isFloatingType(target.scalar_type()), op,
                ": Expected floating point type for target with class probabilities, got ", target.scalar_type());
    check_floating(target, "target", op);
    TORCH_CHECK(ignore_index < 0, op,
                ": ignore_index is not supported for floating point target (got ignore_index=", num(ignore_index), ")");
  } else {
    check_class_target_dtype(target, op);
    if (input.dim() == 1) {
      TORCH_CHECK_VALUE(target.numel() == 1 && target.dim() <= 1, op, ": unbatched input of shape ",
                        shape(input.sizes()), " expects a 0-dimensional target, got shape ", shape(target.sizes()));
    } else {
      TORCH_CHECK_VALUE(target.dim() >= 1 && target.size(0) == input.size(0), op, ": Expected input batch_size (",
                        num(input.size(0)), ") to match target batch_size (",
                        num(target.dim() >= 1 ? target.size(0) : int64_t(0)), ").");
      std::vector<int64_t> expected{input.size(0)};
      for (int64_t d = 2; d < input.dim(); ++d) expected.push_back(input.size(d));
      TORCH_CHECK(target.sizes().vec() == expected, op, ": Expected target size ", shape(expected), ", got ",
                  shape(target.sizes()),
                  input.dim() == 2 && target.dim() == 2
                      ? " (0D or 1D target tensor expected, multi-target not supported)"
                      : "");
    }
  }
  if (weight.has_value() && weight->defined()) {
    const auto& w = *weight;
    TORCH_CHECK(w.dim() == 1 && w.numel() == C, op, ": weight tensor should be defined either for all ", num(C),
                " classes or no classes but got weight tensor of shape: ", shape(w.sizes()));
    check_floating(w, "weight", op);
    check_same_device(input, "input", w, "weight", op);
  }
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, op,
              ": label_smoothing must be between 0.0 and 1.0. Got: ", num(label_smoothing));

  if (input.dim() > 1) {  // unbatched input: a 0-dim result, whatever the target's shape (as torch)
    p.row_shape.push_back(input.size(0));
    for (int64_t d = 2; d < input.dim(); ++d) p.row_shape.push_back(input.size(d));
  }
  return p;
}

std::vector<int64_t> loss_shape(const CrossEntropyPlan& p) {
  if (p.reduction == Reduction::None) return p.row_shape;
  return {};
}

TORCH_LIBRARY_FRAGMENT(fastloss, m) {
  // The public op (no gradient flags: its C++ autograd, autograd/cross_entropy.cpp, decides them and calls the
  // internal op below):
  m.def(
      "cross_entropy(Tensor input, Tensor target, Tensor? weight=None, int reduction=1, int ignore_index=-100, "
      "float label_smoothing=0.0, ScalarType? out_dtype=None) -> Tensor");
  // Internal (called by the autograd only). Forward: one pass over the logits computes the loss and,
  // when compute_grad, d(loss)/d(input)
  // already divided by the mean's denominator; backward only multiplies it by grad_output.
  // lse (log-sum-exp per row) is returned when save_lse, for the gradient of probability targets.
  m.def(
      "_cross_entropy_forward(Tensor input, Tensor target, Tensor? weight, int reduction, int ignore_index, "
      "float label_smoothing, bool compute_grad, bool save_lse, ScalarType? out_dtype) "
      "-> (Tensor loss, Tensor grad_input, Tensor lse)");
  // d(loss)/d(target) for probability targets: grad_loss * (1-eps) w_c (lse - x_c) [/ rows for mean].
  m.def(
      "_cross_entropy_target_backward(Tensor grad_loss, Tensor input, Tensor lse, Tensor? weight, int reduction, "
      "float label_smoothing) -> Tensor");
  // nll_loss reads only the target entries of its input, so its gradient is left to backward.
  m.def(
      "nll_loss(Tensor input, Tensor target, Tensor? weight, int reduction, int ignore_index, ScalarType? out_dtype) "
      "-> (Tensor loss, Tensor total_weight)");
  m.def(
      "nll_loss_backward(Tensor grad_loss, Tensor input, Tensor target, Tensor? weight, int reduction, "
      "int ignore_index, Tensor total_weight) -> Tensor");
}

}  // namespace fastloss
