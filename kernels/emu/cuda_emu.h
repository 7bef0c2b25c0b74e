// A CPU emulation of the CUDA device language, for testing the edgefs kernels without a GPU.
//
// Force-included (g++ -include cuda_emu.h -x c++) in front of an UNMODIFIED kernels/*.cu source;
// edgefs.kernels.emu.build compiles the result into a shared library with one C entry point per
// kernel, and edgefs.kernels.emu.launch runs the pycuda launchers' code on it.
//
// Execution model. Every CUDA thread of a block is a fiber (its own stack; a hand-written context
// switch on x86-64, ucontext elsewhere); the blocks of a grid run one after another on the
// calling OS thread. A fiber runs until it reaches a synchronisation point, __syncthreads or a
// warp collective (__shfl_*_sync, __ballot_sync, __any/__all_sync, __syncwarp, __reduce_*_sync),
// and then yields to the block's scheduler. The scheduler makes passes over the warps of the
// block; a visit to a warp runs its lanes, round after round, until every lane waits at a
// barrier or has exited (a warp collective completes within the visit), then the next warp
// goes; a barrier completes when every live thread of the block has reached it. The orders
// come from the launch's schedule:
//   forward  warps 0, 1, 2, ... and lanes 0..31 in every pass and visit, blocks in order;
//   reverse  the last warp, the last lane and the last block first;
//   shuffle  a new pseudo-random order of the warps in every pass and of the lanes in every
//            visit, and a pseudo-random block order, from the launch's seed.
// So between two barriers the warps run one after another in varying orders, and between two
// collectives the lanes of a warp do.
// A warp collective exchanges values through a per-warp slot array: every lane deposits its
// value, the last of the 32 completes the exchange, then every lane reads the slots (two slot
// sets alternate, so a lane can never overwrite values others have not read yet). So the kernels
// run with the semantics of independent thread scheduling (Volta and later): nothing is
// lock-step unless a collective or a barrier makes it so.
//
// What this catches:
//   - a missing __syncthreads where a thread reads shared data another thread writes in the
//     same barrier interval: across schedules the reader's warp runs before or after the
//     writer's (within a warp, the reader's lane before or after the writer's), and
//     dynamic shared memory is filled with 0xff bytes (NaN as float, -1 as int) at the start of
//     every block, so a read of a value nobody wrote yet is loud;
//   - a warp collective called by only some lanes of a warp, lanes calling different
//     collectives, __syncthreads not reached by every thread (deadlock), a collective after
//     lanes of the warp exited: the launch fails with a message naming the block;
//   - with -fsanitize=address: any access past the launch's dynamic shared-memory size (the
//     bytes after it are poisoned), past a global buffer the launcher allocated (each one is a
//     separate, exactly sized allocation) or past a fiber's stack; with -fsanitize=undefined
//     (bounds): an index past a static __shared__ array, misaligned float4 loads, signed
//     overflow, and the rest of UBSan.
// What it does not catch or model:
//   - races that need a finer interleaving than this: a warp's stretch between two barriers
//     runs without other warps in between, a lane's stretch between two synchronisation
//     points without other lanes in between (so two threads doing a non-atomic
//     read-modify-write of one shared word never lose an update here, as they can on a GPU);
//   - the GPU memory model: every write is visible to every later read at once, fences are
//     no-ops in effect, and blocks do not run concurrently (a kernel that spins waiting for
//     another block would hang; a "last block" ticket works as on the GPU);
//   - timing, memory coalescing, bank conflicts, occupancy, register limits, warp scheduling;
//   - FMA contraction: nvcc fuses a*b+c by default, this build does not (-ffp-contract=off),
//     so GPU results may differ from these in the last bits of products summed in a loop;
//   - static __shared__ arrays are thread_local storage, stale from the previous block rather
//     than 0xff-filled (the GPU leaves them undefined too).
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <atomic>
#include <cmath>
#include <numeric>
#include <type_traits>
#include <utility>

#if defined(__SANITIZE_ADDRESS__)
#define EDGEFS_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EDGEFS_EMU_ASAN 1
#endif
#endif
#ifdef EDGEFS_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

