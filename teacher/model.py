"""The interactive teacher: towers, token projections, fine-grained matching (SCAN or IMRAM) of pairs."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.config import TeacherConfig
from core.towers.heads import TwoTowerModel, make_projection
from core.towers.image import TokenOutput
from teacher.cross import hard_lists
from teacher.matching import Matcher


class PairCounter:
    """How many image-caption pairs the teachers of this process have scored (training included):
    what a run's stage record reports as the teacher's work."""

    count = 0

    @classmethod
    def add(cls, pairs: int) -> None:
        cls.count += int(pairs)


@dataclass
class EncodedSide:
    """L2-normalised tokens and mask of a set of images or captions, plus an optional global vector."""

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor | None = None

    def __getitem__(self, idx) -> "EncodedSide":
        return EncodedSide(self.tokens[idx], self.mask[idx], None if self.pooled is None else self.pooled[idx])

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def to(self, device: torch.device | str) -> "EncodedSide":
        return EncodedSide(self.tokens.to(device), self.mask.to(device), None if self.pooled is None else self.pooled.to(device))

    def bytes_per_row(self) -> int:
        """float32 bytes of one item's tokens: what a scoring block holds."""
        return int(self.tokens.shape[1]) * int(self.tokens.shape[2]) * 4

    def held_bytes_per_row(self) -> int:
        """Bytes one item holds as stored here (tokens, mask and global vector): what a gallery costs in memory."""
        pooled = 0 if self.pooled is None else self.pooled[0].numel() * self.pooled.element_size()
        return self.tokens[0].numel() * self.tokens.element_size() + self.mask[0].numel() + pooled


