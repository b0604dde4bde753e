// Compiles cpu/vec_impl.inc for baseline x86-64 and, with GCC on x86-64, again for AVX2+FMA
// (cpu/per_isa.inc); vec_ops() returns the table the running CPU supports (decided once).
#include "common/cpu_vec.h"

#include <c10/macros/Macros.h>  // C10_HOST_DEVICE / C10_ALWAYS_INLINE of ops/pointwise_lanes.inc

#include <cstdint>
#include <cstdlib>

namespace fastloss {
namespace cpu {

#define FASTLOSS_ISA_BODY "cpu/vec_impl.inc"
#include "cpu/per_isa.inc"

bool use_avx2_fma() {
#ifdef FASTLOSS_CPU_HAVE_AVX2
  static const bool yes = [] {
    // FASTLOSS_CPU_ISA=base forces the portable builds (for testing both on one machine).
    const char* force = std::getenv("FASTLOSS_CPU_ISA");
    if (force && force[0] == 'b') return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return yes;
#else
  return false;
#endif
}

const VecOps& vec_ops() {
  static const VecOps table = [] {
#ifdef FASTLOSS_CPU_HAVE_AVX2
    if (use_avx2_fma()) return isa_avx2::make_table("avx2+fma");
#endif
    return isa_base::make_table("baseline");
  }();
  return table;
}

}  // namespace cpu
}  // namespace fastloss
