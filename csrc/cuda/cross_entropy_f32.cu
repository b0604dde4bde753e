// cross_entropy row kernels for float (one file per dtype: parallel compilation).
#include "cuda/cross_entropy_kernels.cuh"

FASTLOSS_CE_INSTANTIATE(float)
