// Helpers shared by the edgefs head kernels: element loads (float32 or float16 in, float32
// out), warp and block reductions, and the argmax order of the NumPy reference (ties go to the
// lower index). Every kernel accumulates in float32. Block sizes are multiples of 32.
#pragma once

#include <cuda_fp16.h>

namespace edgefs {

constexpr float kEps = 1e-12f;  // edgefs.heads.reference._EPS
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

// Four consecutive elements as float32. `p` must be 16-byte aligned for float, 8-byte for half
// (the launchers pass vec=1 only when D % 4 == 0 and every row pointer is aligned).
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const __half* p) {
  const __half2* h = reinterpret_cast<const __half2*>(p);
  const float2 lo = __half22float2(h[0]);
  const float2 hi = __half22float2(h[1]);
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}

__device__ __forceinline__ float dot4(float4 a, float4 b) {
  return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Reductions inside aligned groups of `width` lanes (a power of two <= 32); every lane of the
// warp must call them.
__device__ __forceinline__ float group_sum(float v, int width) {
  for (int o = width >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float group_max(float v, int width) {
  for (int o = width >> 1; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Block-wide sum / max returned to every thread. `scratch` holds >= 32 floats of shared memory;
// every thread of the block must call (they contain __syncthreads).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_sum(lane < nwarps ? scratch[lane] : 0.f);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_max(lane < nwarps ? scratch[lane] : -INFINITY);
}

// (value, index) order of a stable descending sort: larger value first, then lower index.
__device__ __forceinline__ bool ranks_before(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi);
}

__device__ __forceinline__ void warp_argmax(float& v, int& i) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, v, o);
    const int oi = __shfl_xor_sync(kFullMask, i, o);
    if (ranks_before(ov, oi, v, i)) {
      v = ov;
      i = oi;
    }
  }
}

// Block argmax returned to every thread; scratch_v / scratch_i hold >= 32 entries each.
__device__ __forceinline__ void block_argmax(float& v, int& i, float* scratch_v, int* scratch_i) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  warp_argmax(v, i);
  __syncthreads();
  if (lane == 0) {
    scratch_v[warp] = v;
    scratch_i[warp] = i;
  }
  __syncthreads();
  v = lane < nwarps ? scratch_v[lane] : -INFINITY;
  i = lane < nwarps ? scratch_i[lane] : 0x7fffffff;
  warp_argmax(v, i);
}

// Row-wise softmax minus one-hot over a (rows, C) row-major array, in place:
// out[n, c] = (softmax(in[n, :])[c] - (labels[n] == c)) / n_div, as in the reference
// `(softmax(logits) - y) / n`. A group of `width` lanes (next power of two >= C, <= 32) takes one
// row; call with all threads of the block, followed by __syncthreads before reading `g`.
__device__ __forceinline__ void softmax_minus_onehot(float* g, const int* labels, int rows, int C, float n_div) {
  int width = 1;
  while (width < C && width < 32) width <<= 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int rows_per_warp = 32 / width;
  const int sub = lane % width;
  for (int first = warp * rows_per_warp; first < rows; first += nwarps * rows_per_warp) {
    const int n = first + lane / width;  // warp-uniform loop; each group owns one row
    const bool valid = n < rows;
    float* row = g + (size_t)(valid ? n : 0) * C;
    float m = -INFINITY;
    if (valid)
      for (int c = sub; c < C; c += width) m = fmaxf(m, row[c]);
    m = group_max(m, width);
    float s = 0.f;
    if (valid)
      for (int c = sub; c < C; c += width) {
        const float e = expf(row[c] - m);
        row[c] = e;
        s += e;
      }
    s = group_sum(s, width);
    if (valid) {
      const int y = labels[n];
      for (int c = sub; c < C; c += width) row[c] = (row[c] / s - (c == y ? 1.f : 0.f)) / n_div;
    }
  }
}

}  // namespace edgefs
