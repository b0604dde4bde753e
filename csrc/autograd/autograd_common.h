// What every family's C++ autograd (csrc/autograd/<family>.cpp) shares: calling the ops below
// autograd, the fused backward (scale the gradient the forward already wrote), and the refusal of
// double backward. Autograd lives in C++ because torch.library's Python autograd wrapper cost
// ~150 us of host time per forward+backward (fill_defaults and friends): as much as the whole
// step of a small loss.
//
// Each Function returns only the loss; what else the op returns (the gradients the forward wrote,
// lse, total_weight) leaves forward through an `aux` out-argument, untracked. Marking those outputs
// non-differentiable instead leaves marks in the context that compiled autograd refuses
// (TORCH_INTERNAL_ASSERT(ctx_.non_differentiable_.empty()) in CppNode::compiled_args).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <torch/autograd.h>

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <utility>

namespace fastloss {

// The typed handle of an op, looked up once: FASTLOSS_OP(handle_fn, "fastloss::name", Signature).
#define FASTLOSS_OP(fn, name, Sig)                                                               \
  static const c10::TypedOperatorHandle<Sig>& fn() {                                             \
    static const auto h = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>(); \
    return h;                                                                                    \
  }

// d(loss)/d(input) = grad (written by the forward) * grad_loss, per (outer, inner) row or overall.
// In plain eager execution with a graph that autograd will not run again, this happens in place
// (a factor of exactly 1 is skipped on the device, no host sync) and `grad` itself is returned:
// no second gradient-sized buffer. Otherwise (retain_graph, tracing, fake or functional tensors)
// it is out of place.
at::Tensor scale_saved_grad(const at::Tensor& grad, const at::Tensor& grad_loss, int64_t classes, int64_t inner);

// Whether a call records an autograd graph: grad mode on and an input that requires grad, or an input
// carrying a forward-mode tangent (the Function refuses those: no jvp). Non-tensor arguments count as no.
inline bool wants_graph(const at::Tensor& t, bool grad_mode) {
  return t.defined() && ((grad_mode && t.requires_grad()) || t._fw_grad(/*level=*/0).defined());
}
inline bool wants_graph(const std::optional<at::Tensor>& t, bool grad_mode) {
  return t.has_value() && wants_graph(*t, grad_mode);
}
template <typename... Ts>
bool records_graph(const Ts&... tensors) {
  const bool grad_mode = at::GradMode::is_enabled();
  return (wants_graph(tensors, grad_mode) || ...);
}

// A public op's grad_now entry for `t`: its gradient is written by the forward itself (mean/sum only: with
// 'none' backward needs grad_output's values) when autograd will ask for it.
inline bool fused_grad(const at::Tensor& t, int64_t reduction) {
  return reduction != 0 && at::GradMode::is_enabled() && t.requires_grad();
}

// The op below autograd, for a call that records no graph: an autograd Function's context, saved
// data and node cost ~10 us of host time even then (inference, validation under no_grad), about
// what a small loss's whole kernel takes.
template <typename Sig, typename... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Sig>& op, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView below;
  return op.call(std::forward<Args>(args)...);
}

template <size_t... I>
auto loss_and_aux(const at::Tensor& loss, const torch::autograd::variable_list& aux, std::index_sequence<I...>) {
  return std::make_tuple(loss, aux[I]...);
}

// Fn::apply(args..., &aux) as the op returns it: the loss, then the NAux aux outputs (see the header comment).
template <typename Fn, size_t NAux, typename... Args>
auto apply_with_aux(Args&&... args) {
  torch::autograd::variable_list aux;
  const at::Tensor loss = Fn::apply(std::forward<Args>(args)..., &aux)[0];
  return loss_and_aux(loss, aux, std::make_index_sequence<NAux>{});
}

// Which gradients the forward wrote (grad_now), kept in the context for backward as one bit mask
// (each saved_data entry is a string-keyed map insert: host time a small loss notices).
template <size_t N>
void save_now(torch::autograd::AutogradContext* ctx, const std::array<bool, N>& now) {
  int64_t bits = 0;
  for (size_t j = 0; j < N; ++j) bits |= int64_t(now[j]) << j;
  ctx->saved_data["now"] = bits;
}

template <size_t N>
std::array<bool, N> load_now(torch::autograd::AutogradContext* ctx) {
  const int64_t bits = ctx->saved_data["now"].toInt();
  std::array<bool, N> now{};
  for (size_t j = 0; j < N; ++j) now[j] = (bits >> j) & 1;
  return now;
}

// Whether backward can need more than the gradients the forward wrote: an input that will ask for a
// gradient (requires grad now; needs_input_grad in backward is the same edge) without grad_now.
template <size_t N>
bool needs_unfused(const std::array<const at::Tensor*, N>& inputs, const std::array<bool, N>& now) {
  for (size_t j = 0; j < N; ++j)
    if (inputs[j] && inputs[j]->defined() && inputs[j]->requires_grad() && !now[j]) return true;
  return false;
}

// The backward of a loss whose forward may already have written some gradients (grad_now): for each
// input j that needs one, out[j] is its saved buffer scaled by grad_loss when now[j], else it is left
// to the family's backward op -- the returned mask.
template <size_t N>
std::array<bool, N> take_fused_grads(const std::array<bool, N>& need, const std::array<bool, N>& now,
                                     const at::Tensor* saved_grads, const at::Tensor& grad_loss,
                                     torch::autograd::variable_list& out) {
  std::array<bool, N> rest{};
  for (size_t j = 0; j < N; ++j) {
    if (need[j] && now[j]) out[j] = scale_saved_grad(saved_grads[j], grad_loss, 1, 1);
    rest[j] = need[j] && !now[j];
  }
  return rest;
}

inline bool any_of(const bool* m, size_t n) {
  for (size_t j = 0; j < n; ++j)
    if (m[j]) return true;
  return false;
}

// Raises when backward runs with grad mode on (create_graph=True): the first derivative comes from
// a fused kernel and has no derivative of its own.
void refuse_double_backward(const char* name);

}  // namespace fastloss
