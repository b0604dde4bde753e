// Per-device error records for asynchronous validation (protocol in common/device_errors.h, device
// side in common/cuda/device_errors.cuh): created at a device's first report, never freed (one
// pinned page and one __device__ word per device for the process's life).
#include <c10/cuda/CUDAGuard.h>

#include <array>
#include <atomic>
#include <cstring>
#include <mutex>

#include "common/cuda/device_errors.cuh"
#include "common/errors.h"

namespace fastloss {
namespace cuda {
namespace {

// Records claimed on this device; every device's context has its own copy, zero at module load.
__device__ unsigned long long g_error_next;

constexpr int kMaxDevices = 64;
std::array<std::atomic<DeviceErrorRecord*>, kMaxDevices> g_records{};
std::array<unsigned long long*, kMaxDevices> g_next{};  // written before its record is published
std::atomic<int> g_devices{0};                          // 1 + the highest device index with a record
std::mutex g_mutex;                                     // creation, and reading a record

// Creating a slot makes CUDA runtime calls that stream capture forbids in its global mode (a pinned
// allocation); they touch no stream, so the thread's capture mode is relaxed around them.
class RelaxedCapture {
 public:
  RelaxedCapture() { cudaThreadExchangeStreamCaptureMode(&mode_); }
  ~RelaxedCapture() { cudaThreadExchangeStreamCaptureMode(&mode_); }

 private:
  cudaStreamCaptureMode mode_ = cudaStreamCaptureModeRelaxed;
};

void poll(bool wait) {
  const int devices = g_devices.load(std::memory_order_acquire);
  for (int d = 0; d < devices; ++d) {
    DeviceErrorRecord* r = g_records[d].load(std::memory_order_acquire);
    if (!r) continue;
    if (wait && !capturing()) {
      const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(d));
      C10_CUDA_CHECK(cudaDeviceSynchronize());
    }
    // the device stores `written` last (after a system fence); an acquire load orders the reads below
    if (__atomic_load_n(&r->written, __ATOMIC_ACQUIRE) <= __atomic_load_n(&r->acked, __ATOMIC_RELAXED)) continue;
    DeviceErrorRecord copy;
    {
      const std::lock_guard<std::mutex> lock(g_mutex);  // one host thread reads and acks a record
      const uint64_t w = __atomic_load_n(&r->written, __ATOMIC_ACQUIRE);
      if (w <= r->acked) continue;
      std::memcpy(&copy, r, sizeof copy);
      __atomic_store_n(&r->acked, w, __ATOMIC_RELEASE);  // the device may claim the record again
    }
    raise_recorded_error(copy);
  }
}

struct InstallPoller {
  InstallPoller() { set_device_error_poller(&poll); }
} g_install;

}  // namespace

void poll_device_errors(bool wait) { poll(wait); }

DeviceErrorSlot device_error_slot(int device) {
  TORCH_CHECK(device >= 0 && device < kMaxDevices, "fastloss: CUDA device index ", num(int64_t(device)),
              " is beyond the ", num(int64_t(kMaxDevices)), " devices error reporting supports");
  if (DeviceErrorRecord* r = g_records[device].load(std::memory_order_acquire)) return {r, g_next[device]};
  const std::lock_guard<std::mutex> lock(g_mutex);
  if (DeviceErrorRecord* r = g_records[device].load(std::memory_order_acquire)) return {r, g_next[device]};
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device));
  const RelaxedCapture relaxed;
  void* next = nullptr;
  C10_CUDA_CHECK(cudaGetSymbolAddress(&next, g_error_next));
  DeviceErrorRecord* host = nullptr;
  C10_CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&host), sizeof(DeviceErrorRecord),
                               cudaHostAllocMapped | cudaHostAllocPortable));
  std::memset(host, 0, sizeof(DeviceErrorRecord));
  void* dev_ptr = nullptr;  // the same address under unified addressing; asked for, not assumed
  C10_CUDA_CHECK(cudaHostGetDevicePointer(&dev_ptr, host, 0));
  if (dev_ptr != host) cudaFreeHost(host);
  TORCH_CHECK(dev_ptr == host,
              "fastloss: mapped pinned memory has a different device address (no unified "
              "addressing): asynchronous error reporting is not supported on this system");
  g_next[device] = static_cast<unsigned long long*>(next);
  g_records[device].store(host, std::memory_order_release);
  int seen = g_devices.load(std::memory_order_relaxed);
  while (seen < device + 1 && !g_devices.compare_exchange_weak(seen, device + 1, std::memory_order_release)) {
  }
  return {host, g_next[device]};
}

}  // namespace cuda
}  // namespace fastloss
