"""A teacher ensemble as one teacher: the weighted sum of its members' standardised scores.

Members score on different scales (SCAN's LogSumExp relevance plus a cosine, a cross-encoder's
logit), so each member's score is standardised with the mean and spread of its scores on the
selection split before the weights apply (`eval.ensemble.fit_ensemble` chooses both there). Each
member reads its own token store; `EnsembleSide` bundles the members' sides of the same items, so
every scorer that reads one teacher's store (online KD, the all-pairs and top-K caches, evaluation,
re-ranking) reads an ensemble's unchanged, block by block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from teacher.model import EncodedSide, ScanTeacher
from teacher.tokens import StoredSide


@dataclass
class EnsembleSide:
    """The members' sides (encoded or stored) of the same images or captions, in member order."""

    members: Sequence[EncodedSide | StoredSide | EnsembleSide]

    def __len__(self) -> int:
        return len(self.members[0])

    def __getitem__(self, idx: Any) -> EnsembleSide:
        return EnsembleSide([m[idx] for m in self.members])

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    def to(self, device: torch.device | str) -> EnsembleSide:
        return EnsembleSide([m.to(device) for m in self.members])

    def bytes_per_row(self) -> int:
        """float32 bytes of one item's tokens over all members: what a scoring block holds."""
        return sum(m.bytes_per_row() for m in self.members)

    def held_bytes_per_row(self) -> int:
        """Bytes one item holds over all members (`EncodedSide.held_bytes_per_row`)."""
        return sum(m.held_bytes_per_row() for m in self.members)


@dataclass(frozen=True)
class Standardised:
    """One member's place in the sum: weight x (score - mean) / std."""

    weight: float
    mean: float
    std: float


Scores = TypeVar("Scores", np.ndarray, torch.Tensor)


def combine(scores: Sequence[Scores], terms: Sequence[Standardised]) -> Scores:
    """Sum of weight x (score - mean) / std over members' scores of the same pairs (float32 arrays
    or tensors; Python-float factors keep their precision)."""
    out = None
    for s, t in zip(scores, terms, strict=True):
        part = (s - t.mean) * (t.weight / t.std)
        out = part if out is None else out + part
    return out


class EnsembleTeacher(nn.Module):
    """Scores pairs like a `ScanTeacher` from `EnsembleSide`s: sum of weight x standardised member score.
    Every pair is scored by every member (no first stage), so `eval_top_k` is 0."""

    eval_top_k = 0

    def __init__(self, members: Sequence[ScanTeacher], terms: Sequence[Standardised], name: str = "ensemble",
                 member_names: Sequence[str] = ()):
        super().__init__()
        if len(members) != len(terms) or not members:
            raise ValueError(f"an ensemble needs one weight per member, got {len(members)} members, {len(terms)} weights")
        self.members, self.terms = nn.ModuleList(members), list(terms)
        self.name, self.member_names = name, list(member_names) or [m.label for m in members]

    @property
    def label(self) -> str:
        """Its members and weights, as reports name it."""
        parts = " + ".join(f"{t.weight:.1f} x {n}" for n, t in zip(self.member_names, self.terms, strict=True))
        return f"ensemble {self.name}: {parts}"

    def encode_captions(self, texts: list[str]) -> EnsembleSide:
        """Every member's encoding of the captions (`ScanTeacher.encode_captions`): a query costs all of them."""
        return EnsembleSide([m.encode_captions(texts) for m in self.members])

    def score(self, images: EnsembleSide, captions: EnsembleSide) -> torch.Tensor:
        """(n_img, n_cap) ensemble scores of every image with every caption."""
        return combine([m.score(i, c).float() for m, i, c in zip(self.members, images.members, captions.members, strict=True)],
                       self.terms)

    def score_candidates(self, images: EnsembleSide, captions: EnsembleSide, query: str, queries: torch.Tensor,
                         candidates: torch.Tensor) -> torch.Tensor:
        """(Q, K) ensemble scores of each query with its K candidates (`ScanTeacher.score_candidates`)."""
        return combine([m.score_candidates(i, c, query, queries, candidates).float()
                        for m, i, c in zip(self.members, images.members, captions.members, strict=True)], self.terms)
