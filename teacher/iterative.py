"""IMRAM iterative matching (Chen et al., CVPR 2020): several alignment steps per pair.

At step k each query token attends over the other modality's tokens (SCAN's clipped-l2norm
attention), its relevance is the cosine to its attended vector, and the step score pools those
relevances. Between steps a gated memory unit refines every query token from what it attended to,
so later steps look again with a sharpened query. The pair's score is the sum of the step scores.

Refined queries differ per pair, so the attended vectors are materialised here (unlike SCAN's
single step, where the Gram-matrix identity avoids them); blocks keep memory bounded.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from teacher.attention import EPS, attention_weights, pool_relevance


class GatedMemory(nn.Module):
    """IMRAM's memory distillation unit: q' = g * q + (1 - g) * tanh(W_u [q; a]), g = sigmoid(W_g [q; a]).

    The refined query is L2-normalised so the next step's logits are cosines again, like the first.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.gate = nn.Linear(2 * dim, dim)
        self.update = nn.Linear(2 * dim, dim)

    def forward(self, query: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        both = torch.cat([query, attended], dim=-1)
        g = torch.sigmoid(self.gate(both))
        return F.normalize(g * query + (1 - g) * torch.tanh(self.update(both)), dim=-1)


def iterative_scores(queries: torch.Tensor, query_mask: torch.Tensor, context: torch.Tensor,
                     context_mask: torch.Tensor, memory: GatedMemory, steps: int, aggregation: str,
                     lambda_softmax: float, lambda_lse: float) -> torch.Tensor:
    """Sum over `steps` alignment steps of the pooled relevances, for pairs laid out (A, B).

    queries (A|1, B|1, Q, D) with query_mask (A|1, B|1, Q); context (A|1, B|1, K, D) with
    context_mask (A|1, B|1, K). Padded tokens take no part. Returns (A, B).
    """
    query_mask_f = query_mask.unsqueeze(-1).to(queries.dtype)
    q = queries * query_mask_f  # zero logits for padded queries keep them out of the l2 norm
    context = context * context_mask.unsqueeze(-1).to(context.dtype)
    cmask = None if bool(context_mask.all()) else context_mask.unsqueeze(-2)
    total = None
    for step in range(steps):
        logits = torch.matmul(q, context.transpose(-1, -2))  # (A, B, Q, K)
        attended = torch.matmul(attention_weights(logits, cmask, lambda_softmax), context)  # (A, B, Q, D)
        relevance = F.cosine_similarity(q.expand_as(attended), attended, dim=-1, eps=EPS)
        score = pool_relevance(relevance, query_mask.expand(relevance.shape), aggregation, lambda_lse)
        total = score if total is None else total + score
        if step + 1 < steps:
            q = memory(q.expand_as(attended), attended) * query_mask_f
    return total
