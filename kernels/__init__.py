"""edgefs.kernels: CUDA sources (``*.cu``) and their pycuda launchers.

Importable as ``edgefs.kernels`` (see DESIGN.md, "Layout"). Every kernel will
have a NumPy reference in ``edgefs.heads`` with the same signature. No kernel
exists yet; they arrive with the enrollment issue.
"""
