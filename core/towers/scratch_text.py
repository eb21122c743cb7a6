"""A small text model trained from scratch, saved as a sentence-transformers model directory.

The embedded default has no pretrained text model, so we learn a WordPiece vocabulary from the
training captions (`tokenizers`), pair it with a randomly initialised BERT of the configured size,
and save both as a sentence-transformers directory (Transformer + mean Pooling). From then on the
scratch model is loaded exactly like any hub model, and its `tokenizer.json` serves the torch-free
runtime.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from core.config import ScratchTextConfig
from core.io import atomic_dir, sha256_json

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(captions: Sequence[str], vocab_size: int) -> Tokenizer:
    """A lower-casing BERT-style WordPiece tokenizer learned from `captions`."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(captions, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return tok


def scratch_model_dir(root: str | Path, cfg: ScratchTextConfig, max_length: int, data_fingerprint: str) -> Path:
    """Where the scratch model for this spec and training data lives under `root`."""
    key = sha256_json({"cfg": vars(cfg), "max_length": max_length, "data": data_fingerprint})[:12]
    return Path(root) / f"scratch-{key}"


def build_scratch_text_model(captions: Sequence[str], out_dir: str | Path, cfg: ScratchTextConfig,
                             max_length: int) -> Path:
    """Write a sentence-transformers directory for a fresh BERT with a caption-trained tokenizer."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    tok = train_wordpiece(captions, cfg.vocab_size)
    with atomic_dir(out_dir) as tmp:
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
            sep_token="[SEP]", mask_token="[MASK]", model_max_length=max_length,
        )
        fast.save_pretrained(str(tmp))
        config = BertConfig(
            vocab_size=tok.get_vocab_size(), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
            max_position_embeddings=max(64, max_length), pad_token_id=tok.token_to_id("[PAD]"),
        )
        with torch.random.fork_rng():
            torch.manual_seed(0)
            BertModel(config, add_pooling_layer=False).save_pretrained(str(tmp))
        transformer = Transformer(str(tmp), max_seq_length=max_length)
        pooling = Pooling(transformer.get_embedding_dimension(), "mean")
        SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(tmp))
    return out_dir
