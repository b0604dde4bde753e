// Shared by every loss family: reduction enum, accumulate types, argument checks.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace fastloss {

// ATen's numbering (torch.nn._reduction.get_enum): 0 none, 1 mean, 2 sum.
enum class Reduction : int64_t { None = 0, Mean = 1, Sum = 2 };

// The checks below raise with torch-like messages; they are defined in common/errors.cpp.
Reduction to_reduction(int64_t r, const char* op);

// half/bfloat16 accumulate in float32, float32 in float32, float64 stays float64.
template <typename T>
using acc_t = at::opmath_type<T>;

inline c10::ScalarType acc_dtype(c10::ScalarType t) { return t == c10::kDouble ? c10::kDouble : c10::kFloat; }

void check_floating(const at::Tensor& t, const char* name, const char* op);

void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn, const char* op);

// Class-index targets: torch accepts int64 and uint8.
void check_class_target_dtype(const at::Tensor& target, const char* op);

// Calls f(uint8_t{}) or f(int64_t{}) for a (checked) class-target dtype.
template <typename F>
decltype(auto) dispatch_class_target(c10::ScalarType s, F&& f) {
  if (s == c10::kByte) return f(uint8_t{});
  return f(int64_t{});
}

// grad_loss as one factor per row: a single element (mean/sum) broadcasts to every row.
template <typename acc>
struct RowFactor {
  const acc* p;
  bool single;
  C10_HOST_DEVICE acc operator()(int64_t r) const { return single ? p[0] : p[r]; }
};

// An optional floating tensor (weight, grad_loss) in the accumulate dtype and contiguous;
// an absent one stays undefined.
inline at::Tensor as_acc(const c10::optional<at::Tensor>& t, c10::ScalarType acc) {
  return (t.has_value() && t->defined()) ? t->to(acc).contiguous() : at::Tensor();
}

}  // namespace fastloss
