"""Top-K retrieval by dot product, in blocks of queries so memory stays bounded for any gallery."""
from __future__ import annotations

import numpy as np
import torch


def top_k_ids(queries: np.ndarray, gallery: np.ndarray, k: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores): the k gallery items with the highest dot product for each query, best first.

    ids int64 (n_queries, k), scores float32 (n_queries, k). Ties keep torch.topk's order.
    """
    if not 0 < k <= len(gallery):
        raise ValueError(f"k must be in 1..{len(gallery)} (the gallery size), got {k}")
    g = torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32))
    ids = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), block):
        q = torch.from_numpy(np.ascontiguousarray(queries[start:start + block], dtype=np.float32))
        top = (q @ g.T).topk(k, dim=1)
        ids[start:start + len(q)] = top.indices.numpy()
        scores[start:start + len(q)] = top.values.numpy()
    return ids, scores
