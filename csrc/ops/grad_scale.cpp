// Schemas of the backward used by every fused loss: the forward already wrote d(loss)/d(input), and
// backward multiplies it by grad_output. grad is viewed as (outer, classes, inner); grad_loss is a
// single element (mean/sum) or one value per (outer, inner) row (reduction='none').
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastloss, m) {
  // In place, used when autograd will not run this node again: rows whose factor is exactly 1 are
  // skipped on the device (no host sync), so loss.backward() after a mean/sum costs no pass at all.
  m.def("scale_grad_(Tensor(a!) grad, Tensor grad_loss, int classes, int inner) -> ()");
  // Out of place, for retain_graph=True and for anything that must keep the saved gradient intact.
  m.def("scale_grad(Tensor grad, Tensor grad_loss, int classes, int inner) -> Tensor");
}
