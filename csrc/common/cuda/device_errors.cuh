// Device side of asynchronous error reporting (the record and protocol: common/device_errors.h).
// After a kernel that leaves the first bad flat position in `first_bad` (INT64_MAX: none), the op calls
// report_device_error(): one thread reads that position and, if there is one, copies the bad value and
// the message's parameters into this device's mapped host record. Nothing waits: the host sees the
// record at its next fastloss CUDA call (every CUDA op is registered through PollFirst) or in
// fastloss.check_errors(). The kernels themselves never index with a bad value (NaN rows instead), so
// graph capture, replays and validation off are all memory-safe; a graph replay reports too, since the
// captured report kernel writes the same record.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <utility>

#include "common/device_errors.h"
#include "common/options.h"

namespace fastloss {
namespace cuda {

// This device's record (mapped pinned host memory) and its claim counter (a __device__ variable,
// zero at module load), created at the first use on the device. Defined in cuda/device_errors.cu.
struct DeviceErrorSlot {
  DeviceErrorRecord* record;
  unsigned long long* next;  // records claimed so far on this device
};
DeviceErrorSlot device_error_slot(int device);

// Raises the first unread record of any device (wait: synchronize those devices first).
void poll_device_errors(bool wait);

inline bool capturing() { return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None; }

// Fills pos / value / fvalue / p[] of a record from the first bad flat position (device code). The
// default reads an integer target at that position.
template <typename target_t>
struct TargetValue {
  const target_t* target;
  __device__ void operator()(int64_t pos, DeviceErrorRecord& r) const {
    r.pos = pos;
    r.value = static_cast<int64_t>(target[pos]);
  }
};

// One thread: claims the record (integer CAS against the host's ack count, so one record is written at
// a time and an unread one is never overwritten), writes it, fences, then publishes `written`.
template <class Fill>
__global__ void report_error_kernel(const int64_t* __restrict__ first_bad, DeviceErrorRecord* record,
                                    unsigned long long* next, DeviceErrorRecord proto, Fill fill) {
  const int64_t pos = *first_bad;
  if (pos == std::numeric_limits<int64_t>::max()) return;
  volatile DeviceErrorRecord* r = record;
  const unsigned long long acked = r->acked;
  if (atomicCAS(next, acked, acked + 1) != acked) return;  // the host has not read the last record yet
  fill(pos, proto);
  r->op = proto.op;
  r->kind = proto.kind;
  r->pos = proto.pos;
  r->value = proto.value;
  r->fvalue = proto.fvalue;
#pragma unroll
  for (int i = 0; i < 4; ++i) r->p[i] = proto.p[i];
  __threadfence_system();  // the fields reach the host before `written` does
  r->written = acked + 1;
}

inline DeviceErrorRecord error_proto(const char* op, DeviceErrorKind kind, int64_t p0 = 0, int64_t p1 = 0,
                                     int64_t p2 = 0, int64_t p3 = 0) {
  DeviceErrorRecord r{};
  r.op = reinterpret_cast<int64_t>(op);  // a string literal: outlives the record
  r.kind = static_cast<int32_t>(kind);
  r.p[0] = p0;
  r.p[1] = p1;
  r.p[2] = p2;
  r.p[3] = p3;
  return r;
}

inline int64_t validation_mode() { return option(Option::ValidateTargets); }

// Queues the report of `first_bad` (a device int64 on the current stream's device) unless validation is
// off. Strict mode then waits for this stream and raises at once (outside graph capture).
template <class Fill>
void report_device_error(const at::Tensor& first_bad, const DeviceErrorRecord& proto, Fill fill, cudaStream_t stream) {
  const int64_t mode = validation_mode();
  if (mode == kValidateOff) return;
  const DeviceErrorSlot slot = device_error_slot(first_bad.get_device());
  report_error_kernel<Fill>
      <<<1, 1, 0, stream>>>(first_bad.const_data_ptr<int64_t>(), slot.record, slot.next, proto, fill);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (mode == kValidateStrict && !capturing()) {
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));
    poll_device_errors(false);
  }
}

// Op registration wrapper: every fastloss CUDA op first raises what earlier calls' kernels recorded
// (a few host loads when there is nothing: no CUDA call, no sync).
template <auto F>
struct PollFirst;
template <typename R, typename... A, R (*F)(A...)>
struct PollFirst<F> {
  static R call(A... a) {
    poll_device_errors(false);
    return F(std::forward<A>(a)...);
  }
};

}  // namespace cuda
}  // namespace fastloss
