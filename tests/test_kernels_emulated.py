"""The CPU emulation of the CUDA kernels (edgefs.kernels.emu) can fail, and the kernels pass it
under AddressSanitizer and UndefinedBehaviorSanitizer.

The kernel cases themselves (every kernel against its NumPy reference) are in
device_tests/test_kernels.py, backend ``emu``. Here: deliberately broken tiny kernels, written
to a temporary folder (never a product kernel), show that a missing __syncthreads changes the
result under every schedule and that shared-memory overruns stop a sanitizer run; divergent
collectives and barriers stop a launch; the launchers' argument formats are checked against
the kernels' parameter types; the build cache; and one sanitizer run of a subset of the kernel
cases that covers every kernel and code path.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from edgefs.kernels import runtime as kernel_runtime
from edgefs.kernels.emu import build
from edgefs.kernels.emu import launch as emu

from edgefs.errors import EdgefsError, MissingDependencyError

ROOT = Path(__file__).resolve().parents[1]


def _reason() -> str | None:
    try:
        build.find_compiler()
        build.sanitizer_runtime()
    except MissingDependencyError as exc:
        return str(exc)
    return None


pytestmark = pytest.mark.skipif(_reason() is not None, reason=f"no C++ compiler with ASan: {_reason()}")

# Each block reverses its slice of x through shared memory; BARRIER is __syncthreads() or nothing.
REVERSE = """
extern "C" __global__ void reverse_shared(const float* x, float* y, int n) {
  extern __shared__ float s[];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x] = x[i];
  BARRIER
  y[i] = s[blockDim.x - 1 - threadIdx.x];
}
"""
# Writes one float past the dynamic shared memory when OFFSET is 1.
SHIFT = """
extern "C" __global__ void shift_shared(const float* x, float* y, int n) {
  extern __shared__ float s[];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  s[threadIdx.x + OFFSET] = x[i];
  __syncthreads();
  y[i] = s[threadIdx.x];
}
"""
# A static __shared__ array of LENGTH floats indexed by threadIdx.x (64 threads).
STATIC = """
extern "C" __global__ void static_shared(const float* x, float* y, int n) {
  __shared__ float s[LENGTH];
  s[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  y[threadIdx.x] = s[threadIdx.x % 32] + 1.f;
}
"""
# Half a warp in a full-mask shuffle (undefined on a GPU).
DIVERGENT = """
extern "C" __global__ void divergent(const float* x, float* y, int n) {
  float v = x[threadIdx.x];
  if (threadIdx.x < 16) v += __shfl_xor_sync(0xffffffffu, v, 1);
  y[threadIdx.x] = v;
}
"""
# Threads below n wait at a barrier, the others in a warp collective: with n = 16 lanes 16..31
# of warp 0 wait for lanes 0..15, which wait at the barrier for them (a hang on a GPU).
DEADLOCK = """
extern "C" __global__ void deadlock(const float* x, float* y, int n) {
  float v = x[threadIdx.x];
  if ((int)threadIdx.x < n) __syncthreads();
  else v += __shfl_xor_sync(0xffffffffu, v, 1);
  y[threadIdx.x] = v;
}
"""
WARP = """
extern "C" __global__ void warp_ops(const float* x, float* y, int n) {
  float v = x[threadIdx.x];
  float s = v;
  for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
  const float lane0 = __shfl_sync(0xffffffffu, s, 0);
  const float up = __shfl_up_sync(0xffffffffu, v, 1);
  const unsigned ballot = __ballot_sync(0xffffffffu, v > 0.f);
  y[threadIdx.x] = lane0 + up + (float)__popcount(ballot);
}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.cu"
    path.write_text(text)
    return path


def run_float_kernel(fn: emu.EmuFunction, x: np.ndarray, grid: int, block: int, smem: int = 0) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    y = np.zeros_like(x)
    fn.prepared_call((grid, 1, 1), (block, 1, 1), x.ctypes.data, y.ctypes.data, len(x), shared_size=smem)
    return y


@pytest.mark.parametrize("schedule", ["forward", "reverse", "shuffle:1", "shuffle:2"])
def test_a_missing_syncthreads_gives_a_wrong_result_under_every_schedule(tmp_path: Path, schedule: str) -> None:
    x = np.arange(128, dtype=np.float32)
    for block in (64, 32):  # two warps a block, then one warp (lanes interleave within it)
        n = 2 * block
        want = x[:n].reshape(2, block)[:, ::-1].reshape(-1)
        fixed = emu.load_kernel(write(tmp_path, "fixed", REVERSE.replace("BARRIER", "__syncthreads();")),
                                "reverse_shared", "PPi", schedule=schedule, cache=tmp_path)
        broken = emu.load_kernel(write(tmp_path, "broken", REVERSE.replace("BARRIER", "")), "reverse_shared", "PPi",
                                 schedule=schedule, cache=tmp_path)
        assert np.array_equal(run_float_kernel(fixed, x[:n], 2, block, 4 * block), want)
        got = run_float_kernel(broken, x[:n], 2, block, 4 * block)
        # The reads that ran before the writes see the 0xff fill (NaN), not stale valid data.
        assert not np.array_equal(got, want) and np.isnan(got).any()


def test_warp_shuffles_votes_and_reductions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=64).astype(np.float32)
    fn = emu.load_kernel(write(tmp_path, "warp", WARP.replace("__popcount", "__builtin_popcount")), "warp_ops", "PPi",
                         cache=tmp_path)
    got = run_float_kernel(fn, x, 1, 64)
    want = np.empty(64, np.float32)
    for w in range(2):
        lanes = x[32 * w : 32 * w + 32]
        s = lanes.copy()
        for o in (16, 8, 4, 2, 1):  # shfl_down: lanes past the end keep their own value
            s = s + np.concatenate([s[o:], s[32 - o :]])
        up = np.concatenate([lanes[:1], lanes[:-1]])
        want[32 * w : 32 * w + 32] = s[0] + up + np.float32((lanes > 0).sum())
    assert np.array_equal(got, want)


