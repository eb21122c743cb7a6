"""Teacher scores of any block of pairs (image ids x caption ids), as in-batch KD reads them: from
the all-pairs cache, or online, the frozen teacher scoring the gathered batch in the loop (ALADIN).

In-batch KD needs B x B scores per step: about 7e7 pairs per COCO epoch at B = 128, against 6.4e10
for the all-pairs cache. Online scoring reads the batch's rows of the teacher's token store
(`teacher.tokens`), so its cost per step is one B x B cross attention and its memory one batch of
tokens, whatever the size of the split. Under torchrun each rank scores its share of the rows and
the shares are gathered, so no rank repeats another's work.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from core.distributed import Ranks, gather_rows
from core.precision import autocast
from teacher.ensemble import EnsembleTeacher
from teacher.model import ScanTeacher
from teacher.tokens import TokenStore

TeacherLookup = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (image ids, caption ids) -> (I, C) scores


def dense_lookup(scores: np.ndarray) -> TeacherLookup:
    """Scores gathered from an all-pairs matrix (memory-mapped: only the block is read)."""

    def lookup(images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        rows = scores[np.ix_(images.cpu().numpy(), captions.cpu().numpy())]
        return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))

    return lookup


class OnlineTeacher:
    """A frozen teacher that scores blocks of pairs from its token store when asked (no gradient;
    bf16 autocast on CUDA when `bf16`)."""

    def __init__(self, teacher: ScanTeacher | EnsembleTeacher, store: TokenStore, bf16: bool = False, ranks: Ranks = Ranks()):
        self.teacher, self.store, self.bf16, self.ranks = teacher.eval(), store, bf16, ranks
        for p in teacher.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        image_ids, caption_ids = images.cpu().numpy(), captions.cpu().numpy()
        world, rank = self.ranks.world, self.ranks.rank
        share = -(-len(image_ids) // world)
        mine = image_ids[rank * share:(rank + 1) * share]
        with autocast(self.store.images.device, self.bf16):
            scores = (self.teacher.score(self.store.images[mine], self.store.captions[caption_ids]).float()
                      if len(mine) else torch.empty(0, len(caption_ids), device=self.store.images.device))
        if world == 1:
            return scores
        padded = torch.cat([scores, scores.new_zeros(share - len(scores), len(caption_ids))])
        return gather_rows(padded, self.ranks)[:len(image_ids)]
