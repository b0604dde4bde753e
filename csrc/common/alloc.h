// Buffers a kernel writes in full (gradients, per-element losses), allocated for a fast first touch.
//
// A fresh CPU buffer of tens of MB costs more to fault in than to write: glibc serves it with a new
// mmap (always from 32 MB on, often from a few MB on, as the heap top is trimmed between calls), and
// every 4 KB page faults, is zeroed by the kernel, then written by the kernel that fills it. Measured
// on a 2-core VM: allocating and writing 131 MB (nll_loss's 1024 x 32000 gradient) took 109 ms with
// 4 KB pages and 34 ms with transparent huge pages. So on Linux the 2 MB-aligned interior of a CPU
// buffer of at least 4 MB is advised MADV_HUGEPAGE before it is written (advice only: the values and
// the layout are at::empty's; where THP is off or no huge page is free the kernel ignores it).
// Other devices and small buffers: plain at::empty / at::empty_like. Switched off process-wide with
// torch.ops.fastloss._set_option("cpu_huge_pages", 0).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/TensorOptions.h>
#include <c10/util/ArrayRef.h>

namespace fastloss {

at::Tensor empty_for_write(c10::IntArrayRef sizes, const c10::TensorOptions& options);
at::Tensor empty_for_write_like(const at::Tensor& like);  // at::empty_like(like), advised as above

// A gradient output: shaped like `like` (empty_for_write_like) when wanted, else the empty tensor an op's
// schema returns for a gradient not requested (grad_now[i] / output_mask[i] false). Every family's ops use it.
at::Tensor grad_buffer(const at::Tensor& like, bool wanted);

}  // namespace fastloss
