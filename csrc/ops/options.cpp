#include "common/options.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <string>

namespace fastloss {
namespace {

const char* const kNames[] = {"validate_targets", "ce_config", "ce_smem_vecs", "cpu_huge_pages", "linear_ce_budget"};
std::atomic<int64_t> g_values[] = {{1}, {-1}, {-1}, {1}, {int64_t(256) << 20}};
static_assert(sizeof(kNames) / sizeof(kNames[0]) == static_cast<int>(Option::Count), "one name per option");

int64_t set_option(const std::string& name, int64_t value) {
  for (int i = 0; i < static_cast<int>(Option::Count); ++i)
    if (name == kNames[i]) return g_values[i].exchange(value);
  TORCH_CHECK_VALUE(false, "fastloss._set_option: unknown option '", name,
                    "' (known: validate_targets, ce_config, ce_smem_vecs, cpu_huge_pages, linear_ce_budget)");
}

}  // namespace

int64_t option(Option o) { return g_values[static_cast<int>(o)].load(std::memory_order_relaxed); }

TORCH_LIBRARY_FRAGMENT(fastloss, m) {
  // Returns the previous value.
  m.def("_set_option(str name, int value) -> int", &set_option);
}

}  // namespace fastloss
