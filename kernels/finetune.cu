// Fused fine-tune: the whole SGD-with-momentum loop of edgefs.heads.reference in one launch.
//
// edgefs_finetune_gram_*: reference.finetune_gram (the Gram form). With a scalar lr the iterates
// are W_t = w0 + A_t X, so a step needs only logits = X w0^T + K A^T + b with K = X X^T (N x N):
// O(N^2 C) per step instead of O(N C D). With a per-parameter lr (lr_cd != NULL, l2 must be 0)
// W_c = w0_c + lr_c * (a_c X) and every class has its own Gram K_c = X diag(lr_c) X^T. Phase 0
// builds K (or the K_c) and base = X w0^T with 4x4 register tiles per warp; the loop keeps
// A, its velocity, the logits/gradient, b and its velocity in shared memory when they fit
// (state_shared) and K too (k_shared), otherwise in the global scratch `work`, and W is formed
// once at the end.
//
// edgefs_finetune_plain_*: reference.finetune (the plain loop, O(N C D) per step) for what the
// Gram form cannot do exactly: an array l2 (EWC) or a per-parameter lr with l2 > 0. W and its
// velocity live in global memory (W_out and V), the logits/gradient in shared memory when they
// fit.
//
// Both run in ONE block (grid = (1, 1, 1)); block = 32..512 threads, a multiple of 32. Elementwise
// updates use __fmul_rn/__fadd_rn so that they round as NumPy does (no FMA contraction); dot
// products and sums accumulate in float32 in another order than NumPy's BLAS.
#include "common.cuh"

namespace edgefs {

// acc[r][s] = sum_d a_r[d] * (wt[d] *) b_s[d], reduced across the warp (every lane gets the sums).
// Null row pointers stand for zero rows. vec = 1: D % 4 == 0 and every row is aligned for load4.
template <typename TA, typename TB>
__device__ __forceinline__ void warp_tile4x4(const TA* const* a, const TB* const* b, const float* wt, int D, int vec,
                                             float (&acc)[4][4]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int s = 0; s < 4; ++s) acc[r][s] = 0.f;
  if (vec) {
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int d = lane * 4; d < D; d += 128) {
      float4 av[4], bv[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) av[r] = a[r] ? load4(a[r] + d) : zero;
#pragma unroll
      for (int s = 0; s < 4; ++s) bv[s] = b[s] ? load4(b[s] + d) : zero;
      if (wt) {
        const float4 w = load4(wt + d);
#pragma unroll
        for (int s = 0; s < 4; ++s) bv[s] = make_float4(bv[s].x * w.x, bv[s].y * w.y, bv[s].z * w.z, bv[s].w * w.w);
      }
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int s = 0; s < 4; ++s) acc[r][s] += dot4(av[r], bv[s]);
    }
  } else {
    for (int d = lane; d < D; d += 32) {
      float av[4], bv[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) av[r] = a[r] ? to_f32(a[r][d]) : 0.f;
#pragma unroll
      for (int s = 0; s < 4; ++s) bv[s] = b[s] ? to_f32(b[s][d]) : 0.f;
      if (wt) {
        const float w = wt[d];
#pragma unroll
        for (int s = 0; s < 4; ++s) bv[s] *= w;
      }
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int s = 0; s < 4; ++s) acc[r][s] += av[r] * bv[s];
    }
  }
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int s = 0; s < 4; ++s) acc[r][s] = warp_sum(acc[r][s]);
}

// Sum over n of g[n, c] for each class, then b's momentum step (reference: vb = mom*vb + g.sum(0);
// b = b - lr_b*vb). Threads c < C each own one class.
__device__ __forceinline__ void bias_step(const float* g, float* b, float* vb, int N, int C, float mom, float lr_b) {
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    float s = 0.f;
#pragma unroll 8
    for (int n = 0; n < N; ++n) s += g[(size_t)n * C + c];
    const float v = __fadd_rn(__fmul_rn(mom, vb[c]), s);
    vb[c] = v;
    b[c] = __fadd_rn(b[c], -__fmul_rn(lr_b, v));
  }
}

