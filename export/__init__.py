"""edgefs.export: PyTorch checkpoint -> ONNX bundle (+ TensorRT engine).

This folder sits at the top of the source tree to show the architecture and is
importable as ``edgefs.export`` (see DESIGN.md, "Layout"). The bundle writer and
engine builder arrive with the export issue; nothing here is implemented yet.
"""