def test_divergent_collectives_and_barriers_stop_the_launch(tmp_path: Path) -> None:
    fn = emu.load_kernel(write(tmp_path, "divergent", DIVERGENT), "divergent", "PPi", cache=tmp_path)
    with pytest.raises(emu.EmulatedKernelError, match=r"block \(0,0,0\).*(warp collective|deadlock)"):
        run_float_kernel(fn, np.ones(64, np.float32), 1, 64)
    fn = emu.load_kernel(write(tmp_path, "deadlock", DEADLOCK), "deadlock", "PPi", cache=tmp_path)
    x = np.ones(64, np.float32)
    y = np.zeros_like(x)
    with pytest.raises(emu.EmulatedKernelError, match="deadlock: 16 threads wait at __syncthreads, 16 in a warp"):
        fn.prepared_call((1, 1, 1), (64, 1, 1), x.ctypes.data, y.ctypes.data, 16)
    fn.prepared_call((1, 1, 1), (64, 1, 1), x.ctypes.data, y.ctypes.data, 64)  # every thread at the barrier
    assert (y == 1.0).all()


def test_the_launcher_formats_are_checked_against_the_kernel_parameters(tmp_path: Path) -> None:
    source = write(tmp_path, "fixed", REVERSE.replace("BARRIER", "__syncthreads();"))
    with pytest.raises(EdgefsError, match="takes 'PPi'"):
        emu.load_kernel(source, "reverse_shared", "PPf", cache=tmp_path)
    for name, formats in kernel_runtime.ARG_FORMATS.items():  # the product's formats: what every launch checks
        for dtype in (np.float32, np.float16):
            fn = emu.runtime().raw_function(kernel_runtime.MODULES[name], kernel_runtime.entry_point(name, dtype))
            assert fn.signature == formats, name


