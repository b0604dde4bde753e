// Schemas of the backward used by every fused loss: the forward already wrote d(loss)/d(input), and
// backward multiplies it by grad_output. grad is viewed as (outer, classes, inner); grad_loss is a
// single element (mean/sum) or one value per (outer, inner) row (reduction='none').
#include "ops/grad_scale.h"

#include <torch/library.h>

#include "common/common.h"
#include "common/errors.h"

namespace fastloss {

void check_scale_grad_args(const at::Tensor& grad, const at::Tensor& grad_loss, int64_t classes, int64_t inner,
                           const char* op) {
  TORCH_CHECK(grad.is_contiguous(), op, ": grad must be contiguous");
  TORCH_CHECK(classes >= 0 && inner >= 0, op, ": classes and inner must be non-negative");
  check_same_device(grad, "grad", grad_loss, "grad_loss", op);
  // the kernels index the factor by element / (classes * inner): a grad that is not whole rows would read past it
  const int64_t ci = classes * inner;
  TORCH_CHECK(ci > 0 ? grad.numel() % ci == 0 : grad.numel() == 0, op, ": grad has ", num(grad.numel()),
              " elements, not a multiple of classes * inner = ", num(ci));
  const int64_t rows = ci == 0 ? 0 : grad.numel() / ci * inner;
  TORCH_CHECK(grad_loss.numel() == 1 || grad_loss.numel() == rows, op, ": grad_loss must have 1 or ", num(rows),
              " elements, got ", num(grad_loss.numel()));
}

}  // namespace fastloss

TORCH_LIBRARY_FRAGMENT(fastloss, m) {
  // In place, used when autograd will not run this node again: rows whose factor is exactly 1 are
  // skipped on the device (no host sync), so loss.backward() after a mean/sum costs no pass at all.
  m.def("scale_grad_(Tensor(a!) grad, Tensor grad_loss, int classes, int inner) -> ()");
  // Out of place, for retain_graph=True and for anything that must keep the saved gradient intact.
  m.def("scale_grad(Tensor grad, Tensor grad_loss, int classes, int inner) -> Tensor");
}
