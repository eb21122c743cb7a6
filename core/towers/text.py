"""Text tower: any sentence-transformers model as word tokens + mask + its own pooled vector."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from core.towers.image import TokenOutput


class TextTower(nn.Module):
    """Wraps the Hugging Face encoder and Pooling module of a sentence-transformers model.

    The encoder is called directly (not through SentenceTransformer.forward) so that the tower is
    a plain module that exports to ONNX; pooling is the model's own, so `pooled` equals what
    `SentenceTransformer.encode` returns before normalisation. `fresh_init` re-draws the encoder's
    weights from the current torch seed (used for models trained from scratch).
    """

    def __init__(self, name_or_path: str | Path, max_length: int, fresh_init: bool = False):
        super().__init__()
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Pooling
        from transformers import AutoModel

        st = SentenceTransformer(str(name_or_path), device="cpu")
        transformer = st[0]
        encoder = transformer.auto_model
        self.encoder = AutoModel.from_config(encoder.config) if fresh_init else encoder
        self.pooling = next((m for m in st if isinstance(m, Pooling)), None)
        self.tokenizer = transformer.tokenizer
        model_limit = transformer.max_seq_length or max_length
        self.max_length = min(max_length, model_limit)
        self.out_dim = int(transformer.get_embedding_dimension())
        self.source = str(name_or_path)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Pad to the longest caption, truncate at `max_length` (the runtime does the same)."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TokenOutput:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling is not None:
            pooled = self.pooling({"token_embeddings": hidden, "attention_mask": attention_mask})["sentence_embedding"]
        else:
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return TokenOutput(hidden, attention_mask.bool(), pooled)