// ---- qualifiers ---------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
// One storage class that works both as `__shared__ T x[N];` (block scope: implicitly static,
// here one copy per OS thread, i.e. per block, since a block's fibers share their OS thread) and
// as `extern __shared__ T x[];` (the dynamic shared memory, defined by the generated library).
#define __shared__ thread_local
#define __align__(n) __attribute__((aligned(n)))
#define warpSize 32

// ---- vector and half types ------------------------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct __attribute__((aligned(8))) float2 {
  float x, y;
};
struct __attribute__((aligned(16))) float4 {
  float x, y, z, w;
};
struct __attribute__((aligned(8))) int2 {
  int x, y;
};
struct __attribute__((aligned(16))) int4 {
  int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }

struct __half {
  uint16_t bits;
};
struct __attribute__((aligned(4))) __half2 {
  __half x, y;
};

// IEEE binary16 <-> binary32, exact one way and round-to-nearest-even the other (as CUDA's
// __half2float / __float2half).
inline float __half2float(__half h) {
  const uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu, man = h.bits & 0x3ffu;
  uint32_t out;
  if (exp == 0) {
    const float v = ldexpf((float)man, -24);  // zero or subnormal, exact
    memcpy(&out, &v, 4);
    out |= sign;
  } else if (exp == 31) {
    out = sign | 0x7f800000u | (man << 13);
  } else {
    out = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &out, 4);
  return f;
}

inline __half __float2half(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return __half{(uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u : 0u))};
  if (ax >= 0x477ff000u) return __half{(uint16_t)(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (ax < 0x38800000u) {                                              // below 2^-14: subnormal half
    float a;
    memcpy(&a, &ax, 4);
    const float scaled = a * 16777216.f;  // exact; units of 2^-24
    return __half{(uint16_t)(sign | (uint16_t)nearbyintf(scaled))};
  }
  const uint32_t mant = ax & 0x7fffffu;
  uint32_t h = ((ax >> 23) - 112u) << 10 | (mant >> 13);
  const uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return __half{(uint16_t)(sign | h)};
}
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }
inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
inline __half2 __float22half2_rn(float2 f) { return __half2{__float2half(f.x), __float2half(f.y)}; }
inline __half __float2half_rn(float f) { return __float2half(f); }

