// Argument checks and error raisers (declared in common/common.h and common/errors.h).
// Numbers are formatted with snprintf, never with `ostream << number`: on the GPU machine (torch
// 2.11, g++ 13) the extension came out with its own copy of libstdc++'s locale code, and inserting an
// integer or a double into an ostringstream inside the extension crashed (SIGSEGV in
// ostream::_M_insert<long>, a facet looked up with the wrong id). Strings are safe.
#include "common/errors.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/common.h"

#include <cstdio>

namespace fastloss {

std::string num(int64_t v) { return std::to_string(v); }

std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

std::string shape(c10::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

Reduction to_reduction(int64_t r, const char* op) {
  TORCH_CHECK_VALUE(r >= 0 && r <= 2, op, ": reduction must be 0 (none), 1 (mean) or 2 (sum), got ", num(r));
  return static_cast<Reduction>(r);
}

void check_floating(const at::Tensor& t, const char* name, const char* op) {
  auto s = t.scalar_type();
  TORCH_CHECK(s == c10::kFloat || s == c10::kDouble || s == c10::kHalf || s == c10::kBFloat16, op, ": ", name,
              " must be float64, float32, float16 or bfloat16, got ", s);
}

void check_same_device(const at::Tensor& a, const char* an, const at::Tensor& b, const char* bn, const char* op) {
  TORCH_CHECK(a.device() == b.device(), op, ": expected all tensors on the same device, but ", an, " is on ",
              a.device(), " and ", bn, " is on ", b.device());
}

void check_class_target_dtype(const at::Tensor& target, const char* op) {
  auto s = target.scalar_type();
  TORCH_CHECK(s == c10::kLong || s == c10::kByte, op, ": expected target dtype to be Long or Byte, but got ", s);
}

void raise_target_out_of_bounds(const char* op, int64_t value, int64_t classes, int64_t ignore_index,
                                int64_t position) {
  TORCH_CHECK_INDEX(false, op, ": Target ", num(value), " is out of bounds: expected a class in [0, ", num(classes),
                    ") or ignore_index=", num(ignore_index), " (at flat target position ", num(position), ")");
  __builtin_unreachable();
}

void check_row_length_32bit(const char* op, int64_t classes) {
  TORCH_CHECK(classes < (int64_t(1) << 31) - 64, op,
              ": CUDA rows of more than 2^31 - 64 classes are not supported (got ", num(classes), ")");
}

}  // namespace fastloss
