"""The parity gate every exported variant must pass before an export is written.

Two checks, both through the torch-free runtime a user will ship (its tokenizer, its padding, its
sessions), against the PyTorch student:
- shapes: embeddings of real inputs at several batch sizes and caption lengths (one word, padded
  batches, a caption past the maximum length) must keep a cosine of at least `min_cosine`;
- retrieval: on a held-out batch of images with their captions, i2t and t2i R@1 may fall below
  PyTorch's by at most `max_r1_drop` points. R@1 here counts a query as found only when its match
  beats every other candidate by more than `DECIDED_MARGIN`: a near-tie that float32 rounding alone
  can reorder (1e-7 on unit-norm scores) is a miss on both sides, so an exact variant cannot fail on it
  while a variant whose error exceeds the margin still loses the queries it reorders.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from core.config import VariantGate
from student.model import DualEncoder

Retrieval = Callable[[np.ndarray, int], dict[str, float]]  # (sims, captions_per_image) -> metrics
DECIDED_MARGIN = 1e-5  # cosine-score lead a top-1 answer needs to count in the gate's R@1


class ExportParityError(RuntimeError):
    """An exported variant does not reproduce the PyTorch model within its gate."""


@dataclass
class GateData:
    """Held-out inputs: preprocessed images (or region features + mask) and their captions, image-major."""

    images: np.ndarray
    image_mask: np.ndarray | None
    captions: list[str]
    captions_per_image: int


@dataclass
class Reference:
    """PyTorch embeddings of the gate data and of the shape probes."""

    image_emb: np.ndarray
    text_emb: np.ndarray
    image_probes: list[tuple[np.ndarray, np.ndarray]]  # (row indices, embeddings)
    text_probes: list[tuple[list[str], np.ndarray]]  # (captions, embeddings)


def text_probes(texts: list[str], batch_sizes: list[int], max_length: int) -> list[list[str]]:
    """Batches of real captions at each size, plus edge cases: one word, and a caption past max_length."""
    words = texts[0].split()
    long_text = " ".join(words * (max_length // max(1, len(words)) + 2))
    pool = texts + [words[0], long_text]
    batches = [[pool[(start + i) % len(pool)] for i in range(b)] for start, b in enumerate(batch_sizes)]
    return batches + [[words[0]], [long_text], [long_text, words[0]]]


@torch.no_grad()
def _torch_images(student: DualEncoder, data: GateData, rows: np.ndarray) -> np.ndarray:
    images = torch.from_numpy(np.ascontiguousarray(data.images[rows]))
    mask = None if data.image_mask is None else torch.from_numpy(np.ascontiguousarray(data.image_mask[rows]))
    return student.encode_images(images, mask).float().numpy()


@torch.no_grad()
def _torch_texts(student: DualEncoder, texts: list[str]) -> np.ndarray:
    tokens = student.tokenize(texts)
    return student.encode_text(tokens["input_ids"], tokens["attention_mask"]).float().numpy()


def pytorch_reference(student: DualEncoder, data: GateData, batch_sizes: list[int], batch: int = 64) -> Reference:
    student.eval()  # the torchscript exporter restores a wrapper's training flag onto its children
    n = len(data.images)
    image_emb = np.concatenate([_torch_images(student, data, np.arange(i, min(n, i + batch))) for i in range(0, n, batch)])
    text_emb = np.concatenate([_torch_texts(student, data.captions[i:i + batch]) for i in range(0, len(data.captions), batch)])
    image_probes = [(rows, _torch_images(student, data, rows)) for rows in (np.arange(b) % n for b in batch_sizes)]
    probes = text_probes(data.captions[::data.captions_per_image], batch_sizes, student.text_tower.max_length)
    return Reference(image_emb, text_emb, image_probes, [(t, _torch_texts(student, t)) for t in probes])


def _cosines(reference: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    cos = (reference * got).sum(-1) / (np.linalg.norm(reference, axis=-1) * np.linalg.norm(got, axis=-1) + 1e-12)
    return float(cos.min()), float(np.abs(reference - got).max())


def encode_gate_images(runtime, data: GateData, rows: np.ndarray) -> np.ndarray:
    return runtime.encode_arrays(data.images[rows], None if data.image_mask is None else data.image_mask[rows])


def decided_r1(sims: np.ndarray, captions_per_image: int, margin: float = DECIDED_MARGIN) -> dict[str, float]:
    """i2t and t2i R@1 (percent) counting only matches that lead every other candidate by more than `margin`."""
    n_img, n_cap = sims.shape
    owner = np.arange(n_cap) // captions_per_image
    own = owner[None, :] == np.arange(n_img)[:, None]
    i2t = np.where(own, sims, -np.inf).max(1) - np.where(own, -np.inf, sims).max(1)
    t2i = sims[owner, np.arange(n_cap)] - np.where(own, -np.inf, sims).max(0)
    return {"i2t_r1": 100.0 * float(np.mean(i2t > margin)), "t2i_r1": 100.0 * float(np.mean(t2i > margin))}


def check_variant(runtime, ref: Reference, data: GateData, gate: VariantGate, retrieval: Retrieval) -> dict[str, Any]:
    """Gate figures of one loaded variant (an `export.runtime.OnnxStudent`); `passed` says if it holds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fp16 on the CPU provider is expected here
        image_stats = [_cosines(emb, encode_gate_images(runtime, data, rows)) for rows, emb in ref.image_probes]
        text_stats = [_cosines(emb, runtime.encode_text(texts)) for texts, emb in ref.text_probes]
        image_emb = encode_gate_images(runtime, data, np.arange(len(data.images)))
        text_emb = runtime.encode_text(data.captions)
    lengths = sorted({int(runtime.tokenize(texts)["input_ids"].shape[1]) for texts, _ in ref.text_probes})
    torch_metrics = retrieval(ref.image_emb @ ref.text_emb.T, data.captions_per_image)
    onnx_metrics = retrieval(image_emb @ text_emb.T, data.captions_per_image)
    keys = ("i2t_r1", "t2i_r1", "rsum")
    torch_decided = decided_r1(ref.image_emb @ ref.text_emb.T, data.captions_per_image)
    onnx_decided = decided_r1(image_emb @ text_emb.T, data.captions_per_image)
    drop = max(0.0, *(torch_decided[k] - onnx_decided[k] for k in torch_decided))
    min_cos = {"image": min(c for c, _ in image_stats), "text": min(c for c, _ in text_stats)}
    report = {
        "min_cosine": min_cos,
        "max_abs_diff": {"image": max(d for _, d in image_stats), "text": max(d for _, d in text_stats)},
        "batch_sizes": sorted({len(rows) for rows, _ in ref.image_probes}),
        "text_lengths": lengths,
        "retrieval": {"images": len(data.images), "captions": len(data.captions),
                      "pytorch": {k: torch_metrics[k] for k in keys}, "onnx": {k: onnx_metrics[k] for k in keys},
                      "decided_r1": {"margin": DECIDED_MARGIN, "pytorch": torch_decided, "onnx": onnx_decided}},
        "r1_drop": drop,
        "threshold": {"min_cosine": gate.min_cosine, "max_r1_drop": gate.max_r1_drop},
    }
    report["passed"] = min(min_cos.values()) >= gate.min_cosine and drop <= gate.max_r1_drop
    return report
