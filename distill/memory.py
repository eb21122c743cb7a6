"""What the student's losses see beyond the batch: a momentum encoder, FIFO queues of its past
embeddings (MoCo / USER) and per-item embedding banks for the cached top-K candidates. The same
keys also move the student's own MEMBER memory banks (`student.enhance.CrossModalMemory`, or
`TokenMemory` at the token level, fed the keys' valid pre-fusion tokens).

Queued and banked vectors carry no gradient; they enlarge the pools of negatives and of
distillation targets at the cost of a momentum forward per step (none with coefficient 0, where the
student's own detached outputs are queued).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


class FifoQueue:
    """A ring buffer of `size` rows: a float vector and integer ids per row; the oldest rows leave first."""

    def __init__(self, size: int, dim: int, n_ids: int, device: torch.device | str = "cpu"):
        self.vectors = torch.zeros(size, dim, device=device)
        self.ids = torch.full((size, n_ids), -1, dtype=torch.long, device=device)
        self.size, self.count, self.head = size, 0, 0

    def push(self, vectors: torch.Tensor, ids: torch.Tensor) -> None:
        """Append rows (the newest last); when full, the oldest are overwritten. More rows than the
        queue holds keep only the newest `size`."""
        vectors, ids = vectors.detach()[-self.size:], ids.reshape(len(vectors), -1)[-self.size:]
        n = len(vectors)
        slots = (self.head + torch.arange(n, device=self.vectors.device)) % self.size
        self.vectors[slots] = vectors.to(self.vectors.dtype)
        self.ids[slots] = ids.to(self.ids.device)
        self.head = (self.head + n) % self.size
        self.count = min(self.size, self.count + n)

    def state_dict(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}vectors": self.vectors, f"{prefix}ids": self.ids,
                f"{prefix}position": torch.tensor([self.head, self.count])}

    def load_state_dict(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        self.vectors.copy_(state[f"{prefix}vectors"])
        self.ids.copy_(state[f"{prefix}ids"])
        self.head, self.count = (int(x) for x in state[f"{prefix}position"])

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors, ids) of the rows held, oldest first."""
        order = (self.head - self.count + torch.arange(self.count, device=self.vectors.device)) % self.size
        return self.vectors[order], self.ids[order]


@dataclass
class Queued:
    """Past pairs and tokens, as the loss terms read them (ids are positions in the training split)."""

    img_emb: torch.Tensor  # (Q, D) images of past pairs
    txt_emb: torch.Tensor  # (Q, D) captions of past pairs
    image_index: torch.Tensor  # (Q,) each past pair's image
    caption_index: torch.Tensor  # (Q,) each past pair's caption
    img_tokens: torch.Tensor  # (N, D) past valid image tokens
    img_token_image: torch.Tensor  # (N,) the image each came from
    txt_tokens: torch.Tensor  # (M, D) past valid word tokens
    txt_token_image: torch.Tensor  # (M,) the image of the caption each came from


class PairQueues:
    """FIFO queues of past pairs' global embeddings and of their valid local tokens."""

    def __init__(self, size: int, token_size: int, dim: int, token_dim: int, device: torch.device | str = "cpu"):
        self.images, self.captions = FifoQueue(size, dim, 2, device), FifoQueue(size, dim, 2, device)
        self.img_tokens = FifoQueue(token_size, token_dim, 1, device) if token_size else None
        self.txt_tokens = FifoQueue(token_size, token_dim, 1, device) if token_size else None

    def fifos(self) -> dict[str, FifoQueue]:
        named = {"images": self.images, "captions": self.captions, "img_tokens": self.img_tokens,
                 "txt_tokens": self.txt_tokens}
        return {name: q for name, q in named.items() if q is not None}

    def view(self) -> Queued:
        img, ids = self.images.contents()
        txt, _ = self.captions.contents()
        empty = (img[:0], ids[:0, 0])
        img_tok, img_tok_ids = self.img_tokens.contents() if self.img_tokens else empty
        txt_tok, txt_tok_ids = self.txt_tokens.contents() if self.txt_tokens else empty
        return Queued(img, txt, ids[:, 0], ids[:, 1], img_tok, img_tok_ids.reshape(-1), txt_tok, txt_tok_ids.reshape(-1))

    def push(self, keys: dict[str, torch.Tensor], image_index: torch.Tensor, caption_index: torch.Tensor) -> None:
        """Enqueue a batch's momentum outputs (after the losses of the step have read the queues)."""
        pair_ids = torch.stack([image_index, caption_index], dim=1)
        self.images.push(keys["img_emb"], pair_ids)
        self.captions.push(keys["txt_emb"], pair_ids)
        for queue, side in ((self.img_tokens, "img"), (self.txt_tokens, "txt")):
            if queue is not None:
                mask = keys[f"{side}_local_mask"]
                owner = image_index[:, None].expand_as(mask)[mask]
                queue.push(keys[f"{side}_local"][mask], owner)


