// Schemas of the pointwise family (ops/pointwise.h) and the argument checks both devices share.
#include "ops/pointwise.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/alloc.h"
#include "common/errors.h"

namespace fastloss {

PwKind to_pw_kind(int64_t kind) {
  TORCH_CHECK_VALUE(kind >= 0 && kind < kPwKinds, "fastloss._pointwise_forward: unknown kind ", num(kind));
  return static_cast<PwKind>(kind);
}

const char* pw_name(PwKind k) {
  switch (k) {
    case PwKind::L1: return "fastloss.l1_loss";
    case PwKind::MSE: return "fastloss.mse_loss";
    case PwKind::SmoothL1: return "fastloss.smooth_l1_loss";
    case PwKind::Huber: return "fastloss.huber_loss";
    case PwKind::MarginRanking: return "fastloss.margin_ranking_loss";
    case PwKind::HingeEmbedding: return "fastloss.hinge_embedding_loss";
    case PwKind::SoftMargin: return "fastloss.soft_margin_loss";
    case PwKind::KLDiv: return "fastloss.kl_div";
    case PwKind::BCE: return "fastloss.binary_cross_entropy";
    case PwKind::BCEWithLogits: return "fastloss.binary_cross_entropy_with_logits";
    case PwKind::PoissonNLL: return "fastloss.poisson_nll_loss";
    case PwKind::GaussianNLL: return "fastloss.gaussian_nll_loss";
    default: return "fastloss.sigmoid_focal_loss";
  }
}

// t (the input's shape) seen as a broadcast of one dense block of its dimensions -- stride 0 or size 1
// everywhere else, as expand() leaves pos_weight (C,), var (N, 1) or a scalar var --: that block as a
// 1-D tensor, described by *b. Any other layout: t made contiguous (b dense). Saves the full-size copy
// (and its read) that materializing the broadcast would cost.
at::Tensor pw_broadcast_source(const at::Tensor& t, PwBcast* b) {
  *b = PwBcast{};
  if (t.is_contiguous() || t.numel() == 0) return t.contiguous();
  int64_t k = t.dim() - 1, rep = 1, per = 1;
  for (; k >= 0 && (t.stride(k) == 0 || t.size(k) == 1); --k) rep *= t.size(k);  // broadcast inner dims
  for (; k >= 0 && (t.size(k) == 1 || t.stride(k) == per); --k) per *= t.size(k);  // the dense block
  for (; k >= 0; --k)  // outer dims: broadcast only
    if (t.stride(k) != 0 && t.size(k) != 1) return t.contiguous();
  b->rep = rep;
  b->per = per;
  return t.as_strided({per}, {1});
}

PwPlan plan_pointwise(const at::Tensor& a, const at::Tensor& b, const c10::optional<at::Tensor>& c, int64_t kind,
                      double param, int64_t reduction, c10::optional<c10::ScalarType> out_dtype,
                      const c10::optional<at::Tensor>& d) {
  const PwKind k = to_pw_kind(kind);
  const char* op = pw_name(k);
  check_floating(a, "input", op);
  check_same_device(a, "input", b, "target", op);
  TORCH_CHECK(b.scalar_type() == a.scalar_type(), op, ": expected target of dtype ", a.scalar_type(), ", got ",
              b.scalar_type());
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": expected input and target of one shape (broadcast them first), got ",
              shape(a.sizes()), " and ", shape(b.sizes()));
  if (c.has_value() && c->defined()) {
    check_same_device(a, "input", *c, "third tensor", op);
    TORCH_CHECK(c->scalar_type() == a.scalar_type() && c->sizes() == a.sizes(), op,
                ": the third tensor must have the input's dtype and shape ", shape(a.sizes()), ", got ",
                c->scalar_type(), " ", shape(c->sizes()));
  }
  const bool has_d = d.has_value() && d->defined();
  if (has_d) {
    check_same_device(a, "input", *d, "fourth tensor", op);
    TORCH_CHECK(d->scalar_type() == a.scalar_type() && d->sizes() == a.sizes(), op,
                ": the fourth tensor must have the input's dtype and shape ", shape(a.sizes()), ", got ",
                d->scalar_type(), " ", shape(d->sizes()));
  }
  TORCH_CHECK(!has_d || k == PwKind::BCEWithLogits, op, ": takes no fourth tensor");
  TORCH_CHECK(k != PwKind::BCEWithLogits || (param != 0.0) == has_d, op,
              ": param (has pos_weight) must say whether the fourth tensor is given");
  TORCH_CHECK(k != PwKind::SmoothL1 || param > 0.0, op, ": beta must be positive (beta == 0 is l1_loss), got ",
              num(param));
  TORCH_CHECK(k != PwKind::Huber || param > 0.0, "huber_loss does not support non-positive values for delta.");
  PwPlan p;
  p.kind = k;
  p.reduction = to_reduction(reduction, op);
  p.n = a.numel();
  p.a = a.contiguous();
  p.b = b.contiguous();
  const bool has_c = c.has_value() && c->defined();
  p.by_weight_sum = pw_mean_by_weight_sum(k, has_c) && p.reduction == Reduction::Mean;
  if (has_c) p.c = p.by_weight_sum ? c->contiguous() : pw_broadcast_source(*c, &p.cb);  // sum(c) reads it densely
  if (has_d) p.d = pw_broadcast_source(*d, &p.db);
  p.out_dtype = out_dtype.value_or(a.scalar_type());
  p.out_acc = p.out_dtype != a.scalar_type();
  TORCH_CHECK(!p.out_acc || p.out_dtype == acc_dtype(a.scalar_type()), op, ": out_dtype must be the input's dtype or ",
              acc_dtype(a.scalar_type()), ", got ", p.out_dtype);
  return p;
}

