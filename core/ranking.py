"""Top-K retrieval by dot product, in blocks of queries and of the gallery, so memory stays bounded
for any gallery: a block of scores is (query block x gallery block), and each query keeps only its
running best k across the gallery blocks."""
from __future__ import annotations

import numpy as np
import torch


def top_k_ids(queries: np.ndarray, gallery: np.ndarray, k: int, block: int = 2048,
              gallery_block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """(ids, scores): the k gallery items with the highest dot product for each query, best first.

    ids int64 (n_queries, k), scores float32 (n_queries, k). `gallery` may be memory-mapped: it is read
    `gallery_block` rows at a time. Ties keep the lower gallery id first within a block.
    """
    n = len(gallery)
    if not 0 < k <= n:
        raise ValueError(f"k must be in 1..{n} (the gallery size), got {k}")
    ids = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for start in range(0, len(queries), block):
        q = torch.from_numpy(np.ascontiguousarray(queries[start:start + block], dtype=np.float32))
        best_scores, best_ids = None, None
        for g0 in range(0, n, gallery_block):
            g = torch.from_numpy(np.ascontiguousarray(gallery[g0:g0 + gallery_block], dtype=np.float32))
            top = (q @ g.T).topk(min(k, len(g)), dim=1)
            cand_scores, cand_ids = top.values, top.indices + g0
            if best_scores is not None:
                cand_scores, cand_ids = torch.cat([best_scores, cand_scores], 1), torch.cat([best_ids, cand_ids], 1)
                merged = cand_scores.topk(k, dim=1)
                cand_scores, cand_ids = merged.values, cand_ids.gather(1, merged.indices)
            best_scores, best_ids = cand_scores, cand_ids
        ids[start:start + len(q)] = best_ids.numpy()
        scores[start:start + len(q)] = best_scores.numpy()
    return ids, scores
