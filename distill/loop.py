"""The one training loop: teacher fit and student distillation differ only in model and objective.

Per step: forward the batch, ask the objective for its named terms (with the teacher's scores of
the batch when distilling), stop on a non-finite loss naming the term, step AdamW under a warm-up +
cosine schedule, log every term. Per epoch: optional validation, a checkpoint (weights, objective,
optimiser and scheduler state), and pruning of old checkpoints. The selected epoch's weights
become `model.safetensors`.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from core.checkpoint import save_torch_state, save_weights
from core.config import TrainConfig
from core.data.images import ImagePreprocess
from core.data.loading import Batch, pair_loader
from core.data.records import CaptionSplit
from core.io import write_json
from core.progress import progress as bar
from core.seeding import seed_everything
from core.towers.frozen import NOT_FROZEN, Frozen
from distill.losses import Objective

log = logging.getLogger("itr_distill")
TeacherScores = Callable[[Batch], torch.Tensor]
Evaluate = Callable[[nn.Module], dict]


@dataclass
class FitResult:
    weights: Path
    selected_epoch: int
    history: list[dict] = field(default_factory=list)

    @property
    def selected_metrics(self) -> dict:
        return next((h.get("val", {}) for h in self.history if h["epoch"] == self.selected_epoch), {})


def _param_groups(model: nn.Module, objective: Objective, settings: TrainConfig,
                  lr_scales: dict[str, float]) -> list[dict]:
    """AdamW groups: per-tower learning-rate scales; no weight decay on biases, norms, scales."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    named = [(f"model.{n}", p) for n, p in model.named_parameters()] + \
            [(f"objective.{n}", p) for n, p in objective.named_parameters()]
    for name, p in named:
        if not p.requires_grad:
            continue
        scale = next((s for prefix, s in lr_scales.items() if name.startswith(f"model.{prefix}.")), 1.0)
        groups.setdefault((scale, p.ndim >= 2), []).append(p)
    return [{"params": ps, "lr": settings.lr * scale, "weight_decay": settings.weight_decay if decay else 0.0}
            for (scale, decay), ps in groups.items()]


def _schedule(settings: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = (step - settings.warmup_steps) / max(1, total_steps - settings.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def fit(model: nn.Module, objective: Objective, train_split: CaptionSplit, preprocess: ImagePreprocess | None,
        settings: TrainConfig, out_dir: str | Path, seed: int, device: torch.device,
        lr_scales: dict[str, float] | None = None, teacher_scores: TeacherScores | None = None,
        evaluate: Evaluate | None = None, desc: str = "train", progress: bool = True,
        frozen: Frozen = NOT_FROZEN) -> FitResult:
    """Train `model` on caption-level pairs of `train_split`; write checkpoints under `out_dir`.

    `frozen` holds cached outputs of frozen towers for `train_split` (see core.towers.frozen):
    their inputs are then neither loaded nor run through the tower.
    """
    out_dir = Path(out_dir)
    if objective.needs_teacher and teacher_scores is None:
        raise ValueError("the objective has a distillation term but no teacher scores were given")
    generator = seed_everything(seed)
    model.to(device)
    objective.to(device)
    loader = pair_loader(train_split, preprocess, model.tokenize, settings.batch_size, generator=generator,
                         batching=settings.batching, group_size=settings.group_size, seed=seed,
                         load_images=frozen[0] is None)
    if len(loader) == 0:
        raise ValueError(f"{train_split.source}: {train_split.n_captions} captions give no full batch of {settings.batch_size}")
    optimizer = torch.optim.AdamW(_param_groups(model, objective, settings, lr_scales or {}))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings, settings.epochs * len(loader)))
    out_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict] = []
    best_epoch, best_rsum = settings.epochs, -math.inf
    with open(out_dir / "train_log.jsonl", "w", encoding="utf-8") as log_file:
        for epoch in range(1, settings.epochs + 1):
            started = time.perf_counter()
            losses = _train_epoch(model, objective, loader, optimizer, scheduler, settings, epoch, device, frozen,
                                  teacher_scores, log_file, f"{desc} epoch {epoch}/{settings.epochs}", progress,
                                  out_dir / "checkpoints")
            record = {"epoch": epoch, "steps": scheduler.last_epoch, "seconds": round(time.perf_counter() - started, 2),
                      "loss": losses}
            if evaluate is not None and settings.eval_every and epoch % settings.eval_every == 0:
                record["val"] = evaluate(model)
                if settings.select == "best_val" and record["val"]["rsum"] > best_rsum:
                    best_rsum, best_epoch = record["val"]["rsum"], epoch
            history.append(record)
            log_file.write(json.dumps({"epoch_end": epoch, **record}) + "\n")
            log_file.flush()
            _log_epoch(desc, settings.epochs, record)
            _save_epoch(out_dir / "checkpoints" / f"epoch_{epoch:03d}", model, objective, optimizer, scheduler, record)
            _prune(out_dir / "checkpoints", keep={epoch, best_epoch}, keep_last=settings.keep_checkpoints)
    if settings.select == "last":
        best_epoch = settings.epochs
    weights = out_dir / "model.safetensors"
    shutil.copyfile(out_dir / "checkpoints" / f"epoch_{best_epoch:03d}" / "model.safetensors", weights)
    write_json(out_dir / "training.json", {"selected_epoch": best_epoch, "select": settings.select, "history": history})
    return FitResult(weights, best_epoch, history)


