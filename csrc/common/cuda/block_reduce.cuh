// CUDA helpers shared by every loss family: 16-byte vectors, fixed-order warp/block reductions,
// device properties, and the deterministic two-stage sum that turns per-row losses into the result.
// No floating-point atomics anywhere: every sum is a fixed tree, so results are bitwise repeatable.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <mutex>
#include <type_traits>
#include <vector>

#include "common/common.h"

namespace fastloss {
namespace cuda {

// 16 bytes of scalar_t as raw bits (uint4: one 128-bit access), converted to and from the
// accumulate type with bit operations and intrinsics only -- no address-taking of 16-bit members,
// which would push the values to local memory.
template <typename T>
struct Pack;

template <>
struct Pack<float> {
  static constexpr int N = 4;
  static __device__ __forceinline__ void unpack(const uint4& r, float* o) {
    o[0] = __uint_as_float(r.x);
    o[1] = __uint_as_float(r.y);
    o[2] = __uint_as_float(r.z);
    o[3] = __uint_as_float(r.w);
  }
  static __device__ __forceinline__ uint4 pack(const float* i) {
    return make_uint4(__float_as_uint(i[0]), __float_as_uint(i[1]), __float_as_uint(i[2]), __float_as_uint(i[3]));
  }
};

template <>
struct Pack<double> {
  static constexpr int N = 2;
  static __device__ __forceinline__ void unpack(const uint4& r, double* o) {
    o[0] = __hiloint2double(static_cast<int>(r.y), static_cast<int>(r.x));
    o[1] = __hiloint2double(static_cast<int>(r.w), static_cast<int>(r.z));
  }
  static __device__ __forceinline__ uint4 pack(const double* i) {
    return make_uint4(static_cast<unsigned>(__double2loint(i[0])), static_cast<unsigned>(__double2hiint(i[0])),
                      static_cast<unsigned>(__double2loint(i[1])), static_cast<unsigned>(__double2hiint(i[1])));
  }
};

__device__ __forceinline__ float bf16_bits_to_float(unsigned b) { return __uint_as_float(b << 16); }
__device__ __forceinline__ unsigned float_to_bf16_bits(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));  // round to nearest even, NaN stays NaN
}
__device__ __forceinline__ float half_bits_to_float(unsigned b) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(b)));
}
__device__ __forceinline__ unsigned float_to_half_bits(float f) { return __half_as_ushort(__float2half_rn(f)); }

// Two 16-bit floats per 32-bit word; Conv supplies the two conversions.
template <typename Conv>
struct Pack16 {
  static constexpr int N = 8;
  static __device__ __forceinline__ void unpack(const uint4& r, float* o) {
    Conv::unpack2(r.x, o);
    Conv::unpack2(r.y, o + 2);
    Conv::unpack2(r.z, o + 4);
    Conv::unpack2(r.w, o + 6);
  }
  static __device__ __forceinline__ uint4 pack(const float* i) {
    return make_uint4(Conv::pack2(i[0], i[1]), Conv::pack2(i[2], i[3]), Conv::pack2(i[4], i[5]),
                      Conv::pack2(i[6], i[7]));
  }
};

struct Bf16Conv {
  static __device__ __forceinline__ void unpack2(unsigned w, float* o) {
    o[0] = __uint_as_float(w << 16);
    o[1] = __uint_as_float(w & 0xffff0000u);
  }
  static __device__ __forceinline__ unsigned pack2(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned r;  // one cvt for both halves: b in the high half, a in the low
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
    return r;
#else
    return float_to_bf16_bits(a) | (float_to_bf16_bits(b) << 16);
#endif
  }
};

struct HalfConv {
  static __device__ __forceinline__ void unpack2(unsigned w, float* o) {
    o[0] = half_bits_to_float(w & 0xffffu);
    o[1] = half_bits_to_float(w >> 16);
  }
  static __device__ __forceinline__ unsigned pack2(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(b), "f"(a));
    return r;
#else
    return float_to_half_bits(a) | (float_to_half_bits(b) << 16);
#endif
  }
};

template <>
struct Pack<c10::BFloat16> : Pack16<Bf16Conv> {};
template <>
struct Pack<c10::Half> : Pack16<HalfConv> {};

// Scalar element access through the same bit conversions.
template <typename T>
__device__ __forceinline__ acc_t<T> load_acc(const T* p, int64_t i) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    return bf16_bits_to_float(reinterpret_cast<const unsigned short*>(p)[i]);
  } else if constexpr (std::is_same_v<T, c10::Half>) {
    return half_bits_to_float(reinterpret_cast<const unsigned short*>(p)[i]);
  } else {
    return p[i];
  }
}

