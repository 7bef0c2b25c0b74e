"""A CPU emulation of the CUDA head kernels, for tests (never imported by the device runtime).

See :mod:`edgefs.kernels.emu.launch`.
"""
