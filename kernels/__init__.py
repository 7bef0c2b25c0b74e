"""edgefs.kernels: CUDA sources (``*.cu``) of the device heads and their pycuda launchers.

Importable as ``edgefs.kernels`` (see DESIGN.md, "Layout"). Every kernel mirrors a NumPy
function of :mod:`edgefs.heads.reference` with the same signature: ``build`` compiles and
caches the cubins (no GPU needed), ``launch`` runs them (pycuda, imported on first use).
"""
