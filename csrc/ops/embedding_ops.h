// The op kernels of the embedding family, written once for both devices: Dev (cpu/embedding.cpp,
// cuda/embedding.cu) supplies rows<Math>() -- run a row Math over the plan -- and finish() -- the
// per-row losses to the op's result. Everything else (checks, buffers, factors) is here.
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <tuple>

#include "common/alloc.h"
#include "common/errors.h"
#include "ops/embedding.h"

namespace fastloss {

// What Dev::rows receives: the row factor is kdev[r] (or kdev[0] when single) times kscale; grads
// hold one buffer per input (numel 0 = not wanted); row_loss (acc, rows) may be undefined.
struct RowRun {
  at::Tensor kdev;
  bool single = true;
  double kscale = 1.0;
  at::Tensor row_loss;
  std::vector<at::Tensor> grads;
};

template <class Dev>
struct EmbeddingOps {
  using Tensor = at::Tensor;

  static RowRun forward_run(const RowPlan& p, const bool* grad_now, int n, const char* op) {
    RowRun run;
    bool any = false;
    for (int j = 0; j < n; ++j) {
      run.grads.push_back(grad_buffer(p.in[0], grad_now[j]));
      any = any || grad_now[j];
    }
    TORCH_CHECK(!any || p.reduction != Reduction::None, op, ": grad_now needs reduction mean or sum");
    run.kscale = p.reduction == Reduction::Mean ? 1.0 / static_cast<double>(p.rows) : 1.0;
    run.row_loss = at::empty({p.rows}, p.in[0].options().dtype(acc_dtype(p.in[0].scalar_type())));
    return run;
  }

  static RowRun backward_run(const RowPlan& p, const Tensor& grad_loss, const bool* mask, int n, const char* op) {
    RowRun run;
    for (int j = 0; j < n; ++j) run.grads.push_back(grad_buffer(p.in[0], mask[j]));
    run.kdev = row_backward_factor(p, grad_loss, op);
    run.single = p.reduction != Reduction::None;
    return run;
  }

  template <typename F>
  static void with_triplet(double margin, double pn, double eps, bool swap, F&& f) {
    dispatch_pnorm(to_pnorm(pn), [&](auto c) {
      constexpr PNorm P = decltype(c)::value;
      f([&](auto acc_tag) {
        using acc = decltype(acc_tag);
        return TripletMath<acc, P>{static_cast<acc>(margin), static_cast<acc>(pn), static_cast<acc>(eps), swap};
      });
    });
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> triplet(const Tensor& a, const Tensor& pos, const Tensor& neg,
                                                            double margin, double pn, double eps, bool swap,
                                                            int64_t reduction, std::array<bool, 3> grad_now,
                                                            c10::optional<c10::ScalarType> out_dtype) {
    const char* op = "fastloss.triplet_margin_loss";
    const RowPlan p = plan_rows(op, {a, pos, neg}, c10::nullopt, reduction, out_dtype);
    RowRun run = forward_run(p, grad_now.data(), 3, op);
    with_triplet(margin, pn, eps, swap, [&](auto make) { Dev::rows(p, make, run); });
    return {Dev::finish(p, run.row_loss), run.grads[0], run.grads[1], run.grads[2]};
  }

  static std::tuple<Tensor, Tensor, Tensor> triplet_backward(const Tensor& grad_loss, const Tensor& a,
                                                             const Tensor& pos, const Tensor& neg, double margin,
                                                             double pn, double eps, bool swap, int64_t reduction,
                                                             std::array<bool, 3> mask) {
    const char* op = "fastloss.triplet_margin_loss";
    const RowPlan p = plan_rows(op, {a, pos, neg}, c10::nullopt, reduction, c10::nullopt);
    RowRun run = backward_run(p, grad_loss, mask.data(), 3, op);
    with_triplet(margin, pn, eps, swap, [&](auto make) { Dev::rows(p, make, run); });
    return {run.grads[0], run.grads[1], run.grads[2]};
  }

  static auto cosine_maker(double margin) {
    return [margin](auto acc_tag) {
      using acc = decltype(acc_tag);
      return CosineMath<acc>{static_cast<acc>(margin)};
    };
  }

  static std::tuple<Tensor, Tensor, Tensor> cosine(const Tensor& x1, const Tensor& x2, const Tensor& target,
                                                   double margin, int64_t reduction, std::array<bool, 2> grad_now,
                                                   c10::optional<c10::ScalarType> out_dtype) {
    const char* op = "fastloss.cosine_embedding_loss";
    const RowPlan p = plan_rows(op, {x1, x2}, target, reduction, out_dtype);
    RowRun run = forward_run(p, grad_now.data(), 2, op);
    Dev::rows(p, cosine_maker(margin), run);
    return {Dev::finish(p, run.row_loss), run.grads[0], run.grads[1]};
  }

  static std::tuple<Tensor, Tensor> cosine_backward(const Tensor& grad_loss, const Tensor& x1, const Tensor& x2,
                                                    const Tensor& target, double margin, int64_t reduction,
                                                    std::array<bool, 2> mask) {
    const char* op = "fastloss.cosine_embedding_loss";
    const RowPlan p = plan_rows(op, {x1, x2}, target, reduction, c10::nullopt);
    RowRun run = backward_run(p, grad_loss, mask.data(), 2, op);
    Dev::rows(p, cosine_maker(margin), run);
    return {run.grads[0], run.grads[1]};
  }
};

}  // namespace fastloss
