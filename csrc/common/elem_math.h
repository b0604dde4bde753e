// Scalar per-element helpers more than one family's math uses (host and device).
#pragma once

#include <c10/macros/Macros.h>

namespace fastloss {

// sign(x): -1, 0 or 1; sign(NaN) = 0, as torch.sign (l1's gradient at NaN, the 1-norm's distance gradient).
template <typename acc>
C10_HOST_DEVICE inline acc elem_sign(acc x) {
  return acc(x > acc(0)) - acc(x < acc(0));
}

// |x| by a select (NaN stays NaN).
template <typename acc>
C10_HOST_DEVICE inline acc elem_abs(acc x) {
  return x < acc(0) ? -x : x;
}

}  // namespace fastloss