template <typename T>
__device__ __forceinline__ void store_acc(T* p, int64_t i, acc_t<T> v) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    reinterpret_cast<unsigned short*>(p)[i] = static_cast<unsigned short>(float_to_bf16_bits(v));
  } else if constexpr (std::is_same_v<T, c10::Half>) {
    reinterpret_cast<unsigned short*>(p)[i] = static_cast<unsigned short>(float_to_half_bits(v));
  } else {
    p[i] = v;
  }
}

// 16 bytes global -> shared without passing through registers (cp.async, sm_80+; a plain copy
// before). Completion: cp_async_wait_all() in the issuing thread.
__device__ __forceinline__ void cp_async16(uint4* smem, const uint4* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
#else
  *smem = *gmem;
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// Host and device: the launchers decide on the host whether a kernel may use 16-byte vectors. (A host
// call of a __device__-only function compiles inside a template, but its host stub exits the process.)
template <typename T>
__host__ __device__ __forceinline__ bool aligned16(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// 2^x: ex2.approx for float (~2 ulp), exp2 for double.
template <typename acc>
__device__ __forceinline__ acc fast_exp2(acc x) {
  return ::exp2(x);
}
template <>
__device__ __forceinline__ float fast_exp2<float>(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <typename acc>
__device__ __forceinline__ acc fast_exp(acc x) {
  return ::exp(x);
}
template <>
__device__ __forceinline__ float fast_exp<float>(float x) {
  return __expf(x);  // ex2.approx: ~2 ulp, well inside float32 loss tolerance
}

// ---------------------------------------------------------------------------------------------
// The one warp / block all-reduce of every CUDA family. T: a scalar or a trivially copyable struct of
// 32-bit-multiple size (a row state, an array of sums); op(x, y) -> the combined value, commutative
// bitwise (op(x, y) == op(y, x): float + and max are), so the xor butterfly leaves the same bits in
// every lane and the result depends only on the data.

// v of lane (this lane ^ o), any T: one 32-bit shuffle per word (what __shfl_xor_sync does for a double).
template <typename T>
__device__ __forceinline__ T shfl_xor(const T& v, int o) {
  if constexpr (std::is_arithmetic_v<T>) {
    return __shfl_xor_sync(0xffffffffu, v, o);
  } else {
    static_assert(sizeof(T) % 4 == 0 && std::is_trivially_copyable_v<T>, "shfl_xor: 32-bit words of a plain struct");
    constexpr int kWords = sizeof(T) / 4;
    unsigned w[kWords];
    memcpy(w, &v, sizeof(T));
#pragma unroll
    for (int i = 0; i < kWords; ++i) w[i] = __shfl_xor_sync(0xffffffffu, w[i], o);
    T r;
    memcpy(&r, w, sizeof(T));
    return r;
  }
}

// op over the 32 lanes of a (full) warp; every lane gets the result.
template <typename T, typename Op>
__device__ __forceinline__ T warp_allreduce(T v, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, shfl_xor(v, o));
  return v;
}

// op over a block of THREADS threads (blockDim.x == THREADS): each warp's value, then warp 0 over the
// THREADS/32 of them (lanes past them hold `identity`), in a fixed order; every thread gets the result.
// `scratch` needs THREADS/32 + 1 slots. Ends with a barrier, so scratch can be reused right after; call
// it uniformly over the block (its barriers).
template <int THREADS, typename T, typename Op>
__device__ __forceinline__ T block_allreduce(T v, T* scratch, const T& identity, Op op) {
  constexpr int W = THREADS / 32;
  v = warp_allreduce(v, op);
  if (W == 1) return v;
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T t = lane < W ? scratch[lane] : identity;
    t = warp_allreduce(t, op);
    if (lane == 0) scratch[W] = t;
  }
  __syncthreads();
  T r = scratch[W];
  __syncthreads();
  return r;
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T x, T y) const {
    return x + y;
  }
};

struct MinOp {  // integers (a NaN would make it order-dependent)
  template <typename T>
  __device__ __forceinline__ T operator()(T x, T y) const {
    return y < x ? y : x;
  }
};

template <typename acc>
__device__ __forceinline__ acc warp_sum(acc v) {
  return warp_allreduce(v, SumOp{});
}

// Sum of one value per thread over the whole block (block_allreduce).
template <int THREADS, typename acc>
__device__ __forceinline__ acc block_sum(acc v, acc* scratch) {
  return block_allreduce<THREADS>(v, scratch, acc(0), SumOp{});
}

struct DeviceInfo {
  int sm_count;
  int smem_optin;   // bytes of shared memory one block may ask for
  int smem_per_sm;  // bytes of shared memory per multiprocessor, shared by its resident blocks
  int major;        // compute capability
};

