"""Export the student's two encoders to ONNX with their variants, each gated on parity with PyTorch.

Each graph contains the whole encoder: tower, pooling, projection and L2 normalisation, so the
runtime only tokenises / preprocesses and calls it. Batch and sequence axes are dynamic. After
export, `onnx.checker` validates each file, the variants (`export.variants`) are made from the fp32
graphs, and every variant is loaded by the torch-free runtime and gated (`export.gate`). If any
variant fails its gate, the export fails and nothing is written. The export directory also holds
the tokenizer, the text encoder as a sentence-transformers model (when it is the plain tower, pooling
and projection: the student's enhancements do not fit that format), `manifest.json` and a model card.
"""
from __future__ import annotations

import datetime
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from core.config import ExportConfig
from core.data.images import ImagePreprocess
from core.io import atomic_dir, sha256_file, write_json, write_text
from core.machine import machine_info
from core.timing import time_calls
from export.gate import ExportParityError, GateData, Retrieval, check_variant, encode_gate_images, pytorch_reference
from export.model_card import model_card
from export.runtime import MANIFEST, OnnxStudent
from export.text_model import DIRNAME, save_text_model
from export.variants import VARIANTS, build_variant
from student.model import DualEncoder

FORMAT = "itr-distill/export/v2"
__all__ = ["ExportParityError", "GateData", "export_student"]


class _EncoderGraph(nn.Module):
    """One encoder method of the student as `forward`, which is what the exporter traces."""

    def __init__(self, student: DualEncoder, method: str):
        super().__init__()
        self.student, self.method = student, method

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.student, self.method)(*inputs)


def _export(module: nn.Module, args: tuple, names: list[str], dynamic: dict[str, dict[int, str]], path: Path,
            exporter: str, opset: int) -> None:
    """torch.onnx.export with an explicit exporter; dynamic axes named per input."""
    warnings.filterwarnings("ignore", message=".*shares the same shape constraints with another axis.*")
    if exporter == "dynamo":
        dims: dict[str, torch.export.Dim] = {}
        shapes = tuple({axis: dims.setdefault(label, torch.export.Dim(label, min=1)) for axis, label in dynamic[name].items()}
                       for name in names)
        torch.onnx.export(module, args, str(path), input_names=names, output_names=["embeddings"],
                          dynamic_shapes=(shapes,),  # forward(*inputs): one positional holding the tuple
                          dynamo=True, opset_version=opset, external_data=False, verbose=False)
    else:
        axes = {**dynamic, "embeddings": {0: "batch"}}
        torch.onnx.export(module, args, str(path), input_names=names, output_names=["embeddings"],
                          dynamic_axes=axes, dynamo=False, opset_version=opset)
    onnx.checker.check_model(str(path), full_check=True)


def _export_graphs(student: DualEncoder, directory: Path, data: GateData, cfg: ExportConfig) -> None:
    """image_encoder.onnx and text_encoder.onnx (fp32), traced on real inputs."""
    images = torch.from_numpy(np.ascontiguousarray(data.images[:2]))
    if data.image_mask is None:
        _export(_EncoderGraph(student, "encode_images").eval(), (images,), ["pixel_values"],
                {"pixel_values": {0: "batch"}}, directory / "image_encoder.onnx", cfg.exporter, cfg.opset)
    else:
        mask = torch.from_numpy(np.ascontiguousarray(data.image_mask[:2]))
        _export(_EncoderGraph(student, "encode_images").eval(), (images, mask), ["regions", "region_mask"],
                {"regions": {0: "batch"}, "region_mask": {0: "batch"}}, directory / "image_encoder.onnx",
                cfg.exporter, cfg.opset)
    tokens = student.tokenize(data.captions[:2])
    _export(_EncoderGraph(student, "encode_text").eval(), (tokens["input_ids"], tokens["attention_mask"]),
            ["input_ids", "attention_mask"],
            {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}},
            directory / "text_encoder.onnx", cfg.exporter, cfg.opset)


