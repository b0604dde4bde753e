// cross_entropy row kernels for c10::BFloat16 (one file per dtype: parallel compilation).
#include "cuda/cross_entropy_kernels.cuh"

FASTLOSS_CE_INSTANTIATE(c10::BFloat16)