class MomentumEncoder:
    """An exponential moving average of the student's weights (buffers copied), run without gradient."""

    def __init__(self, model: nn.Module, coefficient: float):
        self.coefficient = coefficient
        self.model = copy.deepcopy(model) if coefficient > 0 else None
        if self.model is not None:
            for p in self.model.parameters():
                p.requires_grad_(False)

    @torch.no_grad()
    def keys(self, batch, online: dict[str, torch.Tensor], training: bool) -> dict[str, torch.Tensor]:
        """The momentum model's outputs for `batch` (the online outputs, detached, at coefficient 0),
        run in the online model's mode (`training`): dropout draws then do not depend on the mode the
        copy happened to be made in, so a resumed run draws what the uninterrupted one drew."""
        if self.model is None:
            return {k: v.detach() for k, v in online.items()}
        self.model.train(training)
        return self.model(batch)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self.model is None:
            return
        for p_m, p in zip(self.model.parameters(), model.parameters(), strict=True):
            if p.requires_grad:  # frozen towers stay equal
                p_m.mul_(self.coefficient).add_(p.detach(), alpha=1 - self.coefficient)
        for b_m, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_m.copy_(b)


class EmbeddingBank:
    """The latest momentum embedding of every training image and caption, looked up by split position;
    filled by one pass over the split before training and refreshed by every batch."""

    def __init__(self, images: torch.Tensor, captions: torch.Tensor):
        self.images, self.captions = images, captions

    def push(self, keys: dict[str, torch.Tensor], image_index: torch.Tensor, caption_index: torch.Tensor) -> None:
        self.images[image_index] = keys["img_emb"].detach().to(self.images.dtype)
        self.captions[caption_index] = keys["txt_emb"].detach().to(self.captions.dtype)


class Memory:
    """The momentum encoder with the queues and the bank it feeds (and, with `memory_banks`, the
    student's MEMBER banks); updated after every optimiser step."""

    def __init__(self, momentum: MomentumEncoder, queues: PairQueues | None, bank: EmbeddingBank | None,
                 memory_banks: bool = False):
        self.momentum, self.queues, self.bank, self.memory_banks = momentum, queues, bank, memory_banks

    def keys(self, batch, online: dict[str, torch.Tensor], training: bool) -> dict[str, torch.Tensor]:
        return self.momentum.keys(batch, online, training)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything the memory has accumulated (momentum weights, queues, bank), for an exact resume."""
        state = {}
        if self.momentum.model is not None:
            state.update({f"momentum.{k}": v for k, v in self.momentum.model.state_dict().items()})
        for name, queue in (self.queues.fifos() if self.queues is not None else {}).items():
            state.update(queue.state_dict(f"queues.{name}."))
        if self.bank is not None:
            state.update({"bank.images": self.bank.images, "bank.captions": self.bank.captions})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Put back a `state_dict()` of a memory built the same way; a key set that differs is refused."""
        missing = sorted(set(self.state_dict()) ^ set(state))
        if missing:
            raise KeyError(f"memory state does not fit this run (keys differ: {missing[:3]})")
        if self.momentum.model is not None:
            prefix = "momentum."
            self.momentum.model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        for name, queue in (self.queues.fifos() if self.queues is not None else {}).items():
            queue.load_state_dict(state, f"queues.{name}.")
        if self.bank is not None:
            self.bank.images.copy_(state["bank.images"])
            self.bank.captions.copy_(state["bank.captions"])

    def queued(self) -> Queued | None:
        return self.queues.view() if self.queues is not None else None

    def update(self, model: nn.Module, keys: dict[str, torch.Tensor], image_index: torch.Tensor,
               caption_index: torch.Tensor) -> None:
        if self.memory_banks:  # before the momentum update, which copies the banks into the momentum copy
            model.update_memory(keys)
        self.momentum.update(model)
        for store in (self.queues, self.bank):
            if store is not None:
                store.push(keys, image_index, caption_index)
