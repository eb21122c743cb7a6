"""The student: a dual encoder whose retrieval is one matrix product of L2-normalised embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.config import StudentConfig
from core.towers.heads import TwoTowerModel, make_projection


class DualEncoder(TwoTowerModel):
    """Towers -> pooled vector -> projection -> L2 normalisation, independently per modality.

    `forward` also returns each modality's projected local tokens (same projection as the global
    vector, so both live in one space) for the SelfAlign training losses; `encode_images` and
    `encode_text`, which export, return only the embeddings.
    """

    def __init__(self, cfg: StudentConfig, image_tower: nn.Module, text_tower: nn.Module):
        super().__init__(image_tower, text_tower)
        self.cfg = cfg
        self.image_proj = make_projection(image_tower.out_dim, cfg.embed_dim, cfg.projection)
        self.text_proj = make_projection(text_tower.out_dim, cfg.embed_dim, cfg.projection)

    def encode_images(self, images: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.image_proj(self.image_tower(images, image_mask).pooled), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text_tower(input_ids, attention_mask).pooled), dim=-1)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        img = self.image_tower(batch.images, batch.image_mask)
        txt = self.text_tower(batch.input_ids, batch.attention_mask)
        img_emb = F.normalize(self.image_proj(img.pooled), dim=-1)
        txt_emb = F.normalize(self.text_proj(txt.pooled), dim=-1)
        return {
            "img_emb": img_emb,
            "txt_emb": txt_emb,
            "sims": img_emb @ txt_emb.T,
            "img_local": F.normalize(self.image_proj(img.tokens), dim=-1),
            "img_local_mask": img.mask,
            "txt_local": F.normalize(self.text_proj(txt.tokens), dim=-1),
            "txt_local_mask": txt.mask,
        }
