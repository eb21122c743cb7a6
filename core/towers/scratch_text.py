"""A small text model trained from scratch, saved as a sentence-transformers model directory.

The embedded default has no pretrained text model, so we build a WordPiece vocabulary from the
training captions' words (a `tokenizers` WordPiece model), pair it with a randomly initialised BERT
of the configured size, and save both as a sentence-transformers directory (Transformer + mean
Pooling). From then on the scratch model is loaded exactly like any hub model, and its
`tokenizer.json` serves the torch-free runtime.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from core.config import ScratchTextConfig
from core.io import atomic_dir, sha256_json

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_wordpiece(captions: Sequence[str], vocab_size: int) -> Tokenizer:
    """A lower-casing BERT-style WordPiece tokenizer for `captions`: every character alone and as a
    continuation piece, then whole words by frequency (ties by spelling) up to `vocab_size` in all. Built
    from counts rather than by `tokenizers`' WordPiece trainer, which breaks ties between equally
    frequent merges in hash-map order, so the same captions gave a different vocabulary in every
    process (huggingface/tokenizers#1794) and one seed a different student in every run directory."""
    normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for caption in captions
                     for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(caption)))
    alphabet = {ch for word in counts for ch in word}
    pieces = SPECIALS + sorted(alphabet) + sorted(f"##{ch}" for ch in alphabet)
    words = [w for w, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])) if w not in alphabet]
    vocab = pieces + words[:max(0, vocab_size - len(pieces))]
    tok = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, splitter, decoders.WordPiece()
    tok.add_special_tokens(SPECIALS)  # already in the vocabulary: their ids stay, and they are never split
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
