"""Several trained students packed into one dual encoder that still ranks with one matrix product.

Each member's L2-normalised embedding is scaled by the square root of its weight (weights normalised
to sum to one) and the members' embeddings are concatenated on both sides, so the dot product of a
packed image and a packed caption is the weighted mean of the members' scores: a score-level ensemble
(as VSE∞ and SCAN report their best figures) that a gallery index, the ONNX runtime and `search` /
`serve` treat as one student. The packed embedding is itself unit-norm, and its scores stay on the
cosine scale that re-ranking fuses with the teacher's.
Members that freeze the same trunk (the CPU-budget setup: frozen backbones cached once, tops and
heads trained per seed) share it, so the trunk runs once per input and only each member's top and
heads run beside it; a pack of N costs one trunk plus N tops and heads, and N times the embedding
width in the index.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from core.towers.frozen import cacheable, trunk_key
from core.towers.heads import TwoTowerModel
from core.towers.image import TokenOutput
from student.model import DualEncoder


class SharedTrunk(nn.Module):
    """A member tower's trunk as the packed student's tower: `forward` runs the trunk and `top` is the
    identity, since each member runs its own top in `PackedStudent`. Everything else (preprocessing,
    tokenizer, where the tower is cut, which the frozen-cache key holds) is the member tower's, so a
    pack reads the same trunk cache as its members."""

    def __init__(self, tower: nn.Module):
        super().__init__()
        self.tower = tower

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("tower"), name)

    def forward(self, *inputs: torch.Tensor | None) -> TokenOutput:
        return self.tower.trunk(*inputs)

    def trunk(self, *inputs: torch.Tensor | None) -> TokenOutput:
        return self.tower.trunk(*inputs)

    def top(self, cut: TokenOutput) -> TokenOutput:
        return cut


def check_shared_trunks(members: Sequence[DualEncoder], names: Sequence[str]) -> None:
    """Members must freeze the same trunk on both sides (same weights, cut at the same layer): a pack
    runs it once. Raises ValueError naming the first member that differs and the side."""
    for side in ("image_tower", "text_tower"):
        towers = [getattr(m, side) for m in members]
        for tower, name in zip(towers, names, strict=True):
            if not cacheable(tower):
                raise ValueError(f"{name}: its {side.replace('_', ' ')} trains below any cut, so it shares no "
                                 "frozen trunk with the other members (pack students whose towers are frozen, "
                                 "or frozen under `train_top`)")
        first = trunk_key(towers[0])
        for tower, name in zip(towers[1:], names[1:], strict=True):
            if trunk_key(tower) != first:
                raise ValueError(f"{name}: its {side.replace('_', ' ')} trunk differs from {names[0]}'s (other "
                                 "weights or another cut), and the members of a pack share one trunk")


class PackedStudent(TwoTowerModel):
    """Members' embeddings, each times sqrt(weight / sum of weights), side by side (see the module docstring)."""

    def __init__(self, members: Sequence[DualEncoder], weights: Sequence[float], names: Sequence[str]):
        if len(members) < 2 or len(weights) != len(members) or len(names) != len(members):
            raise ValueError(f"a pack needs two or more members, each with a weight and a name; got "
                             f"{len(members)} members, {len(weights)} weights, {len(names)} names")
        if any(w <= 0 for w in weights):
            raise ValueError(f"pack weights must be positive (leave a member out instead), got {list(weights)}")
        check_shared_trunks(members, names)
        super().__init__(SharedTrunk(members[0].image_tower), SharedTrunk(members[0].text_tower))
        self.members = nn.ModuleList(members)
        self.names = list(names)
        total = float(sum(weights))
        self.weights = [float(w) / total for w in weights]

    @property
    def embedding_dim(self) -> int:
        return sum(m.embedding_dim for m in self.members)

    @property
    def plain_text_side(self) -> bool:
        """Several heads: not something a sentence-transformers directory holds."""
        return False

    def _side_by_side(self, embed: Callable[[DualEncoder], torch.Tensor]) -> torch.Tensor:
        return torch.cat([math.sqrt(w) * embed(m) for w, m in zip(self.weights, self.members, strict=True)], -1)

    def images_from(self, cut: TokenOutput) -> torch.Tensor:
        return self._side_by_side(lambda m: m.images_from(m.image_tower.top(cut)))

    def captions_from(self, cut: TokenOutput) -> torch.Tensor:
        return self._side_by_side(lambda m: m.captions_from(m.text_tower.top(cut)))

    def encode_images(self, images: torch.Tensor, image_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.images_from(self.image_tower(images, image_mask))

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Each member's text top in one padded pass (what traces into the exported graph)."""
        cut = self.text_tower(input_ids, attention_mask)
        return self._side_by_side(lambda m: m.captions_from(m.text_tower.top(cut, grouped=False)))
