#include "autograd/autograd_common.h"

#include <ATen/FunctionalTensorWrapper.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/graph_task.h>

namespace fastloss {

namespace {

using ScaleInplaceSig = void(const at::Tensor&, const at::Tensor&, int64_t, int64_t);
using ScaleSig = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t);
FASTLOSS_OP(scale_inplace_op, "fastloss::scale_grad_", ScaleInplaceSig)
FASTLOSS_OP(scale_op, "fastloss::scale_grad", ScaleSig)

// Plain eager tensors: no dispatch mode (make_fx, fake mode), no Python subclass, not functional.
bool plain_eager(const at::Tensor& t) {
  if (c10::impl::TorchDispatchModeTLS::stack_len() > 0) return false;
  if (t.key_set().has_any(c10::DispatchKeySet({c10::DispatchKey::Python, c10::DispatchKey::Functionalize})))
    return false;
  return !at::functionalization::impl::isFunctionalTensor(t);
}

// A grad_output batched by vmap (legacy Batched: torch.autograd.grad(is_grads_batched=True),
// torch.autograd.functional.jacobian(vectorize=True); FuncTorchBatched: torch.func.vmap over a backward):
// vmap has no rule for fastloss's ops (it would run one call per batch entry) and cannot run the in-place
// one at all.
bool vmapped(const at::Tensor& t) {
  return t.key_set().has_any(c10::DispatchKeySet({c10::DispatchKey::Batched, c10::DispatchKey::FuncTorchBatched}));
}

}  // namespace

at::Tensor scale_saved_grad(const at::Tensor& grad, const at::Tensor& grad_loss, int64_t classes, int64_t inner) {
  if (vmapped(grad_loss)) {  // the same product in torch ops, which vmap batches (sizes here are per entry)
    if (grad_loss.numel() == 1) return grad.mul(grad_loss.reshape({})).to(grad.scalar_type());
    return grad.reshape({-1, classes, inner})
        .mul(grad_loss.reshape({-1, 1, inner}))
        .to(grad.scalar_type())
        .view(grad.sizes());
  }
  if (plain_eager(grad) && !torch::autograd::get_current_graph_task_keep_graph()) {
    scale_inplace_op().call(grad, grad_loss, classes, inner);
    return grad;
  }
  return scale_op().call(grad, grad_loss, classes, inner);
}

void refuse_double_backward(const char* name) {
  TORCH_CHECK(!at::GradMode::is_enabled(), "fastloss.", name,
              ": double backward (create_graph=True) is not supported: the first derivative comes from a fused "
              "kernel. Use torch.nn.functional.",
              name,
              " where second derivatives are needed, or torch.func (grad, hessian, ...), under which fastloss "
              "calls torch's loss.");
}

}  // namespace fastloss
