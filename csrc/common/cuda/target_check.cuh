// Host side of the validation of device-resident targets, shared by the CUDA kernels of every family
// that takes class labels. A kernel records the first invalid position with an integer atomicMin into
// a device int64 initialized to INT64_MAX (order-free, so deterministic).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <deque>

#include "common/options.h"

namespace fastloss {
namespace cuda {

// The host side of target validation. begin() queues a copy of the first invalid position into
// pinned host memory and an event right after the small target kernel; the caller then launches the
// main kernel, and finish() waits on that event only -- the host blocks for the target check, never
// for the loss kernel, so the GPU stays busy. Skipped inside CUDA graph capture and when turned off
// (fastloss.set_target_validation): the kernels never index out of bounds either way.
class TargetCheck {
 public:
  void begin(const at::Tensor& first_bad, cudaStream_t stream) {
    active_ = option(Option::ValidateTargets) && !capturing();
    if (!active_) return;
    Slot& s = slot(first_bad.get_device());
    // a check abandoned by an exception may still have its copy in flight on another stream: let it
    // land before this one is queued (an event already passed, the usual case, returns at once)
    C10_CUDA_CHECK(cudaEventSynchronize(s.event));
    C10_CUDA_CHECK(cudaMemcpyAsync(s.host, first_bad.const_data_ptr<int64_t>(), sizeof(int64_t),
                                   cudaMemcpyDeviceToHost, stream));
    C10_CUDA_CHECK(cudaEventRecord(s.event, stream));
    slot_ = &s;
  }
  // The first invalid position, or -1 (also when the check was skipped).
  int64_t finish() {
    if (!active_) return -1;
    C10_CUDA_CHECK(cudaEventSynchronize(slot_->event));
    const int64_t pos = *slot_->host;
    return pos == std::numeric_limits<int64_t>::max() ? -1 : pos;
  }

  static bool capturing() {
    return c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
  }

 private:
  struct Slot {
    int64_t* host = nullptr;  // pinned
    cudaEvent_t event = nullptr;
  };
  static Slot& slot(int device) {  // one per thread and device, created once, never freed
    thread_local std::deque<Slot> slots;  // a deque: growing it keeps earlier slots (and slot_) in place
    if (device >= static_cast<int>(slots.size())) slots.resize(device + 1);
    Slot& s = slots[device];
    if (!s.host) {
      C10_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&s.host), sizeof(int64_t), cudaHostAllocDefault));
      C10_CUDA_CHECK(cudaEventCreateWithFlags(&s.event, cudaEventDisableTiming));
    }
    return s;
  }
  bool active_ = false;
  Slot* slot_ = nullptr;
};

}  // namespace cuda
}  // namespace fastloss
