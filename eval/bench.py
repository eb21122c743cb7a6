"""Latency benchmark: batch-1 caption encoding, per-query text-to-image retrieval, and the student's
image encoding (what indexing a gallery costs per image).

Gallery features are computed once beforehand (as a deployed index would hold them): image
embeddings for the student, projected region tokens for the teacher. A query then costs, for the
student, one caption encoding plus a matrix-vector product and top-k; for the teacher, one
caption encoding plus cross attention against every gallery image and top-k; for re-ranking, the
student's query and top-K, then the teacher's caption encoding and cross attention against those
K images only. All run in the same process on the same captions; CUDA rows are added when a GPU
is present. Image encoding is timed on one image (an image query) and on a batch of
`bench.image_batch` (building the index), from pixels already decoded and resized (or region
features): the encoder's cost, which a second image backbone (`image_tower.also`) adds to.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from core.config import BenchConfig
from core.data.images import ImagePreprocess, load_image
from core.data.records import CaptionSplit
from core.io import read_json
from core.machine import machine_info
from core.timing import time_calls
from core.towers.frozen import FrozenOutputs
from eval.evaluate import onnx_gallery
from eval.matrix import run_matrix
from eval.scaling import cost_model, ratios, scaling_unavailable, student_points, teacher_points, token_shape
from export.runtime import MANIFEST
from student.encode import encode_side
from student.model import DualEncoder
from student.packed import PackedStudent
from teacher.scoring import Side, Teacher, encode_gallery

TOP_K = 10


def gallery_inputs(split: CaptionSplit, preprocess: ImagePreprocess | None, n: int) -> np.ndarray:
    """The split's first `n` images as the image tower takes them: preprocessed pixels (N, 3, H, W), or
    region features (N, R, D)."""
    n = min(n, split.n_images)
    if split.features is not None:
        return np.asarray(split.features[:n], dtype=np.float32)
    return np.stack([preprocess(load_image(path)) for path in split.image_paths[:n]])


def _image_rows(encode: Callable[[np.ndarray], Any], images: np.ndarray, cfg: BenchConfig, base: dict[str, Any],
                sync: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """The student's image encoding on one image and on all of `images`, with the p50 per image."""
    rows = []
    for batch in sorted({1, len(images)}):
        timing = time_calls(lambda i, b=batch: encode(images[:b]), cfg.warmup, cfg.repeats, sync, cfg.image_budget_s)
        rows.append({"measure": "image_encoding", "system": "student", **base, "batch": batch, **timing,
                     "per_image_ms": timing["p50_ms"] / batch})
    return rows


def _torch_rows(teacher: Teacher, student: DualEncoder, split: CaptionSplit, queries: list[str],
                student_pre: ImagePreprocess | None, cfg: BenchConfig, device: torch.device, rerank_k: list[int],
                student_weight: float, gallery_tokens: Side, frozen_images: FrozenOutputs | None) -> list[dict[str, Any]]:
    """PyTorch rows on `device`; `gallery_tokens`: the teacher's side of the gallery there, `frozen_images`:
    the student's cached image-tower outputs of the split, if any."""
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    teacher.to(device).eval()
    student.to(device).eval()
    gallery_emb = torch.from_numpy(encode_side(student, split, "image", student_pre, 128, device, False,
                                               frozen_images)).to(device)
    k = min(TOP_K, split.n_images)
    rows = []

    @torch.no_grad()
    def encode_images(images: np.ndarray) -> torch.Tensor:
        return student.encode_images(torch.from_numpy(images).to(device))

    @torch.no_grad()
    def encode(i: int) -> torch.Tensor:
        tokens = student.tokenize([queries[i % len(queries)]])
        return student.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))

    @torch.no_grad()
    def student_query(i: int) -> torch.Tensor:
        return (gallery_emb @ encode(i).T).squeeze(1).topk(k).indices.cpu()

    @torch.no_grad()
    def teacher_caption(i: int):
        return teacher.encode_captions([queries[i % len(queries)]])

    @torch.no_grad()
    def teacher_query(i: int) -> torch.Tensor:
        return teacher.score(gallery_tokens, teacher_caption(i)).squeeze(1).topk(k).indices.cpu()

    def rerank_query(depth: int):
        @torch.no_grad()
        def query(i: int) -> torch.Tensor:
            first = (gallery_emb @ encode(i).T).squeeze(1).topk(depth)
            scores = teacher.score_candidates(gallery_tokens, teacher_caption(i), "text",
                                              torch.zeros(1, dtype=torch.long, device=device), first.indices[None])[0]
            return first.indices[(scores + student_weight * first.values).argsort(descending=True)].cpu()
        return query

    base = {"backend": "pytorch", "device": str(device)}
    rows.append({"measure": "caption_encoding", "system": "student", **base, "batch": 1,
                 **time_calls(encode, cfg.warmup, cfg.repeats, sync)})
    rows.append({"measure": "retrieval", "system": "student", **base, "gallery": split.n_images,
                 **time_calls(student_query, cfg.warmup, cfg.repeats, sync)})
    rows.append({"measure": "retrieval", "system": "teacher", **base, "gallery": split.n_images,
                 **time_calls(teacher_query, cfg.warmup, cfg.repeats, sync)})
    rows += [{"measure": "retrieval", "system": f"rerank-top{depth}", **base, "gallery": split.n_images,
              **time_calls(rerank_query(min(depth, split.n_images)), cfg.warmup, cfg.repeats, sync)}
             for depth in rerank_k]
    return rows + _image_rows(encode_images, gallery_inputs(split, student_pre, cfg.image_batch), cfg, base, sync)


