"""A CPU emulation of the CUDA head kernels, for tests; never imported by the device runtime.

``build`` compiles each unmodified ``kernels/*.cu`` as C++ with ``cuda_emu.h`` force-included
into a cached shared library (plain, or with AddressSanitizer + UndefinedBehaviorSanitizer);
``launch`` runs the launchers of :mod:`edgefs.kernels.launch` on those libraries, with host
memory as device memory. device_tests/test_kernels.py runs every kernel case on it in CI.

What a pass under the emulation proves:
- the arithmetic: each kernel computes its NumPy reference's result within the stated
  tolerances (float32 rounding as on the GPU, except that nvcc contracts a*b+c into FMAs and
  this build does not);
- the indexing: no read or write outside the buffers the launchers allocate, the dynamic shared
  memory they request, or static shared arrays (ASan and UBSan builds);
- the synchronisation logic: barriers and warp collectives are placed so that the result does
  not depend on the order threads run in (warps and lanes are reordered between
  synchronisation points; unwritten shared memory reads as NaN), and every thread reaches
  every barrier and collective it must;
- the launchers' marshalling: argument order and types (checked against the kernels' C++
  signatures), grid and block choice, shared-memory plans and scratch sizes, as on the GPU
  path, since it is the same code.

What it does not prove: anything about GPU timing or throughput, memory coalescing, bank
conflicts, occupancy and register limits, warp scheduling; the GPU memory model (here every
write is visible at once, fences do nothing and blocks run one after another, so a missing
``__threadfence`` or a cross-block wait is not caught); races finer than one warp's run
between two barriers or one lane's run between two collectives. The GPU tests
(``pytest -m gpu`` on a machine with a GPU) remain the proof for those. Details: cuda_emu.h.
"""