def _latency(runtime: OnnxStudent, data: GateData, repeats: int) -> dict[str, dict[str, float]]:
    """Batch-1 caption and image encoding on the CPU, as the model card reports them."""
    captions, rows = data.captions, len(data.images)
    return {"caption_encoding_batch1": time_calls(lambda i: runtime.encode_text([captions[i % len(captions)]]), 3, repeats),
            "image_encoding_batch1": time_calls(lambda i: encode_gate_images(runtime, data, np.array([i % rows])), 3, repeats)}


def _base_manifest(student: DualEncoder, cfg: ExportConfig, preprocess: ImagePreprocess | None, data: GateData,
                   source_checkpoint: Path) -> dict[str, Any]:
    tokenizer = student.text_tower.tokenizer
    if data.image_mask is None:
        image_spec = {"input": "pixel_values", "preprocess": preprocess.to_dict()}
    else:
        image_spec = {"input": "regions", "regions": int(data.images.shape[1]), "feature_dim": int(data.images.shape[2])}
    return {
        "format": FORMAT,
        "embedding_dim": int(student.embedding_dim),
        "image": image_spec,
        "text": {"max_length": int(student.text_tower.max_length), "tokenizer": "tokenizer/tokenizer.json",
                 "pad_token": tokenizer.pad_token, "pad_id": int(tokenizer.pad_token_id),
                 # a sentence-transformers directory holds tower, pooling, projection, normalisation: not the enhancements
                 "sentence_transformer": DIRNAME if student.plain_text_side else None},
        "opset": cfg.opset,
        "exporter": cfg.exporter,
        "source_checkpoint": {"path": str(source_checkpoint), "sha256": sha256_file(source_checkpoint)},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
    }


def export_student(student: DualEncoder, out_dir: str | Path, cfg: ExportConfig, preprocess: ImagePreprocess | None,
                   data: GateData, source_checkpoint: str | Path, retrieval: Retrieval) -> dict[str, Any]:
    """Write every configured variant of both encoders, the tokenizer, the sentence-transformers text
    model, `manifest.json` and `README.md` into `out_dir`, or raise ExportParityError and write nothing.

    `data` holds held-out images and captions (for tracing and the gates); `retrieval` computes
    retrieval metrics from a similarity matrix (`eval.metrics.retrieval_metrics`). Returns the manifest.
    """
    student = student.cpu().eval()
    out_dir, source_checkpoint = Path(out_dir), Path(source_checkpoint)
    with atomic_dir(out_dir) as tmp:
        _export_graphs(student, tmp, data, cfg)
        student.text_tower.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        manifest = _base_manifest(student, cfg, preprocess, data, source_checkpoint)
        manifest["variants"] = {}
        for name in cfg.variants:
            spec = VARIANTS[name]
            files = build_variant(name, tmp)
            manifest["variants"][name] = {"files": files, "precision": spec.precision, "providers": list(spec.providers),
                                          "bytes": sum((tmp / f).stat().st_size for f in files.values())}
        write_json(tmp / MANIFEST, manifest)  # the runtime reads it to load each variant for its gate
        reference = pytorch_reference(student, data, cfg.parity_batch_sizes)
        failed = []
        for name, entry in manifest["variants"].items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                runtime = OnnxStudent(tmp, name, providers="cpu")
            entry["gate"] = check_variant(runtime, reference, data, getattr(cfg.gate, name), retrieval)
            entry["latency_cpu"] = _latency(runtime, data, cfg.latency_repeats)
            if not entry["gate"]["passed"]:
                failed.append(name)
        if failed:
            details = {n: {k: manifest["variants"][n]["gate"][k] for k in ("min_cosine", "r1_drop", "threshold")} for n in failed}
            raise ExportParityError(f"export gate failed for variant(s) {failed}: {details}; nothing was written "
                                    f"(loosen export.gate.<variant> only if that loss is acceptable, or drop the variant)")
        manifest["parity"] = manifest["variants"]["fp32"]["gate"]
        manifest["measured_on"] = machine_info()
        if student.plain_text_side:
            save_text_model(student, tmp / DIRNAME)
        write_json(tmp / MANIFEST, manifest)
        write_text(tmp / "README.md", model_card(manifest))
    return manifest
