"""The student's text encoder as a sentence-transformers model directory.

So that `SentenceTransformer(export_dir / "sentence_transformer")` gives the same caption
embeddings as the ONNX text encoder, for users whose stack is sentence-transformers (semantic
search, vector databases). The modules are the text tower's own (transformer + its pooling, with
the student's weights), the projection as Dense layers, and a Normalize.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from student.model import DualEncoder

DIRNAME = "sentence_transformer"


def _dense_layers(projection: nn.Module) -> list[nn.Module]:
    """The projection (Linear, or Linear-GELU-Linear) as sentence-transformers Dense modules."""
    from sentence_transformers.sentence_transformer.modules import Dense

    linears = [projection] if isinstance(projection, nn.Linear) else [m for m in projection if isinstance(m, nn.Linear)]
    activations = [nn.GELU() if isinstance(projection, nn.Sequential) else nn.Identity()] * (len(linears) - 1) + [nn.Identity()]
    return [Dense(lin.in_features, lin.out_features, bias=lin.bias is not None, activation_function=act,
                  init_weight=lin.weight.detach().clone(), init_bias=None if lin.bias is None else lin.bias.detach().clone())
            for lin, act in zip(linears, activations, strict=True)]


def save_text_model(student: DualEncoder, path: str | Path) -> Path:
    """Write the student's caption encoder (weights as trained) as a sentence-transformers directory."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    tower = student.text_tower
    base = SentenceTransformer(tower.source, device="cpu")
    transformer = base[0]
    transformer.auto_model.load_state_dict(tower.encoder.state_dict())
    pooling = tower.pooling if tower.pooling is not None else Pooling(tower.out_dim, pooling_mode="mean")
    model = SentenceTransformer(modules=[transformer, pooling, *_dense_layers(student.text_proj), Normalize()], device="cpu")
    model.max_seq_length = tower.max_length
    model.save(str(path))
    return Path(path)
