"""A gallery index over exported embeddings: exact top-k with NumPy, FAISS when installed.

The index holds what a deployment searches: L2-normalised embeddings of one modality and an id per
item (an image path, or a caption). It remembers which export made it (the manifest's source
checkpoint hash and embedding size), and loading it under a different export is refused, because
embeddings from another model would return confident nonsense. Torch-free, like the runtime.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.io import atomic_dir, read_json, read_npy, write_json

FORMAT = "itr-distill/index/v1"
Backend = Literal["auto", "numpy", "faiss"]
FAISS_MIN_ITEMS = 50_000  # below this, a NumPy matrix product is as fast as a flat FAISS index


def faiss_available() -> bool:
    return importlib.util.find_spec("faiss") is not None


@dataclass
class SearchHit:
    rank: int
    id: str
    score: float


class GalleryIndex:
    """Embeddings (N, D) of one modality ('image' or 'text') with their ids, searchable by inner product."""

    def __init__(self, embeddings: np.ndarray, ids: list[str], modality: Literal["image", "text"],
                 model: dict[str, Any], backend: Backend = "auto"):
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(ids):
            raise ValueError(f"index needs (N, D) embeddings with one id each, got {embeddings.shape} and {len(ids)} ids")
        if modality not in ("image", "text"):
            raise ValueError(f"index modality must be 'image' or 'text', got {modality!r}")
        self.embeddings, self.ids, self.modality, self.model = embeddings, list(ids), modality, dict(model)
        self.backend = self._choose(backend)
        self._faiss = self._build_faiss() if self.backend == "faiss" else None

    def _choose(self, backend: Backend) -> str:
        if backend == "faiss" and not faiss_available():
            raise ImportError("backend 'faiss' asked for but faiss is not installed (pip install faiss-cpu)")
        if backend == "auto":
            return "faiss" if faiss_available() and len(self.ids) >= FAISS_MIN_ITEMS else "numpy"
        return backend

    def _build_faiss(self):
        import faiss

        index = faiss.IndexFlatIP(self.embeddings.shape[1])
        index.add(self.embeddings)
        return index

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, indices), each (Q, k), best first; ties broken by the lower index."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query embeddings have {queries.shape[1]} dims, the index has {self.dim}")
        k = min(k, len(self))
        if self._faiss is not None:
            scores, idx = self._faiss.search(queries, k)
            return scores, idx.astype(np.int64)
        sims = queries @ self.embeddings.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < len(self) else np.tile(np.arange(len(self)), (len(sims), 1))
        top_scores = np.take_along_axis(sims, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        idx = np.take_along_axis(top, order, axis=1)
        return np.take_along_axis(sims, idx, axis=1), idx

    def hits(self, query: np.ndarray, k: int = 10) -> list[SearchHit]:
        """Ranked hits of one query embedding."""
        scores, idx = self.search(query[None] if query.ndim == 1 else query, k)
        return [SearchHit(rank + 1, self.ids[i], float(s)) for rank, (i, s) in enumerate(zip(idx[0], scores[0], strict=True))]

    def save(self, directory: str | Path) -> Path:
        """`embeddings.npy` + `index.json`, written atomically as one directory."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            np.save(tmp / "embeddings.npy", self.embeddings)
            write_json(tmp / "index.json", {"format": FORMAT, "modality": self.modality, "count": len(self),
                                            "dim": self.dim, "model": self.model, "ids": self.ids})
        return directory

    @classmethod
    def load(cls, directory: str | Path, expect_model: dict[str, Any] | None = None,
             backend: Backend = "auto") -> "GalleryIndex":
        """Load a saved index; refuse it when it was built by another model than `expect_model`."""
        directory = Path(directory)
        meta = read_json(directory / "index.json")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{directory / 'index.json'}: not an itr-distill index (format {meta.get('format')!r})")
        emb_path = directory / "embeddings.npy"
        embeddings = read_npy(emb_path)
        if embeddings.shape != (meta["count"], meta["dim"]):
            raise ValueError(f"{emb_path}: shape {embeddings.shape} does not match index.json "
                             f"({meta['count']} x {meta['dim']})")
        if expect_model is not None:
            differ = [k for k in expect_model if meta["model"].get(k) != expect_model[k]]
            if differ:
                detail = ", ".join(f"{k}: index {meta['model'].get(k)!r} vs export {expect_model[k]!r}" for k in differ)
                raise ValueError(f"{directory}: index was built by another model ({detail}); rebuild it")
        return cls(np.asarray(embeddings), meta["ids"], meta["modality"], meta["model"], backend)
