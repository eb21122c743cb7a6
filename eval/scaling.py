"""Per-query retrieval latency against gallery size, read against a cost model.

Per text query the student pays one caption encoding plus N·d multiply-adds for the search (N gallery
images, d embedding width); the teacher pays its caption encoding plus cross attention over N·R·L·D
(R regions, L words, D token width) and must hold N·R·D token features. Each system is measured end to
end (caption in, top 10 out) at every gallery size that fits: galleries are the split's real gallery
features tiled to size N, since latency does not depend on their values. Where the teacher no longer
fits (`bench.teacher_max_gib`) or one query passes `bench.scaling_max_query_s`, its latency is
extrapolated from a least-squares line a + b·N through its measured points, and marked as such.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from core.config import BenchConfig
from core.timing import time_calls
from teacher.ensemble import EnsembleSide
from teacher.model import EncodedSide
from teacher.scoring import Teacher

TOP_K = 10


def _time(fn: Callable[[int], Any], cfg: BenchConfig, sync=None) -> dict[str, Any]:
    return time_calls(fn, max(1, cfg.warmup), cfg.repeats, sync, cfg.scaling_budget_s)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top])]


def _tile(n: int, base: int) -> np.ndarray:
    return np.arange(n) % base


def student_points(runtime, gallery: np.ndarray, queries: list[str], cfg: BenchConfig,
                   gpu_runtime=None) -> list[dict[str, Any]]:
    """Student per-query latency: ONNX caption encoding + exact search (NumPy, FAISS when installed, torch on
    CUDA, where the caption is encoded by `gpu_runtime` if given)."""
    rows = []
    for n in cfg.gallery_sizes:
        emb = np.ascontiguousarray(gallery[_tile(n, len(gallery))], dtype=np.float32)
        rows += [{"system": "student", "method": method, "gallery": n, "measured": True, "gallery_bytes": emb.nbytes,
                  **_time(search, cfg, sync)}
                 for method, search, sync in _student_searches(runtime, gpu_runtime, emb, queries, min(TOP_K, n), cfg)]
    return rows


def _student_searches(runtime, gpu_runtime, emb: np.ndarray, queries: list[str], k: int,
                      cfg: BenchConfig) -> list[tuple[str, Callable[[int], Any], Callable[[], None] | None]]:
    """(method, query i -> top-k, sync) of each search this machine offers over the gallery `emb`."""
    from export.runtime import faiss_available

    def encode(i: int) -> np.ndarray:
        return runtime.encode_text([queries[i % len(queries)]])[0]

    searches = [("exact-numpy", lambda i: _top_k(emb @ encode(i), k), None)]
    if faiss_available():
        import faiss

        index = faiss.IndexFlatIP(emb.shape[1])
        index.add(emb)
        searches.append(("faiss-flat", lambda i: index.search(encode(i)[None], k), None))
    if cfg.cuda and torch.cuda.is_available():
        on_gpu = torch.from_numpy(emb).cuda()

        def search_gpu(i: int) -> torch.Tensor:
            caption = (gpu_runtime or runtime).encode_text([queries[i % len(queries)]])[0]
            return (on_gpu @ torch.from_numpy(caption).cuda()).topk(k).indices.cpu()

        searches.append(("exact-torch-cuda", search_gpu, torch.cuda.synchronize))
    return searches


def scaling_unavailable(cfg: BenchConfig) -> list[dict[str, str]]:
    """The search methods `student_points` could not measure here, with the reason."""
    from export.runtime import faiss_available

    out = [] if faiss_available() else [{"method": "faiss-flat", "reason": "faiss is not installed"}]
    if not (cfg.cuda and torch.cuda.is_available()):
        out.append({"method": "exact-torch-cuda", "reason": "no CUDA device" if cfg.cuda else "bench.cuda is false"})
    return out


def _fit(points: list[dict[str, Any]]) -> tuple[float, float]:
    """Least-squares a + b·N (ms) through measured points."""
    n = np.array([p["gallery"] for p in points], dtype=np.float64)
    t = np.array([p["p50_ms"] for p in points], dtype=np.float64)
    if len(points) == 1:
        return 0.0, float(t[0] / n[0])
    b, a = np.polyfit(n, t, 1)
    return float(a), float(b)


def token_shape(gallery: EncodedSide | EnsembleSide) -> dict[str, int]:
    """R and D of the cost model: an ensemble's regions add up over its members, D being the mean width
    that keeps R x D (what a gallery image holds and a query multiplies) exact."""
    sides = gallery.members if isinstance(gallery, EnsembleSide) else [gallery]
    regions = sum(int(s.tokens.shape[1]) for s in sides)
    return {"regions": regions, "dim": round(sum(int(s.tokens.shape[1]) * int(s.tokens.shape[2]) for s in sides) / regions)}


@torch.no_grad()
def teacher_points(teacher: Teacher, gallery: EncodedSide | EnsembleSide, queries: list[str], cfg: BenchConfig,
                   device: torch.device) -> list[dict[str, Any]]:
    """Teacher per-query latency: caption encoding + cross attention against all N images, measured while it fits
    (an ensemble's: every member's)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    per_image = gallery.held_bytes_per_row()
    rows, stopped = [], None
    for n in cfg.gallery_sizes:
        need = n * per_image
        if stopped is None and need > cfg.teacher_max_gib * 2**30:
            stopped = f"{need / 2**30:.1f} GiB of token features > bench.teacher_max_gib={cfg.teacher_max_gib}"
        if stopped is None and rows and rows[-1]["p50_ms"] > cfg.scaling_max_query_s * 1000:
            stopped = f"one query took {rows[-1]['p50_ms'] / 1000:.1f} s > bench.scaling_max_query_s={cfg.scaling_max_query_s}"
        if stopped:
            a, b = _fit([r for r in rows if r["measured"]])
            rows.append({"system": "teacher", "method": f"scan-pytorch-{device.type}", "gallery": n, "measured": False,
                         "extrapolated_from": "a + b*N fitted to the measured points", "reason": stopped,
                         "gallery_bytes": need, "p50_ms": a + b * n})
            continue
        side = gallery[torch.from_numpy(_tile(n, len(gallery)))].to(device)
        rows.append({"system": "teacher", "method": f"scan-pytorch-{device.type}", "gallery": n, "measured": True,
                     "gallery_bytes": need, **_time(_teacher_query(teacher, side, queries, min(TOP_K, n)),
                                                    cfg, sync)})
    return rows


