// Stand-in for CUDA's <cuda_fp16.h> under the CPU emulation: __half, __half2 and their
// conversions are defined in cuda_emu.h, which the emulated build force-includes.
#pragma once
#include "../cuda_emu.h"
