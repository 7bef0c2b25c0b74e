// Prototype accumulate + L2 normalise: edgefs.heads.reference.accumulate_normalize on the GPU.
//
// One block per class row to update (`rows`, unique; or, when rows == NULL, the consecutive
// rows row0 .. row0 + gridDim.x - 1, e.g. all C classes, or the one class being enrolled): the
// block adds that class's shots to its running sum in shot order (so the float32 sums equal
// NumPy's `np.add.at` bit for bit), bumps its count, and writes the L2-normalised mean to `out`
// (zeros for a class with count 0). Only the listed rows are touched, so enrolling one class
// reads and writes one row whatever C is. With normalize_shots = 1 each shot is first scaled to
// unit L2 norm (what the heads do: accumulate_normalize(l2_normalize(shots), ...)).
//
// Launch: grid = (R, 1, 1) with R = number of rows, block = (multiple of 32 <= 1024),
// no dynamic shared memory.
#include "common.cuh"

namespace edgefs {

template <typename T>
__device__ void accumulate_normalize(const T* __restrict__ emb, const int* __restrict__ labels, int label_all,
                                     const int* __restrict__ rows, int row0, float* __restrict__ sums,
                                     int* __restrict__ counts, float* __restrict__ out, int S, int D,
                                     int normalize_shots) {
  __shared__ float scratch[32];
  const int c = rows ? rows[blockIdx.x] : row0 + (int)blockIdx.x;
  float* srow = sums + (size_t)c * D;
  const int before = counts[c];
  int added = 0;
  for (int s = 0; s < S; ++s) {
    const int label = labels ? labels[s] : label_all;
    if (label != c) continue;  // block-uniform
    ++added;
    const T* x = emb + (size_t)s * D;
    float scale = 1.f;
    if (normalize_shots) {
      float ss = 0.f;
      for (int d = threadIdx.x; d < D; d += blockDim.x) {
        const float v = to_f32(x[d]);
        ss += v * v;
      }
      scale = fmaxf(sqrtf(block_sum(ss, scratch)), kEps);
    }
    // Each thread owns the same columns for every shot: the adds happen in shot order.
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
      const float v = to_f32(x[d]);
      srow[d] += normalize_shots ? v / scale : v;
    }
  }
  const int total = before + added;
  const float denom = (float)max(total, 1);
  float ss = 0.f;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    const float m = srow[d] / denom;
    ss += m * m;
  }
  const float scale = fmaxf(sqrtf(block_sum(ss, scratch)), kEps);  // every thread has read `before`
  float* orow = out + (size_t)c * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) orow[d] = total == 0 ? 0.f : (srow[d] / denom) / scale;
  if (threadIdx.x == 0) counts[c] = total;
}

}  // namespace edgefs

// Args: emb (S, D) float32|float16; labels (S,) int32 or NULL (then every shot has label_all);
// rows (R,) int32 unique class indices, or NULL for rows row0 .. row0 + R - 1; sums (C, D) float32 and
// counts (C,) int32 updated in place; out (C, D) float32 (only the processed rows are written).
extern "C" __global__ void edgefs_accumulate_f32(const float* emb, const int* labels, int label_all, const int* rows,
                                                 int row0, float* sums, int* counts, float* out, int S, int D,
                                                 int normalize_shots) {
  edgefs::accumulate_normalize<float>(emb, labels, label_all, rows, row0, sums, counts, out, S, D, normalize_shots);
}

extern "C" __global__ void edgefs_accumulate_f16(const __half* emb, const int* labels, int label_all, const int* rows,
                                                 int row0, float* sums, int* counts, float* out, int S, int D,
                                                 int normalize_shots) {
  edgefs::accumulate_normalize<__half>(emb, labels, label_all, rows, row0, sums, counts, out, S, D, normalize_shots);
}