def _teacher_query(teacher: Teacher, side: EncodedSide | EnsembleSide, queries: list[str],
                   k: int) -> Callable[[int], torch.Tensor]:
    """Query i -> the teacher's top-k images of `side`, caption encoding included."""
    def query(i: int) -> torch.Tensor:
        return teacher.score(side, teacher.encode_captions([queries[i % len(queries)]])).squeeze(1).topk(k).indices.cpu()

    return query


def cost_model(rows: list[dict[str, Any]], usable_ms: float) -> list[dict[str, Any]]:
    """Per method: fitted a + b·N, and the gallery size at which one query reaches `usable_ms`."""
    out = []
    for key in sorted({(r["system"], r["method"]) for r in rows}):
        measured = [r for r in rows if (r["system"], r["method"]) == key and r["measured"]]
        if not measured:
            continue
        a, b = _fit(measured)
        out.append({"system": key[0], "method": key[1], "fixed_ms": a, "ms_per_image": b,
                    "usable_gallery": round((usable_ms - a) / b) if b > 0 and usable_ms > a else None,
                    "largest_measured": max(r["gallery"] for r in measured)})
    return out


def ratios(rows: list[dict[str, Any]], student_method: str = "exact-numpy") -> list[dict[str, Any]]:
    """Teacher/student per-query latency at each gallery size (teacher marked when extrapolated)."""
    student = {r["gallery"]: r for r in rows if r["system"] == "student" and r["method"] == student_method}
    return [{"gallery": r["gallery"], "teacher_method": r["method"], "teacher_measured": r["measured"],
             "teacher_over_student": r["p50_ms"] / student[r["gallery"]]["p50_ms"]}
            for r in rows if r["system"] == "teacher" and r["gallery"] in student]