// ---- math -----------------------------------------------------------------------------------------
// The intrinsics round as IEEE float32 here (the fast GPU versions of __expf, __fdividef are
// approximations: a test tolerance that passes here may need room on the GPU).
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float rsqrtf(float x) { return 1.f / sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.f / sqrtf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.f / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline int max(int a, int b) { return a > b ? a : b; }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline float min(float a, float b) { return fminf(a, b); }

// Cache-hinted loads and stores are plain loads and stores.
template <typename T>
inline T __ldg(const T* p) { return *p; }
template <typename T>
inline T __ldcg(const T* p) { return *p; }
template <typename T>
inline T __ldca(const T* p) { return *p; }
template <typename T>
inline T __ldcs(const T* p) { return *p; }
template <typename T>
inline T __ldlu(const T* p) { return *p; }
template <typename T>
inline T __ldcv(const T* p) { return *p; }
template <typename T>
inline void __stcg(T* p, T v) { *p = v; }
template <typename T>
inline void __stcs(T* p, T v) { *p = v; }
template <typename T>
inline void __stwt(T* p, T v) { *p = v; }

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_system() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// Atomics: a fiber is never interrupted between two synchronisation points and all blocks of a
// launch run on one OS thread, so a plain read-modify-write is atomic with respect to every
// other CUDA thread of the launch.
template <typename T>
inline T atomicAdd(T* p, T v) { const T old = *p; *p = old + v; return old; }
template <typename T>
inline T atomicSub(T* p, T v) { const T old = *p; *p = old - v; return old; }
template <typename T>
inline T atomicExch(T* p, T v) { const T old = *p; *p = v; return old; }
template <typename T>
inline T atomicMin(T* p, T v) { const T old = *p; *p = v < old ? v : old; return old; }
template <typename T>
inline T atomicMax(T* p, T v) { const T old = *p; *p = v > old ? v : old; return old; }
template <typename T>
inline T atomicAnd(T* p, T v) { const T old = *p; *p = old & v; return old; }
template <typename T>
inline T atomicOr(T* p, T v) { const T old = *p; *p = old | v; return old; }
template <typename T>
inline T atomicXor(T* p, T v) { const T old = *p; *p = old ^ v; return old; }
template <typename T>
inline T atomicCAS(T* p, T compare, T v) { const T old = *p; if (old == compare) *p = v; return old; }
inline unsigned atomicInc(unsigned* p, unsigned limit) { const unsigned old = *p; *p = old >= limit ? 0u : old + 1u; return old; }
inline unsigned atomicDec(unsigned* p, unsigned limit) { const unsigned old = *p; *p = (old == 0u || old > limit) ? limit : old - 1u; return old; }

// ---- the fiber runtime ----------------------------------------------------------------------------
#if defined(__x86_64__) && !defined(EDGEFS_EMU_SECOND_UNIT)
// edgefs_emu_switch(save, to): push the callee-saved registers, store the stack pointer in
// *save, load `to` and pop the same from there. (MXCSR and the x87 control word are not
// switched: nothing here changes rounding modes.)
__asm__(
    ".text\n"
    ".globl edgefs_emu_switch\n"
    ".hidden edgefs_emu_switch\n"
    ".type edgefs_emu_switch,@function\n"
    "edgefs_emu_switch:\n"
    "  pushq %rbp\n  pushq %rbx\n  pushq %r12\n  pushq %r13\n  pushq %r14\n  pushq %r15\n"
    "  movq %rsp, (%rdi)\n  movq %rsi, %rsp\n"
    "  popq %r15\n  popq %r14\n  popq %r13\n  popq %r12\n  popq %rbx\n  popq %rbp\n"
    "  ret\n"
    ".size edgefs_emu_switch, .-edgefs_emu_switch\n");
#endif
#if defined(__x86_64__)
extern "C" void edgefs_emu_switch(void** save, void* to);
#endif

namespace edgefs_emu {

enum State : int { kReady, kBarrier, kWarp, kDone };
enum Schedule : int { kForward = 0, kReverse = 1, kShuffle = 2 };

struct Fiber {
#if defined(__x86_64__)
  void* sp;
#else
  ucontext_t ctx;
#endif
  char* stack;
  uint3 tid;
  int lane, warp;
  State state;
  unsigned wait;        // barrier generation, or warp collective count, waited for
  unsigned collectives; // warp collectives this lane has entered
  void* fake_stack;     // AddressSanitizer's fake-stack handle while switched out
};

struct Warp {
  uint64_t slots[2][32];
  int op[2];
  unsigned arrived[2];
  unsigned completed;
  int lanes, exited;
};

struct DynamicShared {
  void* (*address)();
  size_t capacity;
};

constexpr size_t kMaxThreads = 1024;
#ifdef EDGEFS_EMU_ASAN
constexpr size_t kStackSize = 256 * 1024;
#else
constexpr size_t kStackSize = 64 * 1024;
#endif
constexpr size_t kGuard = 4096;

// Per library (the build hides them: -fvisibility=hidden): the launch in progress.
inline Fiber g_fibers[kMaxThreads];
inline Warp g_warps[kMaxThreads / 32];
inline Fiber* g_cur = nullptr;
inline uint3 g_block_idx;
inline dim3 g_block_dim, g_grid_dim;
inline int g_threads = 0, g_live = 0;
inline unsigned g_bar_arrived = 0, g_bar_gen = 0;
inline char* g_stacks = nullptr;  // kMaxThreads stacks, each above a PROT_NONE guard page
inline void (*g_body)(void*) = nullptr;
inline void* g_body_ctx = nullptr;
inline char g_error[512];
inline bool g_failed = false;
inline DynamicShared g_dynamic[4];
inline int g_ndynamic = 0;
#if defined(__x86_64__)
inline void* g_sched_sp = nullptr;
#else
inline ucontext_t g_sched_ctx;
#endif
#ifdef EDGEFS_EMU_ASAN
inline const void* g_sched_bottom = nullptr;
inline size_t g_sched_size = 0;
inline void* g_sched_fake = nullptr;
#endif

inline int register_dynamic_shared(void* (*address)(), size_t capacity) {
  if (g_ndynamic < 4) g_dynamic[g_ndynamic++] = DynamicShared{address, capacity};
  return 0;
}

// Record the first error of the launch and return to the scheduler, which stops the launch.
[[noreturn]] inline void fail_and_leave();
inline void fail(const char* what) {
  if (!g_failed) {
    snprintf(g_error, sizeof g_error, "block (%u,%u,%u) thread (%u,%u,%u): %s", g_block_idx.x, g_block_idx.y,
             g_block_idx.z, g_cur ? g_cur->tid.x : 0u, g_cur ? g_cur->tid.y : 0u, g_cur ? g_cur->tid.z : 0u, what);
    g_failed = true;
  }
  if (g_cur) fail_and_leave();
}

inline void to_scheduler(bool final_exit) {
  Fiber* f = g_cur;
#ifdef EDGEFS_EMU_ASAN
  __sanitizer_start_switch_fiber(final_exit ? nullptr : &f->fake_stack, g_sched_bottom, g_sched_size);
#else
  (void)final_exit;
#endif
#if defined(__x86_64__)
  edgefs_emu_switch(&f->sp, g_sched_sp);
#else
  swapcontext(&f->ctx, &g_sched_ctx);
#endif
#ifdef EDGEFS_EMU_ASAN
  __sanitizer_finish_switch_fiber(f->fake_stack, &g_sched_bottom, &g_sched_size);
#endif
}

[[noreturn]] inline void fail_and_leave() {
  for (;;) to_scheduler(true);  // never resumed: the scheduler stops at the first error
}

inline void fiber_exit() {
  Fiber* f = g_cur;
  f->state = kDone;
  --g_live;
  Warp& w = g_warps[f->warp];
  ++w.exited;
  if (w.arrived[0] || w.arrived[1]) fail("thread exited while lanes of its warp wait in a warp collective");
  if (g_bar_arrived && g_bar_arrived == (unsigned)g_live) {  // exited threads do not hold a barrier
    g_bar_arrived = 0;
    ++g_bar_gen;
  }
  for (;;) to_scheduler(true);
}

extern "C" inline void edgefs_emu_fiber_main() {
#ifdef EDGEFS_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_sched_bottom, &g_sched_size);
#endif
  g_body(g_body_ctx);
  fiber_exit();
}

#if !defined(__x86_64__)
inline void fiber_main_ucontext() { edgefs_emu_fiber_main(); }
#endif

inline void resume(Fiber* f) {
  g_cur = f;
#ifdef EDGEFS_EMU_ASAN
  __sanitizer_start_switch_fiber(&g_sched_fake, f->stack, kStackSize);
#endif
#if defined(__x86_64__)
  edgefs_emu_switch(&g_sched_sp, f->sp);
#else
  swapcontext(&g_sched_ctx, &f->ctx);
#endif
#ifdef EDGEFS_EMU_ASAN
  __sanitizer_finish_switch_fiber(g_sched_fake, nullptr, nullptr);
#endif
  g_cur = nullptr;
}

inline void start_fiber(Fiber* f) {
#if defined(__x86_64__)
  // Stack top: the return address of edgefs_emu_switch's `ret` (edgefs_emu_fiber_main, entered
  // with rsp = 8 mod 16 as after a call) and six zeroed callee-saved registers.
  // The stacks lie a multiple of 4 KiB apart: start each at another offset in its page, so that
  // the hot top frames of 32 lanes do not all fall into the same cache sets.
  const size_t colour = (size_t)((f->tid.x + 32 * f->tid.y + 1024 * f->tid.z) & 63) * 64;
  uint64_t* top = reinterpret_cast<uint64_t*>(f->stack + kStackSize - colour);
  top -= 2;
  top[0] = reinterpret_cast<uint64_t>(&edgefs_emu_fiber_main);
  top[1] = 0;
  top -= 6;
  for (int i = 0; i < 6; ++i) top[i] = 0;
  f->sp = top;
#else
  getcontext(&f->ctx);
  f->ctx.uc_stack.ss_sp = f->stack;
  f->ctx.uc_stack.ss_size = kStackSize;
  f->ctx.uc_link = nullptr;
  makecontext(&f->ctx, &fiber_main_ucontext, 0);
#endif
}

// Wait at a synchronisation point: always yield, so that other threads run in between.
inline void wait_here(State state, unsigned wait) {
  g_cur->state = state;
  g_cur->wait = wait;
  to_scheduler(false);
}

inline bool runnable(const Fiber& f) {
  switch (f.state) {
    case kReady: return true;
    case kBarrier: return g_bar_gen != f.wait;
    case kWarp: return g_warps[f.warp].completed >= f.wait;
    default: return false;
  }
}

// One exchange of a warp collective: every lane deposits 8 bytes; returns the 32 deposits.
inline const uint64_t* warp_exchange(unsigned mask, uint64_t value, int op) {
  Fiber* f = g_cur;
  Warp& w = g_warps[f->warp];
  if (w.lanes != 32) fail("warp collective in a partial warp (block size not a multiple of 32)");
  if (mask != 0xffffffffu) fail("warp collective with a partial mask: only full-warp masks are emulated");
  if (w.exited) fail("warp collective after lanes of this warp exited");
  const unsigned k = f->collectives++;
  const int p = k & 1;
  if (w.arrived[p] == 0) {
    w.op[p] = op;
  } else if (w.op[p] != op) {
    fail("lanes of one warp called different warp collectives (divergent collective)");
  }
  w.slots[p][f->lane] = value;
  if (++w.arrived[p] == 32) {
    w.arrived[p] = 0;
    w.completed = k + 1;
  }
  wait_here(kWarp, k + 1);
  return w.slots[p];
}

template <typename T>
inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
  uint64_t b = 0;
  memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
  T v;
  memcpy(&v, &b, sizeof(T));
  return v;
}

inline unsigned lane_id() { return (unsigned)g_cur->lane; }

enum Op : int { kShflIdx = 1, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncWarp, kReduceAdd, kReduceMin,
                 kReduceMax };

template <typename T>
inline T shuffle(unsigned mask, T v, int op, int arg, int width) {
  if (width <= 0 || width > 32 || (width & (width - 1))) fail("shuffle width must be a power of two <= 32");
  const uint64_t* slots = warp_exchange(mask, to_bits(v), op * 64 + width);
  const int lane = g_cur->lane, base = lane & ~(width - 1);
  int src = lane;
  switch (op) {
    case kShflIdx: src = base + (arg & (width - 1)); break;
    case kShflUp: src = (lane - base) >= arg ? lane - arg : lane; break;
    case kShflDown: src = (lane - base) + arg < width ? lane + arg : lane; break;
    case kShflXor: src = lane ^ arg; if (src >= base + width) src = lane; break;  // later groups: own value
    default: break;
  }
  return from_bits<T>(slots[src & 31]);
}

// ---- launch ---------------------------------------------------------------------------------------
inline uint64_t next_random(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

inline void permute(int* order, int n, int schedule, uint64_t& rng) {
  if (schedule == kShuffle) {
    for (int i = n - 1; i > 0; --i) {
      const int j = (int)(next_random(rng) % (uint64_t)(i + 1));
      const int t = order[i];
      order[i] = order[j];
      order[j] = t;
    }
  }
}

inline void prepare_dynamic_shared(size_t bytes) {
  for (int i = 0; i < g_ndynamic; ++i) {
    char* base = static_cast<char*>(g_dynamic[i].address());
#ifdef EDGEFS_EMU_ASAN
    __asan_unpoison_memory_region(base, g_dynamic[i].capacity);
#endif
    memset(base, 0xff, bytes);  // unwritten shared memory reads as NaN / -1
#ifdef EDGEFS_EMU_ASAN
    __asan_poison_memory_region(base + bytes, g_dynamic[i].capacity - bytes);
#endif
  }
}

inline bool run_block(int schedule, uint64_t& rng) {
  const int n = g_threads;
  g_live = n;
  g_bar_arrived = 0;
  g_bar_gen = 0;
  for (int w = 0; w < (n + 31) / 32; ++w) {
    Warp& wp = g_warps[w];
    wp.arrived[0] = wp.arrived[1] = 0;
    wp.completed = 0;
    wp.exited = 0;
    wp.lanes = n - 32 * w < 32 ? n - 32 * w : 32;
  }
  for (int i = 0; i < n; ++i) {
    Fiber& f = g_fibers[i];
    f.stack = g_stacks + (size_t)i * (kStackSize + kGuard) + kGuard;
    const unsigned bx = g_block_dim.x, by = g_block_dim.y;
    f.tid = uint3{(unsigned)i % bx, ((unsigned)i / bx) % by, (unsigned)i / (bx * by)};
    f.lane = i & 31;
    f.warp = i >> 5;
    f.state = kReady;
    f.collectives = 0;
    f.fake_stack = nullptr;
    start_fiber(&f);
  }
  // Passes over the warps (in the schedule's order); a visit runs the warp's lanes, round after
  // round in a per-visit lane order, until none of them can go on (all at a barrier or done).
  const int nwarps = (n + 31) / 32;
  int warp_order[kMaxThreads / 32], lane_order[32];
  for (int w = 0; w < nwarps; ++w) warp_order[w] = schedule == kReverse ? nwarps - 1 - w : w;
  while (g_live > 0) {
    permute(warp_order, nwarps, schedule, rng);
    bool progressed = false;
    for (int wi = 0; wi < nwarps; ++wi) {
      const int w = warp_order[wi], lanes = g_warps[w].lanes;
      for (int l = 0; l < lanes; ++l) lane_order[l] = schedule == kReverse ? lanes - 1 - l : l;
      permute(lane_order, lanes, schedule, rng);
      Fiber* first = &g_fibers[w * 32];
      for (bool any = true; any;) {
        any = false;
        for (int l = 0; l < lanes; ++l) {
          Fiber* f = first + lane_order[l];
          if (!runnable(*f)) continue;
          any = progressed = true;
          f->state = kReady;
          resume(f);
          if (g_failed) return false;
        }
      }
    }
    if (!progressed) {
      int at_barrier = 0, at_warp = 0;
      for (int i = 0; i < n; ++i) {
        at_barrier += g_fibers[i].state == kBarrier;
        at_warp += g_fibers[i].state == kWarp;
      }
      snprintf(g_error, sizeof g_error,
               "block (%u,%u,%u): deadlock: %d threads wait at __syncthreads, %d in a warp collective, %d exited "
               "(a barrier or collective not reached by every thread)",
               g_block_idx.x, g_block_idx.y, g_block_idx.z, at_barrier, at_warp, n - g_live);
      g_failed = true;
      return false;
    }
  }
  return true;
}

// Unpack args[i] (pointers to the argument values, in order) into a call of the kernel.
template <typename... A>
struct Call {
  void (*fn)(A...);
  void** args;
  template <size_t... I>
  void invoke(std::index_sequence<I...>) {
    fn(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(args[I])...);
  }
  static void run(void* self) { static_cast<Call*>(self)->invoke(std::index_sequence_for<A...>{}); }
};

template <typename T>
constexpr char arg_code() {
  return std::is_pointer<T>::value                                        ? 'P'
         : std::is_same<T, int>::value                                    ? 'i'
         : std::is_same<T, unsigned>::value                               ? 'I'
         : std::is_same<T, float>::value                                  ? 'f'
         : std::is_same<T, long long>::value || std::is_same<T, long>::value ? 'q'
                                                                          : '?';
}

// The kernel's parameter types in pycuda's prepare() letters (P pointer, i int, I unsigned,
// f float, q 64-bit int): the launcher checks its argument formats against it.
template <typename... A>
inline const char* signature(void (*)(A...)) {
  static const char codes[] = {arg_code<std::remove_cv_t<A>>()..., '\0'};
  return codes;
}

// Run kernel `fn` on grid x block threads. Returns 0, or -1 with the reason in `err`.
template <typename... A>
inline int launch(void (*fn)(A...), const unsigned* grid, const unsigned* block, size_t dynamic_smem, void** args,
                  int schedule, unsigned long long seed, char* err, size_t errlen) {
  const size_t threads = (size_t)block[0] * block[1] * block[2];
  if (threads == 0 || threads > kMaxThreads || !grid[0] || !grid[1] || !grid[2]) {
    snprintf(err, errlen, "invalid launch: block (%u,%u,%u), grid (%u,%u,%u)", block[0], block[1], block[2], grid[0],
             grid[1], grid[2]);
    return -1;
  }
  for (int i = 0; i < g_ndynamic; ++i)
    if (dynamic_smem > g_dynamic[i].capacity) {
      snprintf(err, errlen, "dynamic shared memory %zu bytes is above the emulation's %zu", dynamic_smem,
               g_dynamic[i].capacity);
      return -1;
    }
  if (!g_stacks) {
    const size_t total = kMaxThreads * (kStackSize + kGuard);
    void* mem = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) {
      snprintf(err, errlen, "cannot map %zu bytes of fiber stacks", total);
      return -1;
    }
    g_stacks = static_cast<char*>(mem);
    for (size_t i = 0; i < kMaxThreads; ++i) mprotect(g_stacks + i * (kStackSize + kGuard), kGuard, PROT_NONE);
  }
  Call<A...> call{fn, args};
  g_body = &Call<A...>::run;
  g_body_ctx = &call;
  g_failed = false;
  g_error[0] = '\0';
  g_threads = (int)threads;
  g_block_dim = dim3{block[0], block[1], block[2]};
  g_grid_dim = dim3{grid[0], grid[1], grid[2]};
  uint64_t rng = seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
  if (!rng) rng = 1;
  const size_t nblocks = (size_t)grid[0] * grid[1] * grid[2];
  // Block order: forward, reversed, or a pseudo-random stride walk over all blocks (shuffle).
  size_t stride = 1, offset = 0;
  if (schedule == kShuffle && nblocks > 1) {
    do stride = (size_t)(next_random(rng) % nblocks) | 1u;
    while (std::gcd(stride, nblocks) != 1);
    offset = (size_t)(next_random(rng) % nblocks);
  }
  for (size_t b = 0; b < nblocks; ++b) {
    const size_t idx = schedule == kReverse ? nblocks - 1 - b : (offset + b * stride) % nblocks;
    g_block_idx = uint3{(unsigned)(idx % grid[0]), (unsigned)((idx / grid[0]) % grid[1]),
                        (unsigned)(idx / ((size_t)grid[0] * grid[1]))};
    prepare_dynamic_shared(dynamic_smem);
    if (!run_block(schedule, rng)) {
      snprintf(err, errlen, "%s", g_error);
#ifdef EDGEFS_EMU_ASAN
      // Abandoned fibers leave their frames' redzones poisoned: clear them for the next launch.
      __asan_unpoison_memory_region(g_stacks, kMaxThreads * (kStackSize + kGuard));
#endif
      return -1;
    }
  }
  return 0;
}

}  // namespace edgefs_emu