inline DeviceInfo device_info(int device) {
  static std::mutex mu;
  static std::vector<DeviceInfo> cache;
  static std::vector<bool> have;
  std::lock_guard<std::mutex> lock(mu);
  if (device >= static_cast<int>(cache.size())) {
    cache.resize(device + 1);
    have.resize(device + 1, false);
  }
  if (!have[device]) {
    DeviceInfo d{};
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sm_count, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.major, cudaDevAttrComputeCapabilityMajor, device));
    cache[device] = d;
    have[device] = true;
  }
  return cache[device];
}

// ---------------------------------------------------------------------------------------------
// Deterministic sums. Stage 1: block b sums a fixed slice of [0, n); stage 2: one block sums the
// partials. The slicing depends only on n, so the result depends only on the data.
constexpr int kSumThreads = 512;

inline int sum_blocks(int64_t n) {
  const int64_t per = int64_t(kSumThreads) * 16;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(1024, (n + per - 1) / per)));
}

// f(i) -> acc for i in [0, n)
template <typename acc, typename F>
__global__ void __launch_bounds__(kSumThreads) partial_sum_kernel(F f, int64_t n, acc* partial) {
  __shared__ acc scratch[kSumThreads / 32 + 1];
  const int64_t per = (n + gridDim.x - 1) / gridDim.x;
  const int64_t begin = int64_t(blockIdx.x) * per, end = std::min(n, begin + per);
  acc s = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kSumThreads) s += f(i);
  s = block_sum<kSumThreads>(s, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// out[0] = (sum of partial[0..parts)) / (divisor ? *divisor : 1), converted to out_t.
template <typename acc, typename out_t>
__global__ void __launch_bounds__(kSumThreads)
    final_sum_kernel(const acc* partial, int parts, const acc* divisor, acc host_divisor, out_t* out) {
  __shared__ acc scratch[kSumThreads / 32 + 1];
  acc s = 0;
  for (int i = threadIdx.x; i < parts; i += kSumThreads) s += partial[i];
  s = block_sum<kSumThreads>(s, scratch);
  if (threadIdx.x == 0) out[0] = static_cast<out_t>(s / (divisor ? *divisor : host_divisor));
}

template <typename T>
struct ElementReader {  // reads T, sums in its accumulate type
  const T* p;
  __device__ acc_t<T> operator()(int64_t i) const { return load_acc(p, i); }
};

template <typename acc>
struct ArrayReader {
  const acc* p;
  __device__ acc operator()(int64_t i) const { return p[i]; }
};

// Sum f over [0, n) into out (a one-element tensor of any floating dtype), divided by *divisor
// (device scalar) when given, else by host_divisor.
// out[0] = sum(partial[0..parts)) / (divisor ? *divisor : host_divisor), in out's dtype: the second
// stage of every fused reduction.
template <typename acc>
void launch_final_sum(const acc* partial, int parts, const acc* divisor, acc host_divisor, const at::Tensor& out,
                      cudaStream_t stream) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "fastloss_final_sum", [&] {
    final_sum_kernel<acc, scalar_t>
        <<<1, kSumThreads, 0, stream>>>(partial, parts, divisor, host_divisor, out.mutable_data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc, typename F>
void launch_sum(F f, int64_t n, const acc* divisor, acc host_divisor, const at::Tensor& out, cudaStream_t stream) {
  const int parts = sum_blocks(n);
  at::Tensor partial = at::empty({parts}, out.options().dtype(c10::CppTypeToScalarType<acc>::value));
  partial_sum_kernel<acc, F><<<parts, kSumThreads, 0, stream>>>(f, n, partial.mutable_data_ptr<acc>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  launch_final_sum<acc>(partial.const_data_ptr<acc>(), parts, divisor, host_divisor, out, stream);
}

// Per-row losses -> the op's result ('none': the rows; 'sum': their sum; 'mean': sum / denominator).
template <typename acc>
at::Tensor finish_loss(const at::Tensor& row_loss, Reduction reduction, const acc* denom, acc host_denom,
                       c10::ScalarType out_dtype, c10::IntArrayRef row_shape, cudaStream_t stream) {
  if (reduction == Reduction::None) return row_loss.view(row_shape).to(out_dtype);
  at::Tensor out = at::empty({}, row_loss.options().dtype(out_dtype));
  const bool mean = reduction == Reduction::Mean;
  launch_sum<acc>(ArrayReader<acc>{row_loss.const_data_ptr<acc>()}, row_loss.numel(), mean ? denom : nullptr,
                  mean ? host_denom : acc(1), out, stream);
  return out;
}

}  // namespace cuda
}  // namespace fastloss