template <typename T>
__device__ void finetune_gram(const T* __restrict__ X, const int* __restrict__ labels, const float* __restrict__ w0,
                              const float* __restrict__ b0, const float* __restrict__ lr_cd, int lr_stride_c, float lr,
                              float lr_b, int steps, float mom, float l2, int N, int C, int D,
                              float* __restrict__ W_out, float* __restrict__ b_out, float* work, int k_shared,
                              int state_shared, int vec) {
  extern __shared__ __align__(16) float smem[];
  const bool per_class = lr_cd != nullptr;
  const int nc = N * C;
  const size_t k_size = per_class ? (size_t)C * N * N : (size_t)N * N;
  float* sp = smem;
  float* gp = work;
  float* K = k_shared ? sp : gp;  // (N, N), or (N, N, C) per class: K[(n*N + m)*C + c]
  if (k_shared)
    sp += k_size;
  else
    gp += k_size;
  float* base = state_shared ? sp : gp;  // (N, C) X w0^T
  float* A = base + nc;                   // (N, C) = a^T: W = w0 + a X, a (C, N)
  float* VA = A + nc;                     // (N, C) velocity of A
  float* G = VA + nc;                     // (N, C) logits, then the gradient
  float* b = G + nc;                      // (C,)
  float* vb = b + C;                      // (C,)
  int* lab = reinterpret_cast<int*>(vb + C);  // (N,)

  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int lane = tid & 31, warp = tid >> 5, nwarps = nthreads >> 5;
  for (int i = tid; i < nc; i += nthreads) {
    A[i] = 0.f;
    VA[i] = 0.f;
  }
  for (int c = tid; c < C; c += nthreads) {
    b[c] = b0[c];
    vb[c] = 0.f;
  }
  for (int n = tid; n < N; n += nthreads) lab[n] = labels[n];

  // Phase 0: K and base, one 4x4 tile of dot products per warp at a time. Column tiles
  // [0, tn) are support rows, [tn, tn + tc) rows of w0.
  const int tn = (N + 3) / 4, tc = (C + 3) / 4;
  const int gram_tiles = per_class ? C * tn * tn : tn * tn;
  for (int t = warp; t < tn * tc + gram_tiles; t += nwarps) {
    float acc[4][4];
    if (t < tn * tc) {  // base = X w0^T
      const int i0 = (t / tc) * 4, c0 = (t % tc) * 4;
      const T* a[4];
      const float* bw[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) a[r] = i0 + r < N ? X + (size_t)(i0 + r) * D : nullptr;
#pragma unroll
      for (int s = 0; s < 4; ++s) bw[s] = c0 + s < C ? w0 + (size_t)(c0 + s) * D : nullptr;
      warp_tile4x4<T, float>(a, bw, nullptr, D, vec, acc);
      if (lane == 0)
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
          for (int s = 0; s < 4; ++s)
            if (i0 + r < N && c0 + s < C) base[(i0 + r) * C + c0 + s] = acc[r][s];
      continue;
    }
    const int u = t - tn * tc;
    const int c = per_class ? u / (tn * tn) : 0;
    const int ti = (u % (tn * tn)) / tn, tj = u % tn;
    if (tj < ti) continue;  // K (and each K_c) is symmetric: tile (tj, ti) writes both halves
    const int i0 = ti * 4, j0 = tj * 4;
    const T* a[4];
    const T* bx[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) a[r] = i0 + r < N ? X + (size_t)(i0 + r) * D : nullptr;
#pragma unroll
    for (int s = 0; s < 4; ++s) bx[s] = j0 + s < N ? X + (size_t)(j0 + s) * D : nullptr;
    warp_tile4x4<T, T>(a, bx, per_class ? lr_cd + (size_t)c * lr_stride_c : nullptr, D, vec, acc);
    if (lane == 0)
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          const int i = i0 + r, j = j0 + s;
          if (i >= N || j >= N) continue;
          if (per_class) {
            K[((size_t)i * N + j) * C + c] = acc[r][s];
            K[((size_t)j * N + i) * C + c] = acc[r][s];
          } else {
            K[(size_t)i * N + j] = acc[r][s];
            K[(size_t)j * N + i] = acc[r][s];
          }
        }
  }
  __syncthreads();

  const float n_div = (float)max(N, 1);
  for (int step = 0; step < steps; ++step) {
    // logits = base + K A^T + b, one (n, c) per thread.
    for (int t = tid; t < nc; t += nthreads) {
      const int n = t / C, c = t - n * C;
      float s = 0.f;
      if (per_class) {
        const float* kr = K + (size_t)n * N * C + c;
#pragma unroll 4
        for (int m = 0; m < N; ++m) s += kr[(size_t)m * C] * A[m * C + c];
      } else {
        const float* kr = K + (size_t)n * N;
#pragma unroll 4
        for (int m = 0; m < N; ++m) s += kr[m] * A[m * C + c];
      }
      G[t] = __fadd_rn(__fadd_rn(base[t], s), b[c]);
    }
    __syncthreads();
    softmax_minus_onehot(G, lab, N, C, n_div);
    __syncthreads();
    // va = mom*va + (g^T + l2*a); a -= lr*va   (per class: va = mom*va + g^T; a -= va)
    for (int t = tid; t < nc; t += nthreads) {
      const float grad = per_class ? G[t] : __fadd_rn(G[t], __fmul_rn(l2, A[t]));
      const float v = __fadd_rn(__fmul_rn(mom, VA[t]), grad);
      VA[t] = v;
      A[t] = __fadd_rn(A[t], -(per_class ? v : __fmul_rn(lr, v)));
    }
    bias_step(G, b, vb, N, C, mom, lr_b);
    __syncthreads();
  }

  // W = w0 + a X (per class: w0 + lr_c * (a X)), one column d per thread, 8 classes at a time.
  for (int d = tid; d < D; d += nthreads)
    for (int c0 = 0; c0 < C; c0 += 8) {
      float acc[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[j] = 0.f;
      for (int n = 0; n < N; ++n) {
        const float x = to_f32(X[(size_t)n * D + d]);
        const float* ar = A + (size_t)n * C + c0;
#pragma unroll
        for (int j = 0; j < 8; ++j)
          if (c0 + j < C) acc[j] += ar[j] * x;
      }
#pragma unroll
      for (int j = 0; j < 8; ++j)
        if (c0 + j < C) {
          const size_t o = (size_t)(c0 + j) * D + d;
          const float s = per_class ? __fmul_rn(lr_cd[(size_t)(c0 + j) * lr_stride_c + d], acc[j]) : acc[j];
          W_out[o] = __fadd_rn(w0[o], s);
        }
    }
  for (int c = tid; c < C; c += nthreads) b_out[c] = b[c];
}

