// Fused classify: edgefs.heads.reference.classify on the GPU, one launch per query batch.
//
// Per query: L2-normalise it, logits[c] = temperature * <q_n, w_c> (+ bias[c] when given),
// softmax, top-k (ties to the lower index, as the reference's stable sort), best similarity
// (max over c of <q_n, s_c>, where s = sim_rows, or w itself when sim_rows == NULL) and the
// unknown flag (best < threshold).
//
// Layout: grid = (P * Q, 1, 1), where P = ceil(C / classes_per_block) blocks share one query so
// that the C x D weight read, the only large traffic, is spread over many SMs even at batch 1.
// Each block normalises its query (D floats in shared memory), scores its slice of classes
// (one warp per class, lanes along D) into the global scratch rows logit_ws / sim_ws (Q, C),
// then takes a ticket on counters[query]; the block that comes last (threadfence-reduction
// pattern) does the softmax, top-k and threshold over the whole row and resets the counter to 0
// for the next launch. counters (Q,) must be zero before the first launch.
// Dynamic shared memory: smem_floats = min(max(D, C), what fits) floats. Shapes above it are tiled
// through global memory instead of refused: when D > smem_floats the normalised query is not staged
// (each warp reads q from global memory and divides by the norm, the same float32 values), and when
// C > smem_floats the last block runs the softmax and top-k in place on this query's global scratch
// row of logit_ws (written by the other blocks, read through L2 with __ldcg; only this block touches
// it now). So 10,000 or 100,000 classes take the same launch, the reduction reading the row a few
// times from L2 instead of once into shared memory.
#include "common.cuh"

namespace edgefs {

template <typename T>
__device__ void classify(const T* __restrict__ q, const float* __restrict__ w, const float* __restrict__ bias,
                         const float* __restrict__ sim_rows, float* logit_ws, float* sim_ws, unsigned* counters,
                         int* __restrict__ out_idx, float* __restrict__ out_prob, float* __restrict__ out_best,
                         int* __restrict__ out_unknown, int C, int D, int k, float temperature, float threshold,
                         int classes_per_block, int vec, int smem_floats) {
  extern __shared__ __align__(16) float buf[];  // query (D), later probabilities (C), when they fit
  const bool q_shared = D <= smem_floats, row_shared = C <= smem_floats;
  __shared__ float scratch_v[32];
  __shared__ int scratch_i[32];
  __shared__ bool is_last;
  const int parts = (C + classes_per_block - 1) / classes_per_block;
  const int query = blockIdx.x / parts;
  const int part = blockIdx.x % parts;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;

  // 1. The normalised query, as l2_normalize: q / max(|q|, eps); staged in shared memory when it fits.
  const T* qrow = q + (size_t)query * D;
  float ss = 0.f;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    const float v = to_f32(qrow[d]);
    if (q_shared) buf[d] = v;
    ss += v * v;
  }
  const float scale = fmaxf(sqrtf(block_sum(ss, scratch_v)), kEps);  // block_sum syncs: buf is complete
  if (q_shared)
    for (int d = threadIdx.x; d < D; d += blockDim.x) buf[d] = buf[d] / scale;
  __syncthreads();

  // 2. This block's slice of classes, one warp per class.
  const int c_end = min(C, (part + 1) * classes_per_block);
  for (int c = part * classes_per_block + warp; c < c_end; c += nwarps) {
    const float* wr = w + (size_t)c * D;
    const float* sr = sim_rows ? sim_rows + (size_t)c * D : nullptr;
    float dot = 0.f, sim = 0.f;
    if (!q_shared) {
      // D above shared memory: the query straight from global memory (cached), same quotient.
      for (int d = lane; d < D; d += 32) {
        const float qd = to_f32(qrow[d]) / scale;
        dot += qd * __ldg(wr + d);
        if (sr) sim += qd * __ldg(sr + d);
      }
    } else if (vec) {
      const float4* q4 = reinterpret_cast<const float4*>(buf);
      const float4* w4 = reinterpret_cast<const float4*>(wr);
      const float4* s4 = reinterpret_cast<const float4*>(sr);
#pragma unroll 4
      for (int i = lane; i < D / 4; i += 32) {
        const float4 qv = q4[i];
        dot += dot4(qv, __ldg(w4 + i));
        if (sr) sim += dot4(qv, __ldg(s4 + i));
      }
    } else {
      for (int d = lane; d < D; d += 32) {
        dot += buf[d] * __ldg(wr + d);
        if (sr) sim += buf[d] * __ldg(sr + d);
      }
    }
    dot = warp_sum(dot);
    sim = sr ? warp_sum(sim) : dot;
    if (lane == 0) {
      // temperature * cos (+ bias): the reference's float32(temperature) * cos.
      logit_ws[(size_t)query * C + c] = temperature * dot + (bias ? bias[c] : 0.f);
      sim_ws[(size_t)query * C + c] = sim;
    }
  }