def _onnx_rows(export_dir: Path, split: CaptionSplit, queries: list[str], cfg: BenchConfig,
               provider: str, variant: str) -> list[dict[str, Any]]:
    from export.runtime import OnnxStudent

    on_gpu = provider != "CPUExecutionProvider"  # bind to the device: no host round trip per input
    runtime = OnnxStudent(export_dir, variant, providers=[provider], threads=cfg.threads, io_binding=on_gpu)
    gallery = onnx_gallery(runtime, split)
    k = min(TOP_K, split.n_images)

    def encode(i: int) -> np.ndarray:
        return runtime.encode_text([queries[i % len(queries)]])

    def query(i: int) -> np.ndarray:
        scores = gallery @ encode(i)[0]
        top = np.argpartition(-scores, k - 1)[:k]
        return top[np.argsort(-scores[top])]

    def encode_images(images: np.ndarray) -> np.ndarray:
        return runtime.encode_arrays(images, batch_size=len(images))

    base = {"backend": "onnxruntime", "variant": variant, "device": "cuda" if on_gpu else "cpu", "provider": provider,
            "io_binding": on_gpu}
    return [
        {"measure": "caption_encoding", "system": "student", **base, "batch": 1, **time_calls(encode, cfg.warmup, cfg.repeats)},
        {"measure": "retrieval", "system": "student", **base, "gallery": split.n_images, **time_calls(query, cfg.warmup, cfg.repeats)},
        *_image_rows(encode_images, gallery_inputs(split, runtime.preprocess, cfg.image_batch), cfg, base),
    ]


def run_benchmark(teacher: Teacher, student: DualEncoder, export_dir: str | Path, split: CaptionSplit,
                  student_pre: ImagePreprocess | None, cfg: BenchConfig, rerank_k: list[int] = (),
                  student_weight: float = 1.0, frozen_images: FrozenOutputs | None = None) -> dict[str, Any]:
    """Measure every backend available here; returns rows plus the machine description. The teacher is
    the run's: an ensemble's query encodes the caption with, and scores the gallery by, every member.
    `rerank_k`: depths of the student-retrieves, teacher-re-ranks system to time (re-ranking score:
    teacher + student_weight x student). `frozen_images`: the student's cached image-tower outputs of
    the split, which its gallery is then embedded from (the gallery is built before timing either way)."""
    import onnxruntime as ort

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    queries = list(split.captions[: cfg.queries])
    rerank_k = list(rerank_k)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if cfg.cuda and torch.cuda.is_available() else [])
    galleries = {d: encode_gallery(teacher.to(d), split, 128, d) for d in devices}  # for the rows and the scaling
    rows = [row for d in devices for row in _torch_rows(teacher, student, split, queries, student_pre, cfg, d, rerank_k,
                                                        student_weight, galleries[d], frozen_images)]
    providers = ["CPUExecutionProvider"]
    if cfg.cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.append("CUDAExecutionProvider")
    variants = read_json(Path(export_dir) / MANIFEST)["variants"]
    for provider in providers:  # each variant where it is meant to run (int8 on the CPU, fp16 on CUDA)
        rows += [row for name, v in variants.items() if provider in v["providers"]
                 for row in _onnx_rows(Path(export_dir), split, queries, cfg, provider, name)]
    result = {
        "machine": machine_info(),
        "split": split.name,
        "gallery_images": split.n_images,
        "student_packed": isinstance(student, PackedStudent),  # the rows of one model: a pack, or one seed's student
        "settings": {"warmup": cfg.warmup, "repeats": cfg.repeats, "queries": len(queries), "top_k": TOP_K,
                     "threads": cfg.threads},
        "rows": rows,
    }
    if cfg.matrix:
        result["matrix"] = run_matrix(student, export_dir, cfg)
    if cfg.scaling:
        result["scaling"] = _scaling(teacher, Path(export_dir), split, queries, cfg, galleries)
    return result


def _scaling(teacher: Teacher, export_dir: Path, split: CaptionSplit, queries: list[str], cfg: BenchConfig,
             galleries: dict[torch.device, Side]) -> dict[str, Any]:
    """Per-query latency against gallery size: the split's real gallery features (`galleries`: the teacher's
    on each device), tiled to each size."""
    import onnxruntime as ort

    from export.runtime import OnnxStudent

    runtime = OnnxStudent(export_dir, "fp32", providers="cpu", threads=cfg.threads)
    gpu_runtime = None
    if cfg.cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        gpu_runtime = OnnxStudent(export_dir, "fp32", providers="cuda", io_binding=True)
    gallery = onnx_gallery(runtime, split)
    rows = student_points(runtime, gallery, queries, cfg, gpu_runtime)
    for device, tokens in galleries.items():
        teacher.to(device).eval()
        rows += teacher_points(teacher, tokens, queries, cfg, device)
    teacher.cpu()
    return {"rows": rows, "cost_model": cost_model(rows, cfg.usable_ms), "ratios": ratios(rows),
            "unavailable": scaling_unavailable(cfg),
            "usable_ms": cfg.usable_ms, "embedding_dim": int(gallery.shape[1]),
            "teacher_tokens": token_shape(tokens)}
