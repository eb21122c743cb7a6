"""SelfAlign's self-supervised fine-grained alignment losses (training only).

Both act on the student's projected, L2-normalised local tokens (image grid tokens or regions,
caption words) and leave the exported dual encoder untouched:
- context level: a pair's global vector of one modality must pick out the other modality's local
  tokens of its own pair against those of other pairs (and of queued past pairs);
- concept level: tokens of one modality are softly assigned to learnable prototypes by
  Sinkhorn-Knopp (equal use of every prototype, so the codes cannot collapse); each token of the
  other modality must predict the code of its best-matching token in its own pair.
Padded tokens (mask False) take part nowhere: not in the negatives, the assignments, the matches
or the means.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def context_alignment(global_vec: torch.Tensor, local: torch.Tensor, local_mask: torch.Tensor,
                      image_index: torch.Tensor, temperature: float, queued: torch.Tensor | None = None,
                      queued_image_index: torch.Tensor | None = None) -> torch.Tensor:
    """One direction: InfoNCE between each pair's global vector (B, D) and each valid local token
    (B, T, D) of its own pair; negatives are the valid local tokens of every other pair in the batch
    and the queued tokens (N, D), pairs of the same image excluded."""
    u = torch.einsum("ad,btd->abt", global_vec, local) / temperature  # (B, B, T)
    eye = torch.eye(len(global_vec), dtype=torch.bool, device=u.device)
    same = image_index[:, None] == image_index[None, :]
    negative = (~same)[:, :, None] & local_mask[None, :, :]
    neg = u.masked_fill(~negative, float("-inf")).flatten(1)
    if queued is not None and len(queued):
        q = (global_vec @ queued.T / temperature).masked_fill(image_index[:, None] == queued_image_index[None, :],
                                                               float("-inf"))
        neg = torch.cat([neg, q], dim=1)
    neg_lse = neg.logsumexp(dim=1)  # (B,)
    positive = u[eye]  # (B, T): own tokens
    loss = torch.logaddexp(positive, neg_lse[:, None]) - positive
    valid = local_mask.to(loss.dtype)
    return (loss * valid).sum() / valid.sum()


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Soft assignments (N, K) of N items to K prototypes from their scores (N, K): the entropic
    optimal transport plan with uniform marginals (every prototype receives N/K of the mass),
    rescaled so each item's row sums to 1 (SwAV's Sinkhorn-Knopp)."""
    q = torch.exp((scores.float() - scores.float().max()) / epsilon).T  # (K, N)
    q /= q.sum()
    k, n = q.shape
    for _ in range(iterations):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * n
    return (q * n).T


def _best_match(queries: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
    """(B, Tq) index of each query token's most similar valid context token of the same pair."""
    sims = torch.einsum("bqd,bcd->bqc", queries, context).masked_fill(~context_mask[:, None, :], float("-inf"))
    return sims.argmax(dim=2)


def concept_alignment(queries: torch.Tensor, query_mask: torch.Tensor, context: torch.Tensor,
                      context_mask: torch.Tensor, prototypes: torch.Tensor, temperature: float, epsilon: float,
                      iterations: int) -> torch.Tensor:
    """One direction: the valid context tokens (B, C, D) of the batch are assigned to the prototypes
    (K, D) by Sinkhorn-Knopp; each valid query token (B, Q, D) predicts, by a softmax over its
    prototype similarities, the assignment of its best-matching context token of the same pair.
    Mean cross-entropy over valid query tokens."""
    protos = F.normalize(prototypes, dim=-1)
    codes = torch.zeros(*context.shape[:2], len(protos), device=context.device, dtype=torch.float32)
    codes[context_mask] = sinkhorn(context[context_mask].detach() @ protos.detach().T, epsilon, iterations)
    match = _best_match(queries.detach(), context.detach(), context_mask)
    targets = torch.gather(codes, 1, match[:, :, None].expand(-1, -1, codes.shape[-1]))  # (B, Q, K)
    log_p = torch.log_softmax(queries @ protos.T / temperature, dim=-1)
    ce = -(targets * log_p).sum(-1)
    valid = query_mask.to(ce.dtype)
    return (ce * valid).sum() / valid.sum()