void pw_bce_raise(const PwPlan& p, int64_t code) {
  if (code < 0) return;
  const bool target = code % 2 != 0;
  const int64_t pos = code / 2;
  raise_bce_domain(pw_name(p.kind), target, pos, (target ? p.b : p.a).reshape({-1})[pos].item<double>());
}

void raise_bce_domain(const char* op, bool target, int64_t pos, double value) {
  TORCH_CHECK(false, op, ": all elements of ", target ? "target" : "input", " should be between 0 and 1 (",
              target ? "target" : "input", ".flatten()[", num(pos), "] = ", num(value), ")");
  __builtin_unreachable();
}

at::Tensor pw_single_factor(const PwPlan& p, const at::Tensor& grad_loss, const at::Tensor& weight_sum) {
  at::Tensor k = grad_loss.to(acc_dtype(p.a.scalar_type())).reshape({1});
  if (p.reduction != Reduction::Mean) return k;
  if (p.by_weight_sum) return k / weight_sum;
  return k / static_cast<double>(p.n);  // n == 0: inf, never read
}

// Argument names and defaults as torch's (aten's schemas where they exist; torchvision's for sigmoid_focal_loss,
// whose alpha < 0 means no alpha term).
const char* const kPwNamedSchemas[] = {
    "l1_loss(Tensor self, Tensor target, Tensor? weight=None, int reduction=1, ScalarType? out_dtype=None) -> Tensor",
    "mse_loss(Tensor self, Tensor target, Tensor? weight=None, int reduction=1, ScalarType? out_dtype=None) -> Tensor",
    "smooth_l1_loss(Tensor self, Tensor target, int reduction=1, float beta=1.0, ScalarType? out_dtype=None) -> Tensor",
    "huber_loss(Tensor self, Tensor target, Tensor? weight=None, int reduction=1, float delta=1.0, "
    "ScalarType? out_dtype=None) -> Tensor",
    "margin_ranking_loss(Tensor input1, Tensor input2, Tensor target, float margin=0.0, int reduction=1, "
    "ScalarType? out_dtype=None) -> Tensor",
    "hinge_embedding_loss(Tensor self, Tensor target, float margin=1.0, int reduction=1, "
    "ScalarType? out_dtype=None) -> Tensor",
    "soft_margin_loss(Tensor self, Tensor target, int reduction=1, ScalarType? out_dtype=None) -> Tensor",
    "kl_div(Tensor self, Tensor target, int reduction=1, bool log_target=False, ScalarType? out_dtype=None) -> Tensor",
    "binary_cross_entropy(Tensor self, Tensor target, Tensor? weight=None, int reduction=1, "
    "ScalarType? out_dtype=None) -> Tensor",
    "binary_cross_entropy_with_logits(Tensor self, Tensor target, Tensor? weight=None, Tensor? pos_weight=None, "
    "int reduction=1, ScalarType? out_dtype=None) -> Tensor",
    "poisson_nll_loss(Tensor input, Tensor target, bool log_input=True, bool full=False, float eps=1e-08, "
    "int reduction=1, ScalarType? out_dtype=None) -> Tensor",
    "gaussian_nll_loss(Tensor input, Tensor target, Tensor var, bool full=False, float eps=1e-06, int reduction=1, "
    "ScalarType? out_dtype=None) -> Tensor",
    "sigmoid_focal_loss(Tensor inputs, Tensor targets, float alpha=0.25, float gamma=2.0, int reduction=0, "
    "ScalarType? out_dtype=None) -> Tensor",
};

}  // namespace fastloss