// ---- the device-side names the kernels use ----------------------------------------------------------
#define threadIdx (::edgefs_emu::g_cur->tid)
#define blockIdx (::edgefs_emu::g_block_idx)
#define blockDim (::edgefs_emu::g_block_dim)
#define gridDim (::edgefs_emu::g_grid_dim)

inline void __syncthreads() {
  using namespace edgefs_emu;
  const unsigned gen = g_bar_gen;
  if (++g_bar_arrived == (unsigned)g_live) {
    g_bar_arrived = 0;
    ++g_bar_gen;
  }
  wait_here(kBarrier, gen);
}

inline void __syncwarp(unsigned mask = 0xffffffffu) { edgefs_emu::warp_exchange(mask, 0, edgefs_emu::kSyncWarp); }
inline unsigned __activemask() { return 0xffffffffu; }

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  return edgefs_emu::shuffle(mask, v, edgefs_emu::kShflIdx, src, width);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return edgefs_emu::shuffle(mask, v, edgefs_emu::kShflUp, (int)delta, width);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return edgefs_emu::shuffle(mask, v, edgefs_emu::kShflDown, (int)delta, width);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return edgefs_emu::shuffle(mask, v, edgefs_emu::kShflXor, lane_mask, width);
}

inline unsigned __ballot_sync(unsigned mask, int pred) {
  const uint64_t* s = edgefs_emu::warp_exchange(mask, pred != 0, edgefs_emu::kBallot);
  unsigned bits = 0;
  for (int i = 0; i < 32; ++i) bits |= (s[i] ? 1u : 0u) << i;
  return bits;
}
inline int __any_sync(unsigned mask, int pred) {
  const uint64_t* s = edgefs_emu::warp_exchange(mask, pred != 0, edgefs_emu::kAny);
  for (int i = 0; i < 32; ++i)
    if (s[i]) return 1;
  return 0;
}
inline int __all_sync(unsigned mask, int pred) {
  const uint64_t* s = edgefs_emu::warp_exchange(mask, pred != 0, edgefs_emu::kAll);
  for (int i = 0; i < 32; ++i)
    if (!s[i]) return 0;
  return 1;
}

