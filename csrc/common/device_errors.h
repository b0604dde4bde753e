// Errors found by CUDA kernels (a class target out of range, a BCE input outside [0, 1], ...), reported
// without a host sync. A kernel records the first bad flat position in a device int64 (an integer
// atomicMin: order-free); a one-thread report kernel then copies the position, the bad value and what
// the message needs into a DeviceErrorRecord in mapped pinned host memory (one per device). The host
// reads that record without waiting for anything -- at the start of every fastloss CUDA op (forward
// or backward) and in fastloss.check_errors() -- and raises the error there, with the same message the
// synchronous check gives. The layout below is shared by the host compiler and nvcc.
#pragma once

#include <cstdint>

namespace fastloss {

// Which message a record makes (the family raisers in errors.cpp, ops/*.cpp).
enum class DeviceErrorKind : int32_t {
  ClassTarget = 0,  // cross_entropy / nll_loss: value, p0 = classes, p1 = ignore_index
  MultiMargin,      // multi_margin_loss: value, p0 = classes
  Multilabel,       // multilabel_margin_loss: value, p0 = classes, p1 = row, p2 = column
  BceDomain,        // binary_cross_entropy: fvalue, p0 = 1 when the target is bad (else the input)
  CtcLabel,         // ctc_loss: value, p0 = classes, p1 = blank, p2 = sample (label = pos - p3), p3 = its offset
};

// One record per device, in pinned host memory mapped into the device's address space.
// `written` is set by the device (after a system fence, so the fields before it are visible first) to
// one more than the record's sequence number; `acked` by the host once it has read the record. The
// device claims the right to write with an integer atomicCAS on a device counter against `acked`, so
// one record is written at a time and none while the host has not read the last one.
struct DeviceErrorRecord {
  int64_t op;       // the op's name: a const char* to a string literal (static storage), as an integer
  int32_t kind;     // DeviceErrorKind
  int32_t pad;
  int64_t pos;      // flat position of the bad element
  int64_t value;    // the bad integer value
  double fvalue;    // the bad floating-point value
  int64_t p[4];     // kind-specific parameters (above)
  uint64_t written;
  uint64_t acked;
};

// Target validation mode (Option::ValidateTargets): 0 off (bad targets give NaN rows), 1 asynchronous
// (the default: reported by the next fastloss CUDA call or check_errors()), 2 strict (each call waits
// for its own check and raises before returning; not inside CUDA graph capture, where it acts as 1).
enum ValidationMode : int64_t { kValidateOff = 0, kValidateAsync = 1, kValidateStrict = 2 };

// Raises the first recorded device error not yet raised, if any. wait: synchronize every device that
// has a record first (fastloss.check_errors()). A no-op in a build without CUDA.
void raise_device_errors(bool wait);

// The CUDA side installs the poller at load time (cuda/device_errors.cu); the CPU-only build has none.
using DeviceErrorPoller = void (*)(bool wait);
void set_device_error_poller(DeviceErrorPoller poller);

// Formats and raises a record's error (the message of the synchronous check, plus a note that it was
// found by an earlier call's kernel). Defined in ops/device_errors.cpp.
[[noreturn]] void raise_recorded_error(const DeviceErrorRecord& r);

}  // namespace fastloss