  // 3. Ticket: the last block of this query finishes it.
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) is_last = atomicAdd(counters + query, 1u) == (unsigned)(parts - 1);
  __syncthreads();
  if (!is_last) return;

  // 4. Softmax over the row (L1 bypassed: other blocks wrote it), as reference.softmax. The row
  // lives in shared memory when C fits, else in place in the global scratch row (tiled through L2).
  float* lrow = logit_ws + (size_t)query * C;
  const float* srow = sim_ws + (size_t)query * C;
  float* row = row_shared ? buf : lrow;
  float m = -INFINITY, best = -INFINITY;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float l = __ldcg(lrow + c);
    if (row_shared) buf[c] = l;
    m = fmaxf(m, l);
    best = fmaxf(best, __ldcg(srow + c));
  }
  m = block_max(m, scratch_v);
  best = block_max(best, scratch_v);
  float s = 0.f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    // Each thread rewrites only its own entries here: no other thread reads them before the sync.
    const float e = expf((row_shared ? buf[c] : __ldcg(row + c)) - m);
    row[c] = e;
    s += e;
  }
  s = block_sum(s, scratch_v);  // syncs: every exponential is written
  for (int c = threadIdx.x; c < C; c += blockDim.x) row[c] = (row_shared ? buf[c] : __ldcg(row + c)) / s;
  __threadfence_block();
  __syncthreads();

  // 5. Top-k by repeated block argmax; a taken entry is set to -1 (probabilities are >= 0).
  for (int j = 0; j < k; ++j) {
    float v = -INFINITY;
    int i = 0x7fffffff;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      const float p = row_shared ? buf[c] : __ldcg(row + c);
      if (ranks_before(p, c, v, i)) {
        v = p;
        i = c;
      }
    }
    block_argmax(v, i, scratch_v, scratch_i);
    if (threadIdx.x == 0) {
      out_idx[(size_t)query * k + j] = i;
      out_prob[(size_t)query * k + j] = v;
      row[i] = -1.f;
    }
    __threadfence_block();
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out_best[query] = best;
    out_unknown[query] = best < threshold ? 1 : 0;
    counters[query] = 0u;
  }
}

}  // namespace edgefs

// Args: q (Q, D) float32|float16 queries; w (C, D) float32 unit rows; bias (C,) float32 or NULL;
// sim_rows (C, D) float32 or NULL (then similarity = <q_n, w_c>); logit_ws, sim_ws (Q, C) float32
// scratch; counters (Q,) uint32, zero; outputs top_idx (Q, k) int32, top_prob (Q, k) float32,
// best (Q,) float32, unknown (Q,) int32 0/1. k <= C. vec = 1 only when D % 4 == 0 and the row
// pointers of w and sim_rows are 16-byte aligned. smem_floats: the dynamic shared memory in floats.
extern "C" __global__ void edgefs_classify_f32(const float* q, const float* w, const float* bias,
                                               const float* sim_rows, float* logit_ws, float* sim_ws,
                                               unsigned* counters, int* out_idx, float* out_prob, float* out_best,
                                               int* out_unknown, int C, int D, int k, float temperature,
                                               float threshold, int classes_per_block, int vec,
                                               int smem_floats) {
  edgefs::classify<float>(q, w, bias, sim_rows, logit_ws, sim_ws, counters, out_idx, out_prob, out_best,
                          out_unknown, C, D, k, temperature, threshold, classes_per_block, vec, smem_floats);
}

extern "C" __global__ void edgefs_classify_f16(const __half* q, const float* w, const float* bias,
                                               const float* sim_rows, float* logit_ws, float* sim_ws,
                                               unsigned* counters, int* out_idx, float* out_prob, float* out_best,
                                               int* out_unknown, int C, int D, int k, float temperature,
                                               float threshold, int classes_per_block, int vec,
                                               int smem_floats) {
  edgefs::classify<__half>(q, w, bias, sim_rows, logit_ws, sim_ws, counters, out_idx, out_prob, out_best,
                           out_unknown, C, D, k, temperature, threshold, classes_per_block, vec, smem_floats);
}
