"""Short names for ONNX Runtime execution providers, importable without loading onnxruntime (the CLI's parser)."""

PROVIDER_ALIASES = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}