TORCH_LIBRARY_FRAGMENT(fastloss, m) {
  using fastloss::kPwNamedSchemas;
  // The public ops, one per loss, with torch's typed arguments (aten's schema where it has one, e.g.
  // smooth_l1_loss(self, target, reduction, beta)); what the profiler, torch.export and dynamo's graphs
  // show. Each maps its arguments onto the one engine below (autograd/pointwise.cpp, PwNamed<K>).
  // Inputs arrive broadcast to one shape (fastloss.functional does it, as torch's Python does); reduction
  // is ATen's enum; out_dtype: the loss's dtype (float32 for half/bfloat16 under autocast), None = the
  // input's. The gradient flags are decided by the C++ autograd, never by the caller.
  for (const char* schema : kPwNamedSchemas) m.def(schema);
  // The engine, internal (called only by the autograd above):
  // d (pos_weight, never differentiated) and param2: see ops/pointwise.h. binary_cross_entropy's
  // forward also checks that input and target lie in [0, 1] (on CUDA reported without a host sync).
  // Forward: one pass reads a, b (and c) once and writes the loss (per element for 'none', else the
  // reduced scalar through a fixed-order two-stage sum). grad_now[i] also writes d(loss)/d(a|b|c)
  // in the same pass, already divided by the mean's denominator (reduction mean/sum only, and not
  // for l1/mse with a weight, whose denominator sum(weight) is not known before the pass ends);
  // backward then only scales it by grad_output. Unrequested gradients come back as empty tensors.
  m.def(
      "_pointwise_forward(Tensor a, Tensor b, Tensor? c, int kind, float param, int reduction, bool[3] grad_now, "
      "ScalarType? out_dtype, Tensor? d=None, float param2=0.0) -> (Tensor loss, Tensor grad_a, Tensor grad_b, "
      "Tensor grad_c)");
  // Backward from scratch (reduction 'none', or gradients the forward did not write): reads a, b (c)
  // and grad_loss once, writes each requested gradient once. `loss` is the forward's result, used
  // only by the weight gradient of weighted-mean l1/mse: grad_loss * (l_i - loss) / sum(weight).
  m.def(
      "_pointwise_backward(Tensor grad_loss, Tensor a, Tensor b, Tensor? c, int kind, float param, "
      "int reduction, Tensor loss, bool[3] output_mask, Tensor? d=None, float param2=0.0) -> (Tensor grad_a, "
      "Tensor grad_b, Tensor grad_c)");
}