class ScanTeacher(TwoTowerModel):
    """Projects tower tokens into a joint space and scores pairs by cross attention or a joint
    transformer (`teacher.matching`).

    With `global_weight > 0` the score adds a global term (cosine of the projected pooled vectors),
    which a fine-grained head learned from scratch can lean on while its attention is still weak.
    """

    def __init__(self, cfg: TeacherConfig, image_tower: nn.Module, text_tower: nn.Module):
        super().__init__(image_tower, text_tower)
        self.cfg = cfg
        self.region_proj = make_projection(image_tower.out_dim, cfg.embed_dim, cfg.projection)
        self.word_proj = make_projection(text_tower.out_dim, cfg.embed_dim, cfg.projection)
        if cfg.global_weight > 0:
            self.image_global = nn.Linear(image_tower.out_dim, cfg.embed_dim)
            self.text_global = nn.Linear(text_tower.out_dim, cfg.embed_dim)
        self.matcher = Matcher(cfg.matching, cfg.scan, cfg.imram, cfg.embed_dim, cfg.cross)

    @property
    def label(self) -> str:
        """What scores its pairs, as reports name it."""
        if self.cfg.matching == "imram":
            return f"IMRAM cross attention, {self.cfg.imram.side} side, {self.cfg.imram.steps} steps"
        if self.cfg.matching == "cross":
            return f"cross-encoder, {self.cfg.cross.layers} layer(s)"
        return f"SCAN {self.cfg.scan.direction} cross attention"

    @property
    def eval_top_k(self) -> int:
        """Candidates per query that evaluation re-ranks by the full score (0: it scores every pair):
        a cross-encoder's forward per pair does not fit every pair."""
        return self.cfg.cross.eval_top_k if self.cfg.matching == "cross" else 0

    def images_from(self, out: TokenOutput) -> EncodedSide:
        return self._side(out, self.region_proj, "image_global")

    def captions_from(self, out: TokenOutput) -> EncodedSide:
        return self._side(out, self.word_proj, "text_global")

    def _side(self, out: TokenOutput, proj: nn.Module, glob: str) -> EncodedSide:
        tokens = F.normalize(proj(out.tokens), dim=-1)
        pooled = F.normalize(getattr(self, glob)(out.pooled), dim=-1) if self.cfg.global_weight > 0 else None
        return EncodedSide(tokens, out.mask, pooled)

    def encode_images(self, images: torch.Tensor, image_mask: torch.Tensor | None = None) -> EncodedSide:
        return self.images_from(self.image_tower(images, image_mask))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncodedSide:
        return self.captions_from(self.text_tower(input_ids, attention_mask))

    def encode_captions(self, texts: list[str]) -> EncodedSide:
        """Captions as text, tokenised and encoded where the teacher is: a query at search time."""
        device = next(self.parameters()).device
        tokens = self.tokenize(texts)
        return self.encode_text(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))

    def score(self, images: EncodedSide, captions: EncodedSide) -> torch.Tensor:
        """Similarity of every image with every caption: (n_img, n_cap)."""
        sims = self.matcher.all_pairs(images.tokens, images.mask, captions.tokens, captions.mask)
        PairCounter.add(sims.numel())
        if self.cfg.global_weight > 0:
            sims = sims + self.cfg.global_weight * images.pooled @ captions.pooled.T
        return sims

    def score_candidates(self, images: EncodedSide, captions: EncodedSide, query: str, queries: torch.Tensor,
                         candidates: torch.Tensor) -> torch.Tensor:
        """(Q, K) scores of each query (caption ids for query='text', image ids for 'image') with its
        K candidates of the other side: candidates (Q, K) ids."""
        if query == "text":
            img, cap = images[candidates], captions[queries[:, None]]
        elif query == "image":
            img, cap = images[queries[:, None]], captions[candidates]
        else:
            raise ValueError(f"query must be 'text' or 'image', got {query!r}")
        sims = self.matcher.pairs(img.tokens, img.mask, cap.tokens, cap.mask)
        PairCounter.add(sims.numel())
        if self.cfg.global_weight > 0:
            sims = sims + self.cfg.global_weight * (img.pooled * cap.pooled).sum(-1)
        return sims

    def forward(self, batch) -> dict[str, torch.Tensor]:
        """SCAN / IMRAM: {"sims": every pair of the batch}. Cross-encoder: {"sims": the global score of
        every pair (its first stage), "lists_i2t" / "lists_t2i": full scores (B, 1 + k) of each image's
        and each caption's positive (first) and hardest in-batch negatives, -inf where no negative was left}.
        The same as `score_batch(encode_batch(batch), batch.image_index)`."""
        return self.score_batch(self.encode_batch(batch), batch.image_index)

    def encode_batch(self, batch) -> dict[str, torch.Tensor]:
        """The batch's encoded sides as rows (one per pair of the batch): {img,txt}_{tokens,mask} and, with
        a global term, {img,txt}_pooled. Under torchrun the training loop gathers these rows of every
        rank and scores the global batch with `score_batch`."""
        image, text = self.tower_outputs(batch)
        out = {}
        for prefix, side in (("img", self.images_from(image)), ("txt", self.captions_from(text))):
            out.update({f"{prefix}_tokens": side.tokens, f"{prefix}_mask": side.mask})
            if side.pooled is not None:
                out[f"{prefix}_pooled"] = side.pooled
        return out

    def score_batch(self, sides: dict[str, torch.Tensor], image_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """`forward`'s outputs from the encoded sides of a batch (`encode_batch`) whose rows show
        `image_index`."""
        images, captions = (EncodedSide(sides[f"{p}_tokens"], sides[f"{p}_mask"], sides.get(f"{p}_pooled"))
                            for p in ("img", "txt"))
        if self.cfg.matching != "cross":
            return {"sims": self.score(images, captions)}
        first = images.pooled @ captions.pooled.T
        by_image, by_caption = hard_lists(first, image_index, self.cfg.cross.negatives)
        own = torch.arange(len(first), device=first.device)[:, None]
        return {"sims": first, "lists_i2t": self._list_scores(images, captions, own, by_image, first),
                "lists_t2i": self._list_scores(images, captions, by_caption, own, first)}

    def _list_scores(self, images: EncodedSide, captions: EncodedSide, image_ids: torch.Tensor,
                     caption_ids: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        """Full scores of the pairs (image_ids, caption_ids), broadcast to (B, 1 + k); -1 ids give -inf."""
        img, cap = image_ids.clamp(min=0), caption_ids.clamp(min=0)
        cross = self.matcher.pairs(images.tokens[img], images.mask[img], captions.tokens[cap], captions.mask[cap])
        PairCounter.add(cross.numel())
        scores = cross + self.cfg.global_weight * first[img, cap]
        return scores.masked_fill((image_ids < 0) | (caption_ids < 0), float("-inf"))