template <typename T>
inline T edgefs_emu_reduce(unsigned mask, T v, int op) {
  const uint64_t* s = edgefs_emu::warp_exchange(mask, edgefs_emu::to_bits(v), op);
  T r = edgefs_emu::from_bits<T>(s[0]);
  for (int i = 1; i < 32; ++i) {
    const T x = edgefs_emu::from_bits<T>(s[i]);
    r = op == edgefs_emu::kReduceAdd ? r + x : op == edgefs_emu::kReduceMin ? (x < r ? x : r) : (x > r ? x : r);
  }
  return r;
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v) { return edgefs_emu_reduce(mask, v, edgefs_emu::kReduceAdd); }
inline int __reduce_add_sync(unsigned mask, int v) { return edgefs_emu_reduce(mask, v, edgefs_emu::kReduceAdd); }
inline unsigned __reduce_min_sync(unsigned mask, unsigned v) { return edgefs_emu_reduce(mask, v, edgefs_emu::kReduceMin); }
inline int __reduce_min_sync(unsigned mask, int v) { return edgefs_emu_reduce(mask, v, edgefs_emu::kReduceMin); }
inline unsigned __reduce_max_sync(unsigned mask, unsigned v) { return edgefs_emu_reduce(mask, v, edgefs_emu::kReduceMax); }
inline int __reduce_max_sync(unsigned mask, int v) { return edgefs_emu_reduce(mask, v, edgefs_emu::kReduceMax); }

// The generated library exports, per kernel entry point NAME:
//   int edgefs_emu_launch_NAME(grid[3], block[3], dynamic_smem, args, schedule, seed, err, errlen)
//   const char* edgefs_emu_signature_NAME()
#define EDGEFS_EMU_EXPORT(name)                                                                                     \
  extern "C" __attribute__((visibility("default"))) int edgefs_emu_launch_##name(                                   \
      const unsigned* grid, const unsigned* block, size_t smem, void** args, int schedule, unsigned long long seed, \
      char* err, size_t errlen) {                                                                                   \
    return ::edgefs_emu::launch(&name, grid, block, smem, args, schedule, seed, err, errlen);                       \
  }                                                                                                                 \
  extern "C" __attribute__((visibility("default"))) const char* edgefs_emu_signature_##name() {                    \
    return ::edgefs_emu::signature(&name);                                                                          \
  }
