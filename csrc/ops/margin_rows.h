// The row-wise margin losses over class scores: multi_margin_loss (one class index per row) and
// multilabel_margin_loss (a list of class indices per row, ended by the first -1). Both read a row
// of C scores, compare some of them with the rest through a hinge, and divide the row's sum by C:
//
//   multi_margin:    loss_r = w[y] / C * sum_{i != y} [z_i > 0] z_i^p,       z_i = (margin - x_y) + x_i
//   multilabel:      loss_r = 1 / C * sum_{k < K} sum_{i not a target} [z > 0] z,  z = (1 - x_{t_k}) + x_i
//
// with torch's exact expressions: the hinge is taken only where z > 0 (a NaN z adds nothing, as in
// torch's kernels), z is formed in that order, and duplicates in a multilabel target list count once
// per occurrence (torch's loop over the list). The formulas below are the single definition both
// devices compile (cpu/margin_rows.cpp, cuda/margin_rows.cu); the plan checks arguments for both.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <vector>

#include "common/common.h"

namespace fastloss {

// multi_margin: one non-target class i of a row. mxy = margin - x_y. Returns the hinge term z^p
// (0 where z <= 0 or NaN) and writes d(term)/d(x_i) to *dz (0 there too).
template <int P, typename acc>
C10_HOST_DEVICE inline acc mm_term(acc mxy, acc xi, acc* dz) {
  const acc z = mxy + xi;
  const bool on = z > acc(0);
  *dz = on ? (P == 1 ? acc(1) : acc(2) * z) : acc(0);
  return on ? (P == 1 ? z : z * z) : acc(0);
}

// multilabel: one (target t, non-target i) pair; c = 1 - x_t. The pair is active when z > 0.
template <typename acc>
C10_HOST_DEVICE inline acc ml_z(acc c, acc xi) {
  return c + xi;
}

// What both ops share once the arguments are checked: the input as (rows, C), contiguous; int64
// targets, contiguous ((rows,) for multi_margin, (rows, C) for multilabel); the class weights in the
// accumulate dtype (multi_margin, optional); the shape of the 'none' result.
struct MarginRowsPlan {
  Reduction reduction;
  int64_t rows = 1, C = 1;
  std::vector<int64_t> none_shape;  // () or (rows,), as torch
  at::Tensor input;                 // contiguous, the caller's shape (0-d, (C,) or (N, C))
  at::Tensor target;                // int64, contiguous
  at::Tensor weight;                // accumulate dtype, contiguous, or undefined
  c10::ScalarType out_dtype;
  const char* op = nullptr;         // the op's name, for errors reported later from the device
};

MarginRowsPlan plan_multi_margin(const char* op, const at::Tensor& input, const at::Tensor& target, int64_t p,
                                 const c10::optional<at::Tensor>& weight, int64_t reduction,
                                 c10::optional<c10::ScalarType> out_dtype);

MarginRowsPlan plan_multilabel_margin(const char* op, const at::Tensor& input, const at::Tensor& target,
                                      int64_t reduction, c10::optional<c10::ScalarType> out_dtype);

// RuntimeError (torch raises RuntimeError for both) naming the bad value and where it is.
[[noreturn]] void raise_multi_margin_target(const char* op, int64_t value, int64_t C, int64_t position);
[[noreturn]] void raise_multilabel_target(const char* op, int64_t value, int64_t C, int64_t row, int64_t col);

// One run of a row kernel: the row factor of the gradient is kdev[r] (kdev[0] when single) times
// kscale (kdev undefined: 1); row_loss (acc, rows) undefined in backward; grad numel 0 = not wanted.
struct MarginRun {
  at::Tensor kdev;
  bool single = true;
  double kscale = 1.0;
  at::Tensor row_loss;
  at::Tensor grad;
};

// Forward: row losses, and the gradient already divided by the mean's denominator when grad_now.
MarginRun margin_forward_run(const MarginRowsPlan& p, bool grad_now, const char* op);
// Backward: the gradient, each row scaled by its grad_loss (reduction 'none') or by the scalar one.
MarginRun margin_backward_run(const MarginRowsPlan& p, const at::Tensor& grad_loss, const char* op);

}  // namespace fastloss
