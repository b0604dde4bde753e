// Schema of ctc_loss (ops/ctc.h) and the plan both devices share: every length and shape check, on
// the host, before any kernel runs.
#include "ops/ctc.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/errors.h"

namespace fastloss {

namespace {

constexpr const char* kOp = "fastloss.ctc_loss";

bool is_integral(c10::ScalarType t) { return c10::isIntegralType(t, /*includeBool=*/false); }

at::Tensor host_lengths(const at::Tensor& len, const char* name, int64_t N) {
  TORCH_CHECK(is_integral(len.scalar_type()), kOp, ": ", name, " must be integers (int32 or int64), got ",
              len.scalar_type());
  TORCH_CHECK(len.numel() == N, kOp, ": ", name, " must have one value per batch element (", num(N), "), got ",
              num(len.numel()));
  return len.to(at::kCPU, at::kLong).contiguous().view({-1});
}

template <typename target_t>
void check_host_targets(const CtcPlan& p) {
  const target_t* tg = p.targets.const_data_ptr<target_t>();
  const int64_t* tl = p.meta[1].const_data_ptr<int64_t>();
  const int64_t* off = p.meta[2].const_data_ptr<int64_t>();
  for (int64_t n = 0; n < p.N; ++n)
    for (int64_t i = 0; i < tl[n]; ++i) {
      const int64_t v = static_cast<int64_t>(tg[off[n] + i]);
      if (!ctc_label_ok(v, p.C, p.blank)) raise_bad_ctc_target(p, off[n] + i, v);
    }
}

}  // namespace

void raise_bad_ctc_target(const CtcPlan& p, int64_t pos, int64_t value) {
  const int64_t* tl = p.meta[1].const_data_ptr<int64_t>();
  const int64_t* off = p.meta[2].const_data_ptr<int64_t>();
  int64_t n = 0;
  while (n < p.N && !(pos >= off[n] && pos < off[n] + tl[n])) ++n;
  raise_ctc_label(value, n < p.N ? n : -1, n < p.N ? pos - off[n] : 0, pos, p.C, p.blank);
}

void raise_ctc_label(int64_t value, int64_t sample, int64_t label, int64_t pos, int64_t C, int64_t blank) {
  const std::string where = sample >= 0 ? "sample " + num(sample) + ", label " + num(label) : "position " + num(pos);
  TORCH_CHECK_INDEX(false, kOp, ": targets holds ", num(value), " at ", where, ": labels must be in [0, ", num(C),
                    ") and differ from blank (", num(blank), ")");
  __builtin_unreachable();
}

CtcPlan plan_ctc(const at::Tensor& log_probs, const at::Tensor& targets, const at::Tensor& input_lengths,
                 const at::Tensor& target_lengths, int64_t blank, int64_t reduction, bool zero_infinity) {
  CtcPlan p;
  p.reduction = to_reduction(reduction, kOp);
  p.zero_infinity = zero_infinity;
  check_floating(log_probs, "log_probs", kOp);
  TORCH_CHECK(log_probs.dim() == 3, kOp, ": log_probs must be (T, N, C), got shape ", shape(log_probs.sizes()));
  TORCH_CHECK(log_probs.numel() > 0, kOp, ": log_probs tensor must not be empty, got shape ", shape(log_probs.sizes()));
  p.T = log_probs.size(0);
  p.N = log_probs.size(1);
  p.C = log_probs.size(2);
  TORCH_CHECK(blank >= 0 && blank < p.C, kOp, ": blank must be in label range [0, ", num(p.C), "), got ", num(blank));
  p.blank = blank;
  TORCH_CHECK(is_integral(targets.scalar_type()), kOp, ": targets must be integers (int32 or int64), got ",
              targets.scalar_type());
  TORCH_CHECK(targets.device() == log_probs.device() || targets.device().is_cpu(), kOp,
              ": targets must be on the CPU or on log_probs' device (", log_probs.device().str(), "), got ",
              targets.device().str());
  TORCH_CHECK(targets.dim() == 1 || (targets.dim() == 2 && targets.size(0) == p.N), kOp,
              ": targets must be (N, S) padded or 1-D concatenated, with N = ", num(p.N), ", got shape ",
              shape(targets.sizes()));

  const at::Tensor il = host_lengths(input_lengths, "input_lengths", p.N);
  const at::Tensor tl = host_lengths(target_lengths, "target_lengths", p.N);
  p.meta = at::empty({3, p.N}, il.options());
  int64_t* m = p.meta.mutable_data_ptr<int64_t>();
  const int64_t* ilp = il.const_data_ptr<int64_t>();
  const int64_t* tlp = tl.const_data_ptr<int64_t>();
  const bool padded = targets.dim() == 2;
  const int64_t width = padded ? targets.size(1) : 0;
  int64_t total = 0;
  for (int64_t n = 0; n < p.N; ++n) {
    TORCH_CHECK(ilp[n] >= 0 && ilp[n] <= p.T, kOp, ": input_lengths[", num(n), "] = ", num(ilp[n]),
                " must be in [0, T] with T = ", num(p.T));
    TORCH_CHECK(tlp[n] >= 0, kOp, ": target_lengths[", num(n), "] = ", num(tlp[n]), " must be non-negative");
    TORCH_CHECK(!padded || tlp[n] <= width, kOp, ": target_lengths[", num(n), "] = ", num(tlp[n]),
                " exceeds the padded targets' width S = ", num(width));
    m[n] = ilp[n];
    m[p.N + n] = tlp[n];
    m[2 * p.N + n] = padded ? n * width : total;
    total += tlp[n];
    p.max_target = std::max(p.max_target, tlp[n]);
  }
  TORCH_CHECK(padded || targets.numel() == total, kOp,
              ": 1-D (concatenated) targets must hold sum(target_lengths) = ", num(total), " labels, got ",
              num(targets.numel()));

  const auto tdt = targets.scalar_type();
  at::Tensor tg = targets.contiguous().view({-1});
  if (tdt != at::kInt && tdt != at::kLong) tg = tg.to(at::kLong);
  p.targets = tg;
  if (tg.device().is_cpu()) {
    if (tg.scalar_type() == at::kInt)
      check_host_targets<int32_t>(p);
    else
      check_host_targets<int64_t>(p);
    p.targets_checked = true;
  }
  if (!tg.device().is_cpu() || !log_probs.device().is_cpu()) p.targets = tg.to(log_probs.device());
  p.log_probs = log_probs.contiguous();
  return p;
}

}  // namespace fastloss

TORCH_LIBRARY_FRAGMENT(fastloss, m) {
  // The public op (no gradient flags: its C++ autograd, autograd/ctc.cpp, decides them and calls the
  // internal op below):
  m.def(
      "ctc_loss(Tensor log_probs, Tensor targets, Tensor input_lengths, Tensor target_lengths, int blank=0, "
      "int reduction=1, bool zero_infinity=False) -> Tensor");
  // Internal. log_probs (T, N, C); targets padded (N, S) or concatenated 1-D; lengths: one integer per sample,
  // on any device (read on the host). Returns the loss (reduced, or per sample for reduction 0) and,
  // with grad_now, d(loss)/d(log_probs) for grad_output = 1 (per sample for 'none'), which backward
  // scales by grad_output (fastloss::scale_grad_); without grad_now an empty grad.
  m.def(
      "_ctc_loss_forward(Tensor log_probs, Tensor targets, Tensor input_lengths, Tensor target_lengths, int blank, "
      "int reduction, bool zero_infinity, bool grad_now) -> (Tensor loss, Tensor grad)");
}
