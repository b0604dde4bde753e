#include "common/alloc.h"

#include <ATen/ATen.h>

#include <cstdint>

#include "common/options.h"

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace fastloss {
namespace {

constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
constexpr size_t kAdviseMin = size_t(4) << 20;

void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (!t.device().is_cpu() || t.nbytes() < kAdviseMin || !option(Option::CpuHugePages)) return;
  const uintptr_t p = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t begin = (p + kHugePage - 1) & ~(kHugePage - 1), end = (p + t.nbytes()) & ~(kHugePage - 1);
  // only whole 2 MB pages inside the buffer: the advice never reaches a neighbour's memory
  if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // advice: errors ignored
#else
  (void)t;
#endif
}

}  // namespace

at::Tensor empty_for_write(c10::IntArrayRef sizes, const c10::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  advise_huge_pages(t);
  return t;
}

at::Tensor empty_for_write_like(const at::Tensor& like) {
  at::Tensor t = at::empty_like(like);
  advise_huge_pages(t);
  return t;
}

at::Tensor grad_buffer(const at::Tensor& like, bool wanted) {
  return wanted ? empty_for_write_like(like) : at::empty({0}, like.options());
}

}  // namespace fastloss
