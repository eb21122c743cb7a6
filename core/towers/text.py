"""Text tower: any sentence-transformers model as word tokens + mask + its own pooled vector."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.length_groups import length_groups
from core.towers.heads import keep_trunk_in_eval
from core.towers.image import TokenOutput


class TextTower(nn.Module):
    """Wraps the Hugging Face encoder and Pooling module of a sentence-transformers model.

    The encoder is called directly (not through SentenceTransformer.forward) so that the tower is
    a plain module that exports to ONNX; pooling is the model's own, so `pooled` equals what
    `SentenceTransformer.encode` returns before normalisation. `fresh_init` re-draws the encoder's
    weights from the current torch seed (used for models trained from scratch).
    """

    def __init__(self, name_or_path: str | Path, max_length: int, fresh_init: bool = False, train_top: int = 0):
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
        self.top_layers = train_top
        if train_top:
            layers = getattr(getattr(self.encoder, "encoder", None), "layer", None)
            if not isinstance(layers, nn.ModuleList) or not hasattr(self.encoder, "embeddings"):
                raise ValueError(f"text_tower.train_top: {self.source} is not a BERT-style encoder "
                                 "(embeddings + encoder.layer), so it cannot be cut between layers")
            if train_top > len(layers):
                raise ValueError(f"text_tower.train_top: {self.source} has {len(layers)} layers, got {train_top}")

    def _layers(self) -> list[nn.Module]:
        return list(self.encoder.encoder.layer)

    def trunk_modules(self) -> list[nn.Module]:
        """What runs before the cut (the whole tower when nothing is cut)."""
        if not self.top_layers:
            return [self]
        return [self.encoder.embeddings] + self._layers()[:-self.top_layers]

    def top_modules(self) -> list[nn.Module]:
        """The last `train_top` layers, trainable under a frozen trunk."""
        return self._layers()[-self.top_layers:] if self.top_layers else []

    def train(self, mode: bool = True) -> "TextTower":
        super().train(mode)
        keep_trunk_in_eval(self)
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Pad to the longest caption, truncate at `max_length` (the runtime does the same)."""
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TokenOutput:
        if self.top_layers:
            return self.top(self.trunk(input_ids, attention_mask), grouped=False)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._output(hidden, attention_mask)

    def trunk(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TokenOutput:
        """Hidden states at the cut (pooled: their masked mean); the whole tower's output when uncut."""
        if not self.top_layers:
            return self(input_ids, attention_mask)
        hidden = self.encoder.embeddings(input_ids=input_ids)
        hidden = self._run(self._layers()[:-self.top_layers], hidden, attention_mask)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return TokenOutput(hidden, attention_mask.bool(), (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0))

    def top(self, cut: TokenOutput, grouped: bool = True) -> TokenOutput:
        """The tower's output from the trunk's (identity when uncut), as training and encoding over a
        cached trunk call it: captions run in groups of similar length, each trimmed to its longest
        (`core.length_groups`), since a layer's work grows with the padded width. Padding positions
        come out as zeros; valid ones equal `forward`'s. Not `grouped`: one pass over the whole padded
        batch, what traces into the exported graph."""
        if not self.top_layers:
            return cut
        if not grouped:
            return self._output(self._run(self.top_modules(), cut.tokens, cut.mask), cut.mask.long())
        layers, groups = self.top_modules(), length_groups(cut.mask)
        width = cut.tokens.shape[1]
        parts = []
        for start, stop, used in groups.spans:
            ids = groups.order[start:stop]
            hidden = self._run(layers, cut.tokens[ids, :used], cut.mask[ids, :used])
            parts.append(F.pad(hidden * cut.mask[ids, :used, None], (0, 0, 0, width - used)))
        return self._output(groups.restore(torch.cat(parts)), cut.mask.long())

    @staticmethod
    def _run(layers: list[nn.Module], hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Transformer layers with an additive key mask, the form every attention implementation takes."""
        additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in layers:
            hidden = layer(hidden, attention_mask=additive)
        return hidden

    def _output(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> TokenOutput:
        if self.pooling is not None:
            pooled = self.pooling({"token_embeddings": hidden, "attention_mask": attention_mask})["sentence_embedding"]
        else:
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return TokenOutput(hidden, attention_mask.bool(), pooled)
