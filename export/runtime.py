"""Torch-free runtime for an exported student: onnxruntime + tokenizers + NumPy + Pillow.

Loads an export directory, preprocesses images exactly as training did (parameters from the
manifest), tokenises captions with the exported tokenizer, and returns L2-normalised embeddings.
A session never falls back silently: if the first provider asked for is not the one ONNX Runtime
actually uses, loading fails and says so.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from core.data.images import ImagePreprocess, load_image


class ProviderError(RuntimeError):
    """The execution provider asked for is not available or not the one in use."""


def make_session(path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> ort.InferenceSession:
    """An InferenceSession that is guaranteed to run on `providers[0]`."""
    providers = list(providers or ["CPUExecutionProvider"])
    available = ort.get_available_providers()
    if providers[0] not in available:
        raise ProviderError(f"{providers[0]} is not available in this onnxruntime build (available: {available})")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=providers)
    if session.get_providers()[0] != providers[0]:
        raise ProviderError(f"{path}: asked for {providers[0]} but the session runs on {session.get_providers()}")
    return session


class OnnxStudent:
    """The exported dual encoder: `encode_text`, `encode_images` / `encode_image_files` / `encode_regions`."""

    def __init__(self, export_dir: str | Path, providers: Sequence[str] | None = None, threads: int | None = None):
        self.dir = Path(export_dir)
        manifest_path = self.dir / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: not an itr-distill export directory")
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        self.image_session = make_session(self.dir / "image_encoder.onnx", providers, threads)
        self.text_session = make_session(self.dir / "text_encoder.onnx", providers, threads)
        self.providers = self.text_session.get_providers()
        text = self.manifest["text"]
        self.tokenizer = Tokenizer.from_file(str(self.dir / text["tokenizer"]))
        self.tokenizer.enable_truncation(max_length=int(text["max_length"]))
        self.tokenizer.enable_padding(pad_id=int(text["pad_id"]), pad_token=text["pad_token"])
        image = self.manifest["image"]
        self.preprocess = ImagePreprocess.from_dict(image["preprocess"]) if image["input"] == "pixel_values" else None

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        return {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
        }

    def encode_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        out = [self.text_session.run(None, self.tokenize(texts[i:i + batch_size]))[0]
               for i in range(0, len(texts), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.embedding_dim), np.float32)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Already preprocessed pixels (N, 3, H, W) float32."""
        return self.image_session.run(None, {"pixel_values": np.ascontiguousarray(pixels, dtype=np.float32)})[0]

    def encode_images(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        """PIL images or image file paths."""
        if self.preprocess is None:
            raise ValueError(f"{self.dir}: this export encodes region features; use encode_regions")
        out = []
        for i in range(0, len(images), batch_size):
            chunk = [img if not isinstance(img, (str, Path)) else load_image(img) for img in images[i:i + batch_size]]
            out.append(self.encode_pixels(np.stack([self.preprocess(img) for img in chunk])))
        return np.concatenate(out) if out else np.zeros((0, self.embedding_dim), np.float32)

    def encode_image_files(self, paths: Sequence[str | Path], batch_size: int = 64) -> np.ndarray:
        return self.encode_images(list(paths), batch_size)

    def encode_regions(self, regions: np.ndarray, batch_size: int = 64, mask: np.ndarray | None = None) -> np.ndarray:
        """Precomputed region features (N, R, D); all regions valid unless `mask` says otherwise."""
        if mask is None:
            mask = np.ones(regions.shape[:2], dtype=bool)
        out = [self.image_session.run(None, {"regions": np.ascontiguousarray(regions[i:i + batch_size], dtype=np.float32),
                                             "region_mask": mask[i:i + batch_size]})[0]
               for i in range(0, len(regions), batch_size)]
        return np.concatenate(out)