template <typename T>
__device__ void finetune_plain(const T* __restrict__ X, const int* __restrict__ labels, const float* __restrict__ w0,
                               const float* __restrict__ b0, const float* __restrict__ lr_arr, int lr_stride_c,
                               float lr, const float* __restrict__ pen_arr, int pen_stride_c, float pen, float lr_b,
                               int steps, float mom, int N, int C, int D, float* W, float* __restrict__ b_out,
                               float* V, float* work, int state_shared, int vec) {
  extern __shared__ __align__(16) float smem[];
  const int nc = N * C;
  float* G = state_shared ? smem : work;  // (N, C) logits, then the gradient
  float* b = G + nc;
  float* vb = b + C;
  int* lab = reinterpret_cast<int*>(vb + C);
  const int tid = threadIdx.x, nthreads = blockDim.x;
  const int lane = tid & 31, warp = tid >> 5, nwarps = nthreads >> 5;
  const int cd = C * D;
  for (int i = tid; i < cd; i += nthreads) {
    W[i] = w0[i];
    V[i] = 0.f;
  }
  for (int c = tid; c < C; c += nthreads) {
    b[c] = b0[c];
    vb[c] = 0.f;
  }
  for (int n = tid; n < N; n += nthreads) lab[n] = labels[n];
  __syncthreads();

  const float n_div = (float)max(N, 1);
  for (int step = 0; step < steps; ++step) {
    // logits = X W^T + b, one warp per (n, c).
    for (int p = warp; p < nc; p += nwarps) {
      const int n = p / C, c = p - n * C;
      const T* xr = X + (size_t)n * D;
      const float* wr = W + (size_t)c * D;
      float s = 0.f;
      if (vec)
        for (int d = lane * 4; d < D; d += 128) s += dot4(load4(xr + d), load4(wr + d));
      else
        for (int d = lane; d < D; d += 32) s += to_f32(xr[d]) * wr[d];
      s = warp_sum(s);
      if (lane == 0) G[p] = __fadd_rn(s, b[c]);
    }
    __syncthreads();
    softmax_minus_onehot(G, lab, N, C, n_div);
    __syncthreads();
    // vw = mom*vw + (g^T X + pen*(W - w0)); W -= lr*vw, elementwise over (c, d).
    for (int t = tid; t < cd; t += nthreads) {
      const int c = t / D, d = t - c * D;
      float gx = 0.f;
#pragma unroll 4
      for (int n = 0; n < N; ++n) gx += G[n * C + c] * to_f32(X[(size_t)n * D + d]);
      const float p = pen_arr ? pen_arr[(size_t)c * pen_stride_c + d] : pen;
      const float l = lr_arr ? lr_arr[(size_t)c * lr_stride_c + d] : lr;
      const float v = __fadd_rn(__fmul_rn(mom, V[t]), __fadd_rn(gx, __fmul_rn(p, __fadd_rn(W[t], -w0[t]))));
      V[t] = v;
      W[t] = __fadd_rn(W[t], -__fmul_rn(l, v));
    }
    bias_step(G, b, vb, N, C, mom, lr_b);
    __syncthreads();
  }
  for (int c = tid; c < C; c += nthreads) b_out[c] = b[c];
}

}  // namespace edgefs

// Gram form. Args: X (N, D) float32|float16 support; labels (N,) int32 in 0..C-1; w0 (C, D),
// b0 (C,) float32; lr_cd: NULL for a scalar lr, else float32 per-parameter rates with row stride
// lr_stride_c (0 for one (D,) row shared by all classes, D for (C, D)) and then l2 must be 0;
// outputs W_out (C, D), b_out (C,) float32; work: float32 global scratch for what is not in
// shared memory (see edgefs.kernels.launch.plan_finetune_gram for the sizes).
extern "C" __global__ void __launch_bounds__(512)
    edgefs_finetune_gram_f32(const float* X, const int* labels, const float* w0, const float* b0, const float* lr_cd,
                             int lr_stride_c, float lr, float lr_b, int steps, float mom, float l2, int N, int C, int D,
                             float* W_out, float* b_out, float* work, int k_shared, int state_shared, int vec) {
  edgefs::finetune_gram<float>(X, labels, w0, b0, lr_cd, lr_stride_c, lr, lr_b, steps, mom, l2, N, C, D, W_out, b_out,
                               work, k_shared, state_shared, vec);
}

extern "C" __global__ void __launch_bounds__(512)
    edgefs_finetune_gram_f16(const __half* X, const int* labels, const float* w0, const float* b0, const float* lr_cd,
                             int lr_stride_c, float lr, float lr_b, int steps, float mom, float l2, int N, int C, int D,
                             float* W_out, float* b_out, float* work, int k_shared, int state_shared, int vec) {
  edgefs::finetune_gram<__half>(X, labels, w0, b0, lr_cd, lr_stride_c, lr, lr_b, steps, mom, l2, N, C, D, W_out,
                                b_out, work, k_shared, state_shared, vec);
}

// Plain loop. Args as above, plus lr_arr / pen_arr: NULL for the scalar lr / pen, else float32
// per-parameter arrays with row stride 0 or D; W_out (C, D) holds W during the loop; V (C, D)
// float32 scratch for the velocity; work: scratch for the logits when not in shared memory.
extern "C" __global__ void __launch_bounds__(512)
    edgefs_finetune_plain_f32(const float* X, const int* labels, const float* w0, const float* b0,
                              const float* lr_arr, int lr_stride_c, float lr, const float* pen_arr, int pen_stride_c,
                              float pen, float lr_b, int steps, float mom, int N, int C, int D, float* W_out,
                              float* b_out, float* V, float* work, int state_shared, int vec) {
  edgefs::finetune_plain<float>(X, labels, w0, b0, lr_arr, lr_stride_c, lr, pen_arr, pen_stride_c, pen, lr_b, steps,
                                mom, N, C, D, W_out, b_out, V, work, state_shared, vec);
}

extern "C" __global__ void __launch_bounds__(512)
    edgefs_finetune_plain_f16(const __half* X, const int* labels, const float* w0, const float* b0,
                              const float* lr_arr, int lr_stride_c, float lr, const float* pen_arr, int pen_stride_c,
                              float pen, float lr_b, int steps, float mom, int N, int C, int D, float* W_out,
                              float* b_out, float* V, float* work, int state_shared, int vec) {
  edgefs::finetune_plain<__half>(X, labels, w0, b0, lr_arr, lr_stride_c, lr, pen_arr, pen_stride_c, pen, lr_b, steps,
                                 mom, N, C, D, W_out, b_out, V, work, state_shared, vec);
}