def _train_epoch(model: nn.Module, objective: Objective, loader, optimizer: torch.optim.Optimizer, scheduler,
                 settings: TrainConfig, epoch: int, device: torch.device, frozen: Frozen,
                 teacher_scores: TeacherScores | None, log_file, desc: str, progress: bool,
                 checkpoints: Path) -> dict[str, float]:
    """One pass over the loader; returns the epoch's mean of every loss term (and the total)."""
    objective.set_epoch(epoch)
    model.train()
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    sums: dict[str, float] = {}
    steps = bar(loader, desc, progress)
    for batch in steps:
        if frozen[0] is not None:
            batch.image_features = frozen[0].take(batch.image_index)
        if frozen[1] is not None:
            batch.text_features = frozen[1].take(batch.caption_index)
        batch = batch.to(device)
        out = model(batch)
        t_sims = teacher_scores(batch).to(device) if objective.needs_teacher else None
        total, parts = objective(out, batch, t_sims)
        if not torch.isfinite(total):
            bad = [n for n, v in parts.items() if not math.isfinite(v)] or ["total"]
            raise FloatingPointError(f"{desc}: non-finite loss in term(s) {bad} at epoch {epoch}, step "
                                     f"{scheduler.last_epoch}; last good checkpoint: {checkpoints}")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
        optimizer.step()
        scheduler.step()
        parts["total"] = float(total.detach())
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        log_file.write(json.dumps({"step": scheduler.last_epoch, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                                   **parts}) + "\n")
        steps.set_postfix(loss=f"{parts['total']:.3f}")
    return {k: v / len(loader) for k, v in sums.items()}


def _log_epoch(desc: str, epochs: int, record: dict) -> None:
    terms = ", ".join(f"{k} {v:.3f}" for k, v in record["loss"].items() if k != "total")
    val = f", val rsum {record['val']['rsum']:.1f}" if "val" in record else ""
    log.info("%s epoch %d/%d: loss %.3f (%s)%s, %.0f s", desc, record["epoch"], epochs, record["loss"]["total"],
             terms, val, record["seconds"])


def _save_epoch(path: Path, model: nn.Module, objective: Objective, optimizer: torch.optim.Optimizer,
                scheduler, record: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    save_weights(model, path / "model.safetensors")
    save_weights(objective, path / "objective.safetensors")
    save_torch_state({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, path / "optimizer.pt")
    write_json(path / "state.json", record)


def _prune(root: Path, keep: set[int], keep_last: int) -> None:
    epochs = sorted(int(p.name.split("_")[1]) for p in root.glob("epoch_*"))
    keep = keep | set(epochs[-keep_last:] if keep_last > 0 else [])
    for epoch in epochs:
        if epoch not in keep:
            shutil.rmtree(root / f"epoch_{epoch:03d}")
