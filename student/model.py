"""The student: a dual encoder whose retrieval is one matrix product of L2-normalised embeddings."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.config import StudentConfig
from core.towers.heads import TwoTowerModel, make_projection
from core.towers.image import RegionFeatureTower, TokenOutput
from student.enhance import CrossModalMemory, SelfGuidedWeights, TokenMemory, hierarchical_concat, masked_mean
from student.pooling import GPO


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

    Image pooling is the tower's own (`tower`, e.g. global average), `flatten`: the grid tokens
    concatenated in order before the projection, which keeps where things are (average pooling
    discards it) at no extra inference cost beyond a wider projection, or `gpo` (student.pooling);
    text pooling the sentence-transformers model's own or `gpo`. Optional enhancements
    (see student.enhance): self-guided token weights before pooling (`student.self_guided`), cross-modal
    memory banks after the projection (`student.memory_bank`; at `level: token`, read by the tokens
    before pooling), and a local space concatenated to the
    global one (`student.hierarchy`). `forward` also returns what the
    training losses read (projected local tokens when SelfAlign reads them, the global and local parts); `encode_images` and
    `encode_text`, which export, return only the embeddings.
    """

    def __init__(self, cfg: StudentConfig, image_tower: nn.Module, text_tower: nn.Module):
        super().__init__(image_tower, text_tower)
        self.cfg = cfg
        width = image_tower.out_dim
        flatten = cfg.image_pooling == "flatten"
        if flatten and isinstance(image_tower, RegionFeatureTower):
            raise ValueError("student.image_pooling 'flatten' needs a grid image tower, not region features")
        image_in = _grid_tokens(image_tower) * width if flatten else width
        self.image_proj = make_projection(image_in, cfg.embed_dim, cfg.projection)
        # training only, SelfAlign's local tokens: their own projection when flattened, else the pooled one's
        self.image_local_proj = nn.Linear(width, cfg.embed_dim) if flatten else None
        self.text_proj = make_projection(text_tower.out_dim, cfg.embed_dim, cfg.projection)
        self.image_gpo = GPO() if cfg.image_pooling == "gpo" else None
        self.text_gpo = GPO() if cfg.text_pooling == "gpo" else None
        sg = cfg.self_guided.attention_dim
        self.image_weights = SelfGuidedWeights(width, sg) if sg else None
        self.text_weights = SelfGuidedWeights(text_tower.out_dim, sg) if sg else None
        mb = cfg.memory_bank
        level = mb.level if mb.slots else None
        self.memory = (CrossModalMemory(mb.slots, cfg.embed_dim, mb.mix, mb.temperature, mb.momentum)
                       if level == "global" else None)
        self.token_memory = (TokenMemory(mb.slots, width, text_tower.out_dim, mb.mix, mb.temperature, mb.momentum)
                             if level == "token" else None)
        # SelfAlign's terms read every projected local token; without them forward skips that projection
        # (an MLP over all 81 x 2,560 tokens of a two-backbone image side, online and in the momentum copy)
        self.local_outputs = cfg.losses.align.weight > 0 or cfg.losses.concept.weight > 0
        local = cfg.hierarchy.local_dim
        self.image_lex_proj = make_projection(image_in, local, cfg.projection) if local else None
        self.text_lex_proj = make_projection(text_tower.out_dim, local, cfg.projection) if local else None

    @property
    def embedding_dim(self) -> int:
        return self.cfg.embedding_dim

    @property
    def plain_text_side(self) -> bool:
        """Whether the caption encoder is tower + pooling + projection + normalisation and nothing else
        (what a sentence-transformers directory can hold)."""
        return (self.text_weights is None and self.text_gpo is None and self.memory is None
                and self.token_memory is None and self.text_lex_proj is None)

    def _image_pooled(self, out: TokenOutput) -> torch.Tensor:
        tokens = out.tokens if self.image_weights is None else self.image_weights(out.tokens, out.mask)
        if self.cfg.image_pooling == "flatten":
            return tokens.flatten(1)
        if self.image_gpo is not None:
            return self.image_gpo(tokens, out.mask)
        return out.pooled if self.image_weights is None else masked_mean(tokens, out.mask)

    def _text_pooled(self, out: TokenOutput) -> torch.Tensor:
        tokens = out.tokens if self.text_weights is None else self.text_weights(out.tokens, out.mask)
        if self.text_gpo is not None:
            return self.text_gpo(tokens, out.mask)
        return out.pooled if self.text_weights is None else masked_mean(tokens, out.mask)

    def _embed(self, pooled: torch.Tensor, proj: nn.Module, lex_proj: nn.Module | None, side: str) -> dict[str, torch.Tensor]:
        """{base: projected, global: after the memory read, lex: local space, emb: shipped}."""
        parts = {"base": F.normalize(proj(pooled), dim=-1)}
        parts["global"] = parts["base"] if self.memory is None else getattr(self.memory, side)(parts["base"])
        parts["emb"] = parts["global"]
        if lex_proj is not None:
            parts["lex"] = F.normalize(lex_proj(pooled), dim=-1)
            h = self.cfg.hierarchy
            parts["emb"] = hierarchical_concat(parts["global"], parts["lex"], h.global_weight, h.local_weight)
        return parts

    def _token_read(self, out: TokenOutput, side: str) -> TokenOutput:
        """The tower's output with its tokens fused with what they read from the token-level memory
        (`side`: images or captions); the tower's own pooling becomes the masked mean of the fused tokens."""
        if self.token_memory is None:
            return out
        tokens = getattr(self.token_memory, side)(out.tokens, out.mask)
        return TokenOutput(tokens, out.mask, masked_mean(tokens, out.mask))

    def _image_parts(self, out: TokenOutput) -> dict[str, torch.Tensor]:
        return self._embed(self._image_pooled(self._token_read(out, "images")), self.image_proj, self.image_lex_proj,
                           "images")

    def _text_parts(self, out: TokenOutput) -> dict[str, torch.Tensor]:
        return self._embed(self._text_pooled(self._token_read(out, "captions")), self.text_proj, self.text_lex_proj,
                           "captions")

    def images_from(self, out: TokenOutput) -> torch.Tensor:
        return self._image_parts(out)["emb"]

    def captions_from(self, out: TokenOutput) -> torch.Tensor:
        return self._text_parts(out)["emb"]

    def encode_images(self, images: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.images_from(self.image_tower(images, image_mask))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.captions_from(self.text_tower(input_ids, attention_mask))

    def _local_image_sample(self, out: TokenOutput) -> TokenOutput:
        """The image tokens SelfAlign's terms read: in training, `local_image_tokens` of each image's
        tokens drawn at random, valid ones first (all of them when 0 or when the image has no more)."""
        n = self.cfg.local_image_tokens
        if not self.training or n <= 0 or out.tokens.shape[1] <= n:
            return out
        draw = torch.rand(out.mask.shape, device=out.mask.device).masked_fill(~out.mask, -1.0)
        idx = draw.topk(n, dim=1).indices
        tokens = out.tokens.gather(1, idx[:, :, None].expand(-1, -1, out.tokens.shape[-1]))
        return TokenOutput(tokens, out.mask.gather(1, idx), out.pooled)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        img, txt = self.tower_outputs(batch)
        image, text = self._image_parts(img), self._text_parts(txt)
        out = {
            "img_emb": image["emb"],
            "txt_emb": text["emb"],
            "sims": image["emb"] @ text["emb"].T,
            "img_global": image["global"],
            "txt_global": text["global"],
            "img_local_mask": img.mask,
            "txt_local_mask": txt.mask,
        }
        if self.local_outputs:
            local = self._local_image_sample(img)
            out.update(img_local=F.normalize((self.image_local_proj or self.image_proj)(local.tokens), dim=-1),
                       img_local_mask=local.mask, txt_local=F.normalize(self.text_proj(txt.tokens), dim=-1))
        if self.memory is not None:
            out.update(img_base=image["base"], txt_base=text["base"])
        if self.token_memory is not None:  # valid pre-fusion tokens feed the token banks
            out.update(img_tokens=img.tokens, img_tokens_mask=img.mask, txt_tokens=txt.tokens, txt_tokens_mask=txt.mask)
        if self.text_lex_proj is not None:
            out.update(img_lex=image["lex"], txt_lex=text["lex"])
        return out

    @torch.no_grad()
    def update_memory(self, keys: dict[str, torch.Tensor]) -> None:
        """One step of the MEMBER banks from `forward`'s outputs (the momentum model's, in training):
        the pre-memory embeddings, or the valid pre-fusion tokens at the token level."""
        if self.memory is not None:
            self.memory.update(keys["img_base"], keys["txt_base"])
        if self.token_memory is not None:
            self.token_memory.update(keys["img_tokens"][keys["img_tokens_mask"]],
                                     keys["txt_tokens"][keys["txt_tokens_mask"]])
