"""Groups of padded token sets of similar length, each trimmed to its longest member.

Captions come padded to the longest of their batch (or to `max_length` in a store), and about half
of a Flickr-style batch is padding (Flickr8k with MiniLM's tokenizer: 14.3 tokens per caption, the
longest of a random batch of 128 about 28; README, "Scoring speed"). Whatever works per token
(SCAN's word-region logits, a transformer layer) then spends about twice the work it needs. Sorting the rows by length and cutting them into groups whose members are within
`SLACK` of the group's longest bounds that waste to a fraction, and every group is still one
dense, well-shaped tensor: no packing, no custom kernels, the same numbers at the valid tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SLACK = 0.75  # a group takes rows down to 3/4 of its longest: at most a third of its tokens are padding


def extents(mask: torch.Tensor) -> torch.Tensor:
    """One past each row's last valid token (N,) for a (N, T) bool mask: the width that keeps all of it."""
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return (mask.long() * positions).amax(dim=1)


@dataclass(frozen=True)
class LengthGroups:
    """Rows in order of decreasing extent (`order`) cut into consecutive spans (start, stop, width):
    rows `order[start:stop]` all fit in their first `width` tokens."""

    order: torch.Tensor
    spans: list[tuple[int, int, int]]

    def restore(self, values: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """`values` laid out in `order` along `dim`, put back in the rows' own order."""
        return values.index_select(dim, torch.argsort(self.order))


def length_groups(mask: torch.Tensor, max_tokens: int | None = None, slack: float = SLACK) -> LengthGroups:
    """Group the rows of a (N, T) bool mask by length; a group also ends before its rows x width
    passes `max_tokens` (None: no limit), so a caller can keep each group's work within a budget."""
    ext = extents(mask)
    order = torch.argsort(ext, descending=True, stable=True)
    widths = ext[order].tolist()
    spans, start = [], 0
    while start < len(widths):
        width = max(1, widths[start])
        cap = len(widths) if max_tokens is None else start + max(1, max_tokens // width)
        stop = start + 1
        while stop < min(cap, len(widths)) and widths[stop] >= slack * width:
            stop += 1
        spans.append((start, stop, width))
        start = stop
    return LengthGroups(order, spans)
