"""The teacher's fine-grained score, as configured: SCAN (t2i, i2t or their ensemble), IMRAM, or a
cross-encoder (a joint transformer per pair).

Two entry points with one meaning: `all_pairs` scores every image with every caption (training,
all-pairs caches, evaluation); `pairs` scores explicit pairs laid out (A, B), e.g. a query with
its K candidates (top-K caches, re-ranking).
"""
from __future__ import annotations

import torch
from torch import nn

from core.config import CrossConfig, ImramConfig, ScanConfig
from teacher.attention import check_masks, pair_blocks, scan_pair_scores, scan_similarity
from teacher.cross import CrossEncoder
from teacher.iterative import GatedMemory, iterative_scores

KINDS = ("scan", "imram", "cross")


class Matcher(nn.Module):
    """Holds the IMRAM memory units or the cross-encoder when chosen; SCAN has no parameters of its own."""

    def __init__(self, kind: str, scan: ScanConfig, imram: ImramConfig, dim: int, cross: CrossConfig | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"matching must be one of {KINDS}, got {kind!r}")
        self.kind, self.scan, self.imram = kind, scan, imram
        if kind == "cross":
            self.cross = CrossEncoder(dim, cross or CrossConfig())
        if kind == "imram":
            if imram.side in ("text", "full"):
                self.text_memory = GatedMemory(dim)
            if imram.side in ("image", "full"):
                self.image_memory = GatedMemory(dim)

    def _directions(self) -> list[tuple[str, float, float]]:
        """(direction, lambda_softmax, lambda_lse) of each term; their scores are averaged (SCAN) or summed (IMRAM)."""
        s = self.scan
        t2i, i2t = ("t2i", s.lambda_softmax, s.lambda_lse), ("i2t", s.i2t_lambda_softmax, s.i2t_lambda_lse)
        if self.kind == "imram":
            return [d for d, on in ((t2i, self.imram.side != "image"), (i2t, self.imram.side != "text")) if on]
        return {"t2i": [t2i], "i2t": [i2t], "ensemble": [t2i, i2t]}[s.direction]

    def all_pairs(self, regions: torch.Tensor, region_mask: torch.Tensor, words: torch.Tensor,
                  word_mask: torch.Tensor) -> torch.Tensor:
        """(n_img, n_cap) scores of regions (n_img, R, D) against words (n_cap, L, D)."""
        if self.kind == "scan":
            terms = [scan_similarity(regions, region_mask, words, word_mask, direction, self.scan.aggregation,
                                     lam_softmax, lam_lse, self.scan.max_chunk_elements)
                     for direction, lam_softmax, lam_lse in self._directions()]
            return sum(terms) / len(terms)
        check_masks("region_mask", region_mask)
        check_masks("word_mask", word_mask)
        n_reg, n_word, dim = regions.shape[1], words.shape[1], regions.shape[2]
        per_pair = (self.cross.pair_cost(n_reg, n_word) if self.kind == "cross"
                    else (n_reg + n_word) * dim + n_reg * n_word)  # attended vectors and logits of one pair
        out = regions.new_empty(regions.shape[0], words.shape[0])
        for im, cp in pair_blocks(regions.shape[0], words.shape[0], per_pair, 4 * self.scan.max_chunk_elements):
            out[im, cp] = self.pairs(regions[im, None], region_mask[im, None], words[None, cp], word_mask[None, cp])
        return out

    def pairs(self, regions: torch.Tensor, region_mask: torch.Tensor, words: torch.Tensor,
              word_mask: torch.Tensor) -> torch.Tensor:
        """(A, B) scores of pairs laid out (A, B): regions (A|1, B|1, R, D), words (A|1, B|1, L, D)."""
        if self.kind == "cross":
            return self._cross_pairs(regions, region_mask, words, word_mask)
        scores = []
        for direction, lam_softmax, lam_lse in self._directions():
            if self.kind == "scan":
                scores.append(scan_pair_scores(regions, region_mask, words, word_mask, direction,
                                               self.scan.aggregation, lam_softmax, lam_lse))
            elif direction == "t2i":
                scores.append(iterative_scores(words, word_mask, regions, region_mask, self.text_memory,
                                               self.imram.steps, self.scan.aggregation, lam_softmax, lam_lse))
            else:
                scores.append(iterative_scores(regions, region_mask, words, word_mask, self.image_memory,
                                               self.imram.steps, self.scan.aggregation, lam_softmax, lam_lse))
        return sum(scores) / len(scores) if self.kind == "scan" else sum(scores)

    def _cross_pairs(self, regions: torch.Tensor, region_mask: torch.Tensor, words: torch.Tensor,
                     word_mask: torch.Tensor) -> torch.Tensor:
        """The cross-encoder over the (A, B) pairs, in blocks of pairs within 4 x scan.max_chunk_elements numbers."""
        a, b = max(regions.shape[0], words.shape[0]), max(regions.shape[1], words.shape[1])
        n_reg, n_word = regions.shape[2], words.shape[2]
        flat = [t.expand(a, b, *t.shape[2:]).reshape(a * b, *t.shape[2:])
                for t in (regions, region_mask, words, word_mask)]
        step = max(1, 4 * self.scan.max_chunk_elements // self.cross.pair_cost(n_reg, n_word))
        out = [self.cross(*(t[s:s + step] for t in flat)) for s in range(0, a * b, step)]
        return torch.cat(out).view(a, b)