def test_emulated_buffers_are_host_memory_and_gpu_memory_is_refused() -> None:
    buf = emu.DeviceBuffer.from_host(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert not hasattr(buf, "__cuda_array_interface__")
    assert np.array_equal(emu.to_host(buf), np.arange(6, dtype=np.float32).reshape(2, 3))

    class FakeGpuArray:
        __cuda_array_interface__ = {"shape": (2, 3), "typestr": "<f4", "data": (4096, False), "version": 3}  # noqa: RUF012

    with pytest.raises(EdgefsError, match="host memory only"):
        emu.classify(FakeGpuArray(), np.eye(3, dtype=np.float32), 1.0, 1, 0.0)


def test_builds_are_cached_by_source_compiler_and_flags(tmp_path: Path) -> None:
    source = write(tmp_path, "fixed", REVERSE.replace("BARRIER", "__syncthreads();"))
    first = build.build_library(source, cache=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build.build_library(source, cache=tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert build.library_path(source, "sanitize", cache=tmp_path) != first
    source.write_text(source.read_text() + "// changed\n")
    assert build.library_path(source, cache=tmp_path) != first


# ---- sanitizers ---------------------------------------------------------------------------------
CHILD = """
import sys
import numpy as np
from pathlib import Path
from edgefs.kernels.emu import launch as emu
source, entry, block, smem = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fn = emu.load_kernel(source, entry, "PPi", variant="sanitize", cache=source.parent)
x = np.arange(2 * block, dtype=np.float32)
y = np.zeros_like(x)
fn.prepared_call((2, 1, 1), (block, 1, 1), x.ctypes.data, y.ctypes.data, len(x), shared_size=smem)
print("finished", float(y.sum()))
"""


def run_sanitized(args: list[str], timeout: int = 600, **extra: str) -> subprocess.CompletedProcess[str]:
    env = build.sanitizer_env()
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def sanitized_kernel(tmp_path: Path, name: str, text: str, entry: str, block: int,
                     smem: int) -> subprocess.CompletedProcess[str]:
    source = write(tmp_path, name, text)
    build.build_library(source, "sanitize", cache=tmp_path)  # compiled here, loaded in the child
    return run_sanitized(["-c", CHILD, str(source), entry, str(block), str(smem)])


def test_a_shared_memory_overrun_fails_the_sanitizer_run(tmp_path: Path) -> None:
    ok = sanitized_kernel(tmp_path, "inside", SHIFT.replace("OFFSET", "0"), "shift_shared", 64, 256)
    assert ok.returncode == 0 and "finished" in ok.stdout, ok.stderr[-3000:]
    bad = sanitized_kernel(tmp_path, "overrun", SHIFT.replace("OFFSET", "1"), "shift_shared", 64, 256)
    assert bad.returncode != 0 and "finished" not in bad.stdout
    assert "AddressSanitizer" in bad.stderr and "use-after-poison" in bad.stderr, bad.stderr[-3000:]
    assert "WRITE of size 4" in bad.stderr


def test_a_static_shared_array_overrun_fails_the_sanitizer_run(tmp_path: Path) -> None:
    ok = sanitized_kernel(tmp_path, "fits", STATIC.replace("LENGTH", "64"), "static_shared", 64, 0)
    assert ok.returncode == 0 and "finished" in ok.stdout, ok.stderr[-3000:]
    bad = sanitized_kernel(tmp_path, "short", STATIC.replace("LENGTH", "32"), "static_shared", 64, 0)
    assert bad.returncode != 0 and "finished" not in bad.stdout
    assert "runtime error" in bad.stderr and "out of bounds" in bad.stderr, bad.stderr[-3000:]


#: The kernel cases run under the sanitizers: every kernel (f32 and f16), classify's top-k over
#: many blocks with a tie, bias and similarity rows; the Gram fine-tune with everything in shared
#: memory, K shared and the state global, both global, per-class Gram; the plain loop with shared
#: and global logits and per-parameter rates and EWC; GPU-side state; the element-wise path.
SANITIZED_CASES = [
    "test_accumulate_normalize[emu-float32-100-640-5]",
    "test_accumulate_normalize[emu-float16-5-64-20]",
    "test_accumulate_with_shot_normalisation_is_what_the_heads_do[emu-64]",
    "test_classify[emu-float32-1000-512-5]",
    "test_classify[emu-float16-5-64-1]",
    "test_classify_with_bias_and_similarity_rows[emu]",
    "test_finetune_gram_and_plain[emu-5-640-5]",
    "test_finetune_gram_and_plain[emu-100-64-1]",
    "test_finetune_gram_and_plain[emu-100-64-5]",
    "test_finetune_per_parameter_rates_and_ewc[emu-64-5]",
    "test_finetune_float16_support_on_the_gpu[emu-640]",
    "test_a_dimension_not_a_multiple_of_4_takes_the_element_wise_path[emu-float32]",
    "test_a_dimension_not_a_multiple_of_4_takes_the_element_wise_path[emu-float16]",
]


def test_kernel_cases_pass_under_address_and_undefined_behaviour_sanitizers() -> None:
    for name in ("accumulate", "classify", "finetune"):
        build.build(name, "sanitize")
    ids = [f"device_tests/test_kernels.py::{case}" for case in SANITIZED_CASES]
    env_args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", *ids]
    done = run_sanitized(env_args, **{emu.VARIANT_ENV: "sanitize"})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-5000:]
    assert f"{len(SANITIZED_CASES)} passed" in done.stdout, out[-5000:]
    assert "AddressSanitizer" not in out and "runtime error" not in out


def test_the_sanitizer_variant_refuses_a_process_without_asan() -> None:
    if "libasan" in Path("/proc/self/maps").read_text():
        pytest.skip("this process preloads ASan")
    with pytest.raises(EdgefsError, match="LD_PRELOAD"):
        emu.EmuRuntime("sanitize")


def test_the_host_memory_calls_copy_exactly() -> None:
    mem = emu.HostMemory()
    alloc = mem.mem_alloc(16)
    mem.memcpy_htod(alloc, np.arange(4, dtype=np.float32))
    out = np.zeros(4, np.float32)
    mem.memcpy_dtoh(out, alloc)
    assert np.array_equal(out, np.arange(4, dtype=np.float32))
    mem.memset_d8(alloc, 0, 16)
    mem.memcpy_dtoh(out, int(alloc))
    assert not out.any() and ctypes.c_void_p(int(alloc)).value
