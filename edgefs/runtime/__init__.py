"""Device runtime (no torch): bundles, engines (ONNX Runtime, TensorRT, torch), preprocessing."""
