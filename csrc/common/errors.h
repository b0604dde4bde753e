// Error raisers shared by the CPU and CUDA kernels. Defined in errors.cpp, compiled by the host C++
// compiler: messages are formatted in one place with one wording, numbers without iostreams.
#pragma once

#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>

namespace fastloss {

// Numbers for error messages, formatted without iostreams (see errors.cpp): every number in a
// fastloss message goes through these.
std::string num(int64_t v);
std::string num(double v);
std::string shape(c10::IntArrayRef s);

// IndexError, as torch: "Target 5 is out of bounds ..."
[[noreturn]] void raise_target_out_of_bounds(const char* op, int64_t value, int64_t classes, int64_t ignore_index,
                                             int64_t position);

// RuntimeError unless `classes` fits the 32-bit in-row indexing of the CUDA row kernels.
void check_row_length_32bit(const char* op, int64_t classes);

}  // namespace fastloss
