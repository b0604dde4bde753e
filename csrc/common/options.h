// Process-wide switches, set from Python through torch.ops.fastloss._set_option(name, value)
// (wrapped by fastloss.set_target_validation and used by tests/benchmarks to reach every code path).
#pragma once

#include <cstdint>

namespace fastloss {

enum class Option : int {
  ValidateTargets = 0,  // CUDA target/domain checks (common/device_errors.h ValidationMode): 0 off, 1 asynchronous
                        //    (default: no host sync, raised by the next fastloss CUDA call), 2 strict (sync, raise now)
  CeConfig,  // -1 auto; CUDA cross_entropy row kernel (see launch_ce): 0 warp, 1 block256 x2/SM, 2 block1024,
             //    3 two-block cluster per row (sm_90)
  CeSmemVecs,  // -1 auto; cap on the vectors per thread cached in shared memory
  CpuHugePages,  // 1 (default): large CPU output buffers get transparent huge pages (common/alloc.h); 0 off
  LinearCeBudget,  // bytes; linear cross-entropy's default memory budget (ops/linear_cross_entropy.h), 256 MiB
  Count
};

int64_t option(Option o);

}  // namespace fastloss
