"""Torch-free runtime for an exported student: onnxruntime + tokenizers + NumPy + Pillow.

Loads an export directory (any of its variants), preprocesses images exactly as training did
(parameters from the manifest), tokenises captions with the exported tokenizer, and returns
L2-normalised embeddings. A session never falls back silently: if the first provider asked for is
not the one ONNX Runtime actually uses, loading fails and says so.

On a GPU, inputs can be bound to the device (`io_binding`), and with `static_batch` every call runs
on fixed-shape buffers (captions padded to the maximum length, batches padded to `static_batch`),
which is what CUDA graphs (`cuda_graph=True`) need; the same fixed-buffer path runs on the CPU.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from core.data.images import ImagePreprocess, load_image
from export.runtime import MANIFEST, SORT_BLOCK_BATCHES
from export.runtime.providers import PROVIDER_ALIASES


class ProviderError(RuntimeError):
    """The execution provider asked for is not available or not the one in use."""


def resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    """Provider names from a list, or from 'cpu' / 'cuda' / 'tensorrt'."""
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        if providers not in PROVIDER_ALIASES:
            raise ProviderError(f"unknown device {providers!r} (expected one of {sorted(PROVIDER_ALIASES)})")
        return list(PROVIDER_ALIASES[providers])
    return list(providers)


def make_session(path: str | Path, providers: Sequence[str] | str | None = None, threads: int | None = None,
                 provider_options: dict[str, str] | None = None) -> ort.InferenceSession:
    """An InferenceSession that is guaranteed to run on `providers[0]`."""
    providers = resolve_providers(providers)
    available = ort.get_available_providers()
    if providers[0] not in available:
        raise ProviderError(f"{providers[0]} is not available in this onnxruntime build (available: {available})")
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: file not found")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    opts = [dict(provider_options or {}) if i == 0 else {} for i in range(len(providers))]
    session = ort.InferenceSession(str(path), options, providers=providers, provider_options=opts)
    if session.get_providers()[0] != providers[0]:
        raise ProviderError(f"{path}: asked for {providers[0]} but the session runs on {session.get_providers()}")
    return session


class _Runner:
    """Runs one graph: plain `run`, with I/O binding, or on fixed-shape bound buffers (`static`)."""

    def __init__(self, session: ort.InferenceSession, io_binding: bool, static: dict[str, tuple[tuple[int, ...], Any]] | None,
                 embedding_dim: int):
        self.session = session
        self.device = "cuda" if session.get_providers()[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        self.binding = session.io_binding() if (io_binding or static) else None
        self.buffers: dict[str, ort.OrtValue] = {}
        if static:
            for name, (shape, dtype) in static.items():
                self.buffers[name] = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype), self.device, 0)
                self.binding.bind_ortvalue_input(name, self.buffers[name])
            batch = next(iter(static.values()))[0][0]
            out = ort.OrtValue.ortvalue_from_shape_and_type((batch, embedding_dim), np.float32, self.device, 0)
            self.binding.bind_ortvalue_output("embeddings", out)

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self.binding is None:
            return self.session.run(None, feeds)[0]
        if self.buffers:
            for name, value in feeds.items():
                self.buffers[name].update_inplace(np.ascontiguousarray(value))
        else:
            for name, value in feeds.items():
                self.binding.bind_cpu_input(name, np.ascontiguousarray(value))
            self.binding.bind_output("embeddings", self.device)
        self.session.run_with_iobinding(self.binding)
        return self.binding.copy_outputs_to_cpu()[0]


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """Fill a short batch up to `rows` by repeating its first row (their outputs are dropped)."""
    if len(array) == rows:
        return array
    return np.concatenate([array, np.repeat(array[:1], rows - len(array), axis=0)])


class OnnxStudent:
    """The exported dual encoder: `encode_text`, `encode_images` / `encode_image_files` / `encode_regions`."""

    def __init__(self, export_dir: str | Path, variant: str = "fp32", providers: Sequence[str] | str | None = None,
                 threads: int | None = None, io_binding: bool = False, static_batch: int | None = None,
                 cuda_graph: bool = False):
        self.dir = Path(export_dir)
        manifest_path = self.dir / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"{manifest_path}: not an itr-distill export directory")
        self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        variants = self.manifest.get("variants", {})
        if variant not in variants:
            raise ValueError(f"{manifest_path}: no variant {variant!r} in this export (has: {sorted(variants)})")
        self.variant = variant
        providers = resolve_providers(providers)
        if cuda_graph and (providers[0] != "CUDAExecutionProvider" or not static_batch):
            raise ProviderError("cuda_graph needs the CUDAExecutionProvider and a static_batch")
        meant_for = variants[variant].get("providers", [])
        if meant_for and providers[0] not in meant_for:
            warnings.warn(f"variant {variant!r} is built for {meant_for}; on {providers[0]} it may be slow or run "
                          f"partly elsewhere", stacklevel=2)
        text, image = self.manifest["text"], self.manifest["image"]
        self.max_length = int(text["max_length"])
        self.static_batch = static_batch
        options = {"enable_cuda_graph": "1"} if cuda_graph else None
        files = variants[variant]["files"]
        image_session = make_session(self.dir / files["image"], providers, threads, options)
        text_session = make_session(self.dir / files["text"], providers, threads, options)
        self.providers = text_session.get_providers()
        if image["input"] == "pixel_values":
            shape = (3, image["preprocess"]["size"], image["preprocess"]["size"])
            image_inputs = {"pixel_values": (shape, np.float32)}
        else:
            image_inputs = {"regions": ((image["regions"], image["feature_dim"]), np.float32),
                            "region_mask": ((image["regions"],), np.bool_)}
        text_inputs = {"input_ids": ((self.max_length,), np.int64), "attention_mask": ((self.max_length,), np.int64)}
        self._image = _Runner(image_session, io_binding, self._fixed(image_inputs), self.embedding_dim)
        self._text = _Runner(text_session, io_binding, self._fixed(text_inputs), self.embedding_dim)
        self.tokenizer = Tokenizer.from_file(str(self.dir / text["tokenizer"]))
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.enable_padding(pad_id=int(text["pad_id"]), pad_token=text["pad_token"],
                                      length=self.max_length if static_batch else None)
        self.preprocess = ImagePreprocess.from_dict(image["preprocess"]) if image["input"] == "pixel_values" else None

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def model_id(self) -> dict[str, Any]:
        """What identifies the embedding space: indexes built by another model are refused."""
        return {"source_sha256": self.manifest["source_checkpoint"]["sha256"], "embedding_dim": self.embedding_dim}

    def _fixed(self, inputs: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, tuple[tuple[int, ...], Any]] | None:
        """Per-item input shapes with the static batch in front, or None when shapes stay dynamic."""
        if not self.static_batch:
            return None
        return {name: ((self.static_batch, *shape), dtype) for name, (shape, dtype) in inputs.items()}

    def _batches(self, n: int, batch_size: int) -> list[slice]:
        step = self.static_batch or batch_size
        return [slice(i, min(n, i + step)) for i in range(0, n, step)]

    def _run(self, runner: _Runner, feeds: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(feeds.values())))
        if self.static_batch:
            feeds = {k: _pad_rows(v, self.static_batch) for k, v in feeds.items()}
        return runner(feeds)[:n]

    def _concat(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, self.embedding_dim), np.float32)

    def tokenize(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(texts))
        return {
            "input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
        }

    def encode_tokens(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Already tokenised captions (N, L) int64, in one call (benchmarks feed fixed shapes)."""
        return self._run(self._text, {"input_ids": np.asarray(input_ids, dtype=np.int64),
                                      "attention_mask": np.asarray(attention_mask, dtype=np.int64)})

    def encode_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Caption embeddings in the order given. With dynamic shapes the captions run in order of length,
        each batch padded to its own longest: a batch of 64 Flickr8k captions in their own order pads to
        about 32 tokens for 14 words, and the graph spends as much on padding as on words (the fp32 export
        of configs/flickr8k.yaml took 21 ms a caption that way on the 2-core development machine). Captions
        are tokenised and sorted a block of `SORT_BLOCK_BATCHES` batches at a time, so the token ids held
        stay bounded however many captions come in (COCO's 566K would take about 290 MB at once)."""
        texts = list(texts)
        if self.static_batch or not texts:  # fixed shapes: every batch is padded to max_length anyway
            return self._concat([self._run(self._text, self.tokenize(texts[s])) for s in self._batches(len(texts), batch_size)])
        block = batch_size * SORT_BLOCK_BATCHES
        return np.concatenate([self._encode_by_length(texts[b:b + block], batch_size) for b in range(0, len(texts), block)])

    def _encode_by_length(self, texts: list[str], batch_size: int) -> np.ndarray:
        tokens = self.tokenize(texts)
        lengths = tokens["attention_mask"].sum(1)
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(texts), self.embedding_dim), np.float32)
        for s in self._batches(len(texts), batch_size):
            rows = order[s]
            width = int(lengths[rows].max())
            out[rows] = self._run(self._text, {name: array[rows, :width] for name, array in tokens.items()})
        return out

    def encode_pixels(self, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Already preprocessed pixels (N, 3, H, W) float32."""
        pixels = np.asarray(pixels, dtype=np.float32)
        return self._concat([self._run(self._image, {"pixel_values": pixels[s]}) for s in self._batches(len(pixels), batch_size)])

    def encode_arrays(self, images: np.ndarray, mask: np.ndarray | None = None, batch_size: int = 64) -> np.ndarray:
        """Preprocessed pixels (N, 3, H, W), or region features (N, R, D) with an optional mask: what this export takes."""
        if self.preprocess is not None:
            return self.encode_pixels(images, batch_size)
        return self.encode_regions(images, batch_size, mask)

    def encode_images(self, images: Sequence, batch_size: int = 64) -> np.ndarray:
        """PIL images or image file paths."""
        if self.preprocess is None:
            raise ValueError(f"{self.dir}: this export encodes region features; use encode_regions")
        out = []
        for s in self._batches(len(images), batch_size):
            chunk = [load_image(img) if isinstance(img, (str, Path)) else img for img in images[s]]
            out.append(self.encode_pixels(np.stack([self.preprocess(img) for img in chunk]), batch_size))
        return self._concat(out)

    def encode_image_files(self, paths: Sequence[str | Path], batch_size: int = 64) -> np.ndarray:
        return self.encode_images(list(paths), batch_size)

    def encode_regions(self, regions: np.ndarray, batch_size: int = 64, mask: np.ndarray | None = None) -> np.ndarray:
        """Precomputed region features (N, R, D); all regions valid unless `mask` says otherwise."""
        regions = np.asarray(regions, dtype=np.float32)
        mask = np.ones(regions.shape[:2], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        return self._concat([self._run(self._image, {"regions": regions[s], "region_mask": mask[s]})
                             for s in self._batches(len(regions), batch_size)])
