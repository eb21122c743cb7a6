"""The deployable variants of an exported fp32 graph: ORT-optimised, fp16 and int8.

Each builder reads the fp32 ONNX file and writes its variant beside it; none needs torch.
- `optimized`: ONNX Runtime's extended graph optimisations (fusions) applied offline and saved, so
  a production session starts without re-optimising. The saved graph may contain CPU-specific
  fused ops, so it is marked for the CPU provider.
- `fp16`: weights and activations in half precision, inputs and outputs kept float32 (the runtime
  feeds the same arrays). Meant for GPUs; on the CPU provider ONNX Runtime computes in float32
  where it has no fp16 kernel, so a CPU gate measures the rounding of the weights only.
- `int8`: the matrix products' weights in int8, in blocks of 32 along the input dimension, each
  block with its own scale, and int8 arithmetic with the activations quantised per block at run
  time (ONNX Runtime's MatMulNBits, 8 bits, accuracy level 4). Plain dynamic quantisation (one
  activation scale per tensor, weights per tensor or per channel) cost MiniLM-L6 up to 9 points of
  R@1 on Flickr8k, because its activations have outlier dimensions; blocks keep the error local.
  Convolutions stay float32.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

INT8_BLOCK = 32


@dataclass(frozen=True)
class Variant:
    """How a variant is named on disk, what it computes in, and which providers it is for."""

    name: str
    precision: str
    providers: tuple[str, ...]
    build: Callable[[Path, Path], None] | None  # (fp32 path, variant path); None: the fp32 graph itself

    def filename(self, tower: str) -> str:
        return f"{tower}_encoder.onnx" if self.name == "fp32" else f"{tower}_encoder.{self.name}.onnx"


def _optimize(src: Path, dst: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def _fp16(src: Path, dst: Path) -> None:
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx_ir.from_proto(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True))
    model.graph.sort()  # the converter appends its input casts after their consumers
    onnx.save(onnx_ir.to_proto(model), str(dst))
    onnx.checker.check_model(str(dst), full_check=True)


def _int8(src: Path, dst: Path) -> None:
    root_level = logging.getLogger().level  # the quantiser configures the root logger at INFO when imported
    from onnxruntime.quantization import quant_pre_process
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    prepared = dst.with_suffix(".prepared.onnx")
    logging.getLogger().setLevel(logging.WARNING)
    try:  # ORT's recommended pre-pass (constant folding, shape inference); symbolic shapes fail on dynamic axes
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantizer = MatMulNBitsQuantizer(str(prepared), bits=8, block_size=INT8_BLOCK, is_symmetric=True,
                                         accuracy_level=4)  # 4: int8 compute, activations quantised per block at run time
        quantizer.process()
        quantizer.model.save_model_to_file(str(dst), False)
    finally:
        prepared.unlink(missing_ok=True)
        logging.getLogger().setLevel(root_level)
    onnx.checker.check_model(str(dst), full_check=True)


VARIANTS: dict[str, Variant] = {
    "fp32": Variant("fp32", "float32", ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"), None),
    "optimized": Variant("optimized", "float32", ("CPUExecutionProvider",), _optimize),
    "fp16": Variant("fp16", "float16", ("CUDAExecutionProvider", "TensorrtExecutionProvider"), _fp16),
    "int8": Variant("int8", "int8 (blocks of 32), dynamic int8 activations", ("CPUExecutionProvider",), _int8),
}


def build_variant(name: str, directory: Path, towers: tuple[str, ...] = ("image", "text")) -> dict[str, str]:
    """Write variant `name` of each tower's fp32 graph in `directory`; returns {tower: filename}."""
    variant = VARIANTS[name]
    files = {}
    for tower in towers:
        files[tower] = variant.filename(tower)
        if variant.build is not None:
            variant.build(directory / VARIANTS["fp32"].filename(tower), directory / files[tower])
    return files
