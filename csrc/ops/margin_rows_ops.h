// The op kernels of the margin_rows family, written once for both devices. Dev (cpu/margin_rows.cpp,
// cuda/margin_rows.cu) supplies
//   multi_margin(plan, p, margin, run) / multilabel(plan, run): run the row kernel, returning the first
//     invalid flat target position or -1 (CUDA: always -1, its error is reported from the device
//     without a host sync, common/device_errors.h);
//   finish(plan, row_loss): the per-row losses to the op's result (fixed-order reduction).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "common/errors.h"
#include "ops/margin_rows.h"

namespace fastloss {

template <class Dev>
struct MarginRowsOps {
  using Tensor = at::Tensor;

  static std::tuple<Tensor, Tensor> multi_margin(const Tensor& input, const Tensor& target, int64_t p, double margin,
                                                 const c10::optional<Tensor>& weight, int64_t reduction, bool grad_now,
                                                 c10::optional<c10::ScalarType> out_dtype) {
    const char* op = "fastloss.multi_margin_loss";
    const MarginRowsPlan pl = plan_multi_margin(op, input, target, p, weight, reduction, out_dtype);
    MarginRun run = margin_forward_run(pl, grad_now, op);
    const int64_t bad = Dev::multi_margin(pl, static_cast<int>(p), margin, run);
    Tensor loss = Dev::finish(pl, run.row_loss);
    check_mm(op, pl, bad);
    return {loss, run.grad};
  }

  static Tensor multi_margin_backward(const Tensor& grad_loss, const Tensor& input, const Tensor& target, int64_t p,
                                      double margin, const c10::optional<Tensor>& weight, int64_t reduction) {
    const char* op = "fastloss.multi_margin_loss_backward";
    const MarginRowsPlan pl = plan_multi_margin(op, input, target, p, weight, reduction, c10::nullopt);
    MarginRun run = margin_backward_run(pl, grad_loss, op);
    const int64_t bad = Dev::multi_margin(pl, static_cast<int>(p), margin, run);
    check_mm(op, pl, bad);
    return run.grad;
  }

  static std::tuple<Tensor, Tensor> multilabel(const Tensor& input, const Tensor& target, int64_t reduction,
                                               bool grad_now, c10::optional<c10::ScalarType> out_dtype) {
    const char* op = "fastloss.multilabel_margin_loss";
    const MarginRowsPlan pl = plan_multilabel_margin(op, input, target, reduction, out_dtype);
    MarginRun run = margin_forward_run(pl, grad_now, op);
    const int64_t bad = Dev::multilabel(pl, run);
    Tensor loss = Dev::finish(pl, run.row_loss);
    check_ml(op, pl, bad);
    return {loss, run.grad};
  }

  static Tensor multilabel_backward(const Tensor& grad_loss, const Tensor& input, const Tensor& target,
                                    int64_t reduction) {
    const char* op = "fastloss.multilabel_margin_loss_backward";
    const MarginRowsPlan pl = plan_multilabel_margin(op, input, target, reduction, c10::nullopt);
    MarginRun run = margin_backward_run(pl, grad_loss, op);
    const int64_t bad = Dev::multilabel(pl, run);
    check_ml(op, pl, bad);
    return run.grad;
  }

 private:
  static void check_mm(const char* op, const MarginRowsPlan& pl, int64_t bad) {
    if (bad >= 0) raise_multi_margin_target(op, pl.target.reshape({-1})[bad].item<int64_t>(), pl.C, bad);
  }
  static void check_ml(const char* op, const MarginRowsPlan& pl, int64_t bad) {
    if (bad >= 0)
      raise_multilabel_target(op, pl.target.reshape({-1})[bad].item<int64_t>(), pl.C, bad / pl.C, bad % pl.C);
  }
};

}  // namespace fastloss
