"""Export the student's two encoders to ONNX, gated on parity with PyTorch.

Each graph contains the whole encoder: tower, pooling, projection and L2 normalisation, so the
runtime only tokenises / preprocesses and calls it. Batch and sequence axes are dynamic. After
export, `onnx.checker` validates each file and the parity gate runs both the PyTorch module and
ONNX Runtime on several batch sizes and caption lengths (padded and unpadded); if any embedding's
cosine to PyTorch falls below the threshold, the export fails and nothing is written.
"""
from __future__ import annotations

import datetime
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from core.config import ExportConfig
from core.data.images import ImagePreprocess
from core.io import atomic_dir, sha256_file, write_json
from student.model import DualEncoder

FORMAT = "itr-distill/export/v1"


class ExportParityError(RuntimeError):
    """The ONNX graph does not reproduce the PyTorch model within the gate's threshold."""


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


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _compare(reference: torch.Tensor, onnx_out: np.ndarray) -> tuple[float, float]:
    ref = reference.detach().float().numpy()
    cos = (ref * onnx_out).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(onnx_out, axis=-1) + 1e-12)
    return float(cos.min()), float(np.abs(ref - onnx_out).max())


def _text_batches(texts: list[str], batch_sizes: list[int], max_length: int) -> list[list[str]]:
    """Batches of real captions at each size, plus edge cases: one word, and a caption past max_length."""
    long_text = " ".join(texts[0].split() * (max_length // max(1, len(texts[0].split())) + 2))
    pool = texts + [texts[0].split()[0], long_text]
    batches = [[pool[(start + i) % len(pool)] for i in range(b)] for start, b in enumerate(batch_sizes)]
    batches += [[texts[0].split()[0]], [long_text], [long_text, texts[0].split()[0]]]
    return batches


def parity_gate(student: DualEncoder, image_path: Path, text_path: Path, sample_images: torch.Tensor,
                sample_masks: torch.Tensor | None, sample_texts: list[str], cfg: ExportConfig) -> dict[str, Any]:
    """Compare PyTorch and ONNX Runtime embeddings; raise ExportParityError below `cfg.parity_min_cosine`."""
    student.eval()  # the torchscript exporter restores a wrapper's training flag onto its children
    image_sess, text_sess = _session(image_path), _session(text_path)
    image_cos, image_diff, text_cos, text_diff = 1.0, 0.0, 1.0, 0.0
    lengths: set[int] = set()
    with torch.no_grad():
        for b in cfg.parity_batch_sizes:
            idx = torch.arange(b) % len(sample_images)
            images = sample_images[idx]
            if sample_masks is None:
                ref = student.encode_images(images)
                got = image_sess.run(None, {"pixel_values": images.numpy()})[0]
            else:
                ref = student.encode_images(images, sample_masks[idx])
                got = image_sess.run(None, {"regions": images.numpy(), "region_mask": sample_masks[idx].numpy()})[0]
            c, d = _compare(ref, got)
            image_cos, image_diff = min(image_cos, c), max(image_diff, d)
        for texts in _text_batches(sample_texts, cfg.parity_batch_sizes, student.text_tower.max_length):
            tokens = student.tokenize(texts)
            lengths.add(int(tokens["input_ids"].shape[1]))
            ref = student.encode_text(tokens["input_ids"], tokens["attention_mask"])
            got = text_sess.run(None, {k: v.numpy() for k, v in tokens.items()})[0]
            c, d = _compare(ref, got)
            text_cos, text_diff = min(text_cos, c), max(text_diff, d)
    report = {
        "threshold": cfg.parity_min_cosine,
        "batch_sizes": list(cfg.parity_batch_sizes),
        "text_lengths": sorted(lengths),
        "image": {"min_cosine": image_cos, "max_abs_diff": image_diff},
        "text": {"min_cosine": text_cos, "max_abs_diff": text_diff},
    }
    failed = [side for side in ("image", "text") if report[side]["min_cosine"] < cfg.parity_min_cosine]
    if failed:
        raise ExportParityError(f"ONNX parity gate failed for {failed}: {report}")
    return report


def export_student(student: DualEncoder, out_dir: str | Path, cfg: ExportConfig, preprocess: ImagePreprocess | None,
                   sample_images: torch.Tensor, sample_masks: torch.Tensor | None, sample_texts: list[str],
                   source_checkpoint: str | Path) -> dict[str, Any]:
    """Write image_encoder.onnx, text_encoder.onnx, tokenizer/ and manifest.json into `out_dir`.

    `sample_images` (pixels, or regions with `sample_masks`) and `sample_texts` are real inputs
    from the data, used for tracing and for the parity gate. Returns the manifest.
    """
    student = student.cpu().eval()
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        image_path, text_path = tmp / "image_encoder.onnx", tmp / "text_encoder.onnx"
        if sample_masks is None:
            _export(_EncoderGraph(student, "encode_images").eval(), (sample_images[:2],), ["pixel_values"], {"pixel_values": {0: "batch"}},
                    image_path, cfg.exporter, cfg.opset)
        else:
            _export(_EncoderGraph(student, "encode_images").eval(), (sample_images[:2], sample_masks[:2]), ["regions", "region_mask"],
                    {"regions": {0: "batch"}, "region_mask": {0: "batch"}}, image_path, cfg.exporter, cfg.opset)
        tokens = student.tokenize(sample_texts[:2])
        _export(_EncoderGraph(student, "encode_text").eval(), (tokens["input_ids"], tokens["attention_mask"]), ["input_ids", "attention_mask"],
                {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"}},
                text_path, cfg.exporter, cfg.opset)
        parity = parity_gate(student, image_path, text_path, sample_images, sample_masks, sample_texts, cfg)
        student.text_tower.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        tokenizer = student.text_tower.tokenizer
        if sample_masks is None:
            image_spec = {"input": "pixel_values", "preprocess": preprocess.to_dict()}
        else:
            image_spec = {"input": "regions", "regions": int(sample_images.shape[1]), "feature_dim": int(sample_images.shape[2])}
        manifest = {
            "format": FORMAT,
            "embedding_dim": int(student.cfg.embed_dim),
            "image": image_spec,
            "text": {"max_length": int(student.text_tower.max_length), "tokenizer": "tokenizer/tokenizer.json",
                     "pad_token": tokenizer.pad_token, "pad_id": int(tokenizer.pad_token_id)},
            "opset": cfg.opset,
            "exporter": cfg.exporter,
            "parity": parity,
            "source_checkpoint": {"path": str(source_checkpoint), "sha256": sha256_file(source_checkpoint)},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest
