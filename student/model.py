"""The student: a dual encoder whose retrieval is one matrix product of L2-normalised embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.config import StudentConfig
from core.towers.heads import TwoTowerModel, make_projection
from core.towers.image import RegionFeatureTower, TokenOutput


def _grid_tokens(tower: nn.Module) -> int:
    """How many tokens the image tower yields at its input size (a fixed grid for `flatten` pooling)."""
    size = tower.preprocess().size
    param = next(tower.parameters())
    was_training = tower.training
    tower.eval()
    with torch.no_grad():
        n = tower(torch.zeros(1, 3, size, size, dtype=param.dtype, device=param.device)).tokens.shape[1]
    tower.train(was_training)
    return int(n)


class DualEncoder(TwoTowerModel):
    """Towers -> pooling -> projection -> L2 normalisation, independently per modality.

    Image pooling is the tower's own (`tower`, e.g. global average) or `flatten`: the grid tokens
    concatenated in order before the projection, which keeps where things are (average pooling
    discards it) at no extra inference cost beyond a wider projection. `forward` also returns
    projected local tokens for the SelfAlign training losses; `encode_images` and `encode_text`,
    which export, return only the embeddings.
    """

    def __init__(self, cfg: StudentConfig, image_tower: nn.Module, text_tower: nn.Module):
        super().__init__(image_tower, text_tower)
        self.cfg = cfg
        width = image_tower.out_dim
        if cfg.image_pooling == "flatten":
            if isinstance(image_tower, RegionFeatureTower):
                raise ValueError("student.image_pooling 'flatten' needs a grid image tower, not region features")
            self.image_proj = make_projection(_grid_tokens(image_tower) * width, cfg.embed_dim, cfg.projection)
            self.image_local_proj = nn.Linear(width, cfg.embed_dim)  # training only: SelfAlign's local tokens
        else:  # pooled and local image vectors share the projection
            self.image_proj = make_projection(width, cfg.embed_dim, cfg.projection)
            self.image_local_proj = None
        self.text_proj = make_projection(text_tower.out_dim, cfg.embed_dim, cfg.projection)

    def images_from(self, out: TokenOutput) -> torch.Tensor:
        pooled = out.tokens.flatten(1) if self.cfg.image_pooling == "flatten" else out.pooled
        return F.normalize(self.image_proj(pooled), dim=-1)

    def captions_from(self, out: TokenOutput) -> torch.Tensor:
        return F.normalize(self.text_proj(out.pooled), dim=-1)

    def encode_images(self, images: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.images_from(self.image_tower(images, image_mask))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.captions_from(self.text_tower(input_ids, attention_mask))

    def forward(self, batch) -> dict[str, torch.Tensor]:
        img, txt = self.tower_outputs(batch)
        img_emb, txt_emb = self.images_from(img), self.captions_from(txt)
        return {
            "img_emb": img_emb,
            "txt_emb": txt_emb,
            "sims": img_emb @ txt_emb.T,
            "img_local": F.normalize((self.image_local_proj or self.image_proj)(img.tokens), dim=-1),
            "img_local_mask": img.mask,
            "txt_local": F.normalize(self.text_proj(txt.tokens), dim=-1),
            "txt_local_mask": txt.mask,
        }
