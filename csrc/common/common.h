// Shared by every loss family: reduction enum, accumulate types, argument checks.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace fastloss {

// ATen's numbering (torch.nn._reduction.get_enum): 0 none, 1 mean, 2 sum.
enum class Reduction : int64_t { None = 0, Mean = 1, Sum = 2 };

inline Reduction to_reduction(int64_t r, const char* op) {
  TORCH_CHECK_VALUE(r >= 0 && r <= 2, op, ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ", r);
  return static_cast<Reduction>(r);
}

// half/bfloat16 accumulate in float32, float32 in float32, float64 stays float64.
template <typename T>
using acc_t = at::opmath_type<T>;

inline c10::ScalarType acc_dtype(c10::ScalarType t) {
  return t == c10::kDouble ? c10::kDouble : c10::kFloat;
}

inline void check_floating(const at::Tensor& t, const char* name, const char* op) {
  auto s = t.scalar_type();
  TORCH_CHECK(s == c10::kFloat || s == c10::kDouble || s == c10::kHalf || s == c10::kBFloat16, op, ": ", name,
              " must be float64, float32, float16 or bfloat16, got ", s);
}

inline void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn,
                              const char* op) {
  TORCH_CHECK(a.device() == b.device(), op, ": expected all tensors on the same device, but ", an, " is on ",
              a.device(), " and ", bn, " is on ", b.device());
}

// Class-index targets: torch accepts int64 and uint8.
inline void check_class_target_dtype(const at::Tensor& target, const char* op) {
  auto s = target.scalar_type();
  TORCH_CHECK(s == c10::kLong || s == c10::kByte, op, ": expected target dtype to be Long or Byte, but got ", s);
}

}  // namespace fastloss
