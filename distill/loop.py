"""The one training loop: teacher fit and student distillation differ only in model and objective.

Per step: forward the batch (bf16 autocast on CUDA), gather the outputs of every torchrun rank
so that the losses see the global batch, ask the objective for its named terms (with the teacher's
scores, the queues, the bank and the cached lists of the `StepContext`), stop on a non-finite loss
naming the term, average the gradients over the ranks, step AdamW under a warm-up + cosine
schedule, update the momentum encoder, queues and bank (and the student's memory banks), log every
term. Per epoch: optional validation, a checkpoint (see distill.checkpoints: everything an exact
resume needs), and pruning of old checkpoints. The selected epoch's weights become `model.safetensors`. Under torchrun every rank
holds the same weights; rank 0 alone validates and writes.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from core.config import TrainConfig
from core.data.image_cache import CachedImages, image_cache
from core.data.images import ImagePreprocess
from core.data.loading import Batch, lexical_rng, training_loader
from core.data.records import CaptionSplit
from core.distributed import Ranks, average_gradients, gather_rows
from core.io import atomic_path, write_json, write_text
from core.precision import autocast
from core.progress import progress as bar
from core.run_layout import ModelDir
from core.seeding import restore_rng, rng_state, seed_everything
from core.towers.frozen import NOT_FROZEN, Frozen
from distill import checkpoints
from distill.memory import Memory
from distill.terms import Objective, StepContext

log = logging.getLogger("itr_distill")
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


@dataclass(frozen=True)
class Recipe:
    """What the model is trained toward: the objective's terms, what they read besides the batch
    (`context`: teacher scores, cached lists, the bank), the momentum encoder, queues and bank kept up
    to date (`memory`), and per-tower learning-rate scales ({"image_tower": 0.1} scales the
    parameters under `model.image_tower`)."""

    objective: Objective
    context: StepContext = field(default_factory=StepContext)
    memory: Memory | None = None
    lr_scales: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainData:
    """The caption-level pairs of `split`, images through `preprocess`; `frozen` holds cached outputs
    of frozen towers for `split` (see core.towers.frozen), whose inputs are then neither loaded nor run.
    `image_cache`: where `train.image_cache: uint8` keeps its caches (`RunPaths.images`)."""

    split: CaptionSplit
    preprocess: ImagePreprocess | None
    frozen: Frozen = NOT_FROZEN
    image_cache: Path | None = None


@dataclass(frozen=True)
class RunSpec:
    """Where and how one training run goes: its directory, seed, device and torchrun `ranks`.
    `identity` names the run (the stage key's hash); with `resume`, training continues from the
    latest valid checkpoint of that identity and ends as the run left alone would have."""

    out_dir: Path
    seed: int
    device: torch.device
    ranks: Ranks = Ranks()
    identity: str = ""
    resume: bool = False
    desc: str = "train"
    progress: bool = True


def fit(model: nn.Module, recipe: Recipe, data: TrainData, settings: TrainConfig, run: RunSpec,
        evaluate: Evaluate | None = None) -> FitResult:
    """Train `model` on `data` toward `recipe`; write checkpoints, the step log and the selected
    weights under `run.out_dir`. `settings.batch_size` is the global batch over `run.ranks`;
    `evaluate` (rank 0 only) gives the validation metrics epochs are selected by."""
    objective, ranks = recipe.objective, run.ranks
    if objective.needs_teacher and recipe.context.teacher is None:
        raise ValueError("the objective has a distillation term but no teacher scores were given")
    if settings.batch_size % ranks.world:
        raise ValueError(f"train.batch_size {settings.batch_size} is not divisible by the {ranks.world} torchrun ranks")
    generator = seed_everything(run.seed)
    model.to(run.device)
    objective.to(run.device)
    load_images = data.frozen[0] is None
    loader = training_loader(data.split, data.preprocess, model.tokenize, settings, run.seed, generator, run.device,
                             load_images, (ranks.rank, ranks.world),
                             _image_cache(data, settings, ranks) if load_images else None)
    if len(loader) == 0:
        items = f"{data.split.n_images} images" if settings.sampling == "image" else f"{data.split.n_captions} captions"
        raise ValueError(f"{data.split.source}: {items} give no full batch of {settings.batch_size}")
    optimizer = torch.optim.AdamW(_param_groups(model, objective, settings, recipe.lr_scales))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(settings, settings.epochs * len(loader)))
    step = _Step(model, objective, optimizer, scheduler, settings, run.device, data.frozen, recipe.context,
                 recipe.memory, ranks)
    parts = checkpoints.Trainables(model, objective, optimizer, scheduler, recipe.memory)
    progress_state = _Progress(run.identity)
    files, desc = ModelDir(run.out_dir), run.desc
    root = files.checkpoints
    found = checkpoints.latest(root, run.identity) if run.resume and root.is_dir() else None
    if found:
        progress_state = _resume(found, parts, generator, loader, files.train_log, ranks)
        log.info("%s: resuming after epoch %d from %s", desc, progress_state.epoch, found[0])
    elif root.is_dir() and ranks.is_main:
        log.info("%s: starting over, replacing the checkpoints in %s%s", desc, root,
                 "" if run.resume else " (--resume continues from the latest instead)")
        shutil.rmtree(root)
    ranks.barrier()
    files.root.mkdir(parents=True, exist_ok=True)
    with _log_file(files.train_log, progress_state.epoch > 0, ranks) as log_file:
        for epoch in range(progress_state.epoch + 1, settings.epochs + 1):
            started = time.perf_counter()
            losses = _train_epoch(step, loader, epoch, log_file, f"{desc} epoch {epoch}/{settings.epochs}",
                                  run.progress and ranks.is_main, root)
            record = {"epoch": epoch, "steps": scheduler.last_epoch, "seconds": round(time.perf_counter() - started, 2),
                      "loss": losses}
            progress_state.epoch = epoch
            if ranks.is_main and evaluate is not None and settings.eval_every and epoch % settings.eval_every == 0:
                record["val"] = evaluate(model)
                progress_state.select(settings, record)
            generators = ranks.all_objects(rng_state(generator))  # each rank its own: rank 0 also validated
            if not ranks.is_main:
                continue
            progress_state.history.append(record)
            log_file.write(json.dumps({"epoch_end": epoch, **record}) + "\n")
            log_file.flush()
            _log_epoch(desc, settings.epochs, record)
            state = {**asdict(progress_state), "rng": generators, "lexical": _lexical_state(loader)}
            checkpoints.save(checkpoints.epoch_dir(root, epoch), parts, state)
            checkpoints.prune(root, keep={epoch, progress_state.best_epoch}, keep_last=settings.keep_checkpoints)
    best_epoch = settings.epochs if settings.select == "last" else progress_state.best_epoch or settings.epochs
    weights = files.weights
    if ranks.is_main:
        with atomic_path(weights) as tmp:
            shutil.copyfile(checkpoints.epoch_dir(root, best_epoch) / checkpoints.MODEL, tmp)
        write_json(files.training, {"selected_epoch": best_epoch, "select": settings.select,
                                               "history": progress_state.history})
    ranks.barrier()
    return FitResult(weights, best_epoch, progress_state.history)


def _image_cache(data: TrainData, settings: TrainConfig, ranks: Ranks) -> CachedImages | None:
    """The uint8 image cache `train.image_cache` asks for (None: decode); rank 0 builds a missing one
    (decoding in the training's workers) while the other ranks wait, then every rank reads it."""
    if settings.image_cache != "uint8" or data.split.image_paths is None or data.preprocess is None:
        return None
    if data.image_cache is None:
        raise ValueError("train.image_cache: uint8 needs the run directory's images/ (TrainData.image_cache)")
    args = (data.split, data.preprocess, data.image_cache, settings.jpeg_draft, settings.workers())
    if ranks.is_main:
        image_cache(*args)
    ranks.barrier()
    return image_cache(*args, build=False)


@dataclass
class _Progress:
    """Where a run stands between epochs: what a checkpoint's state.json records besides the generators."""

    identity: str
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0  # 0: no validated epoch yet
    best_rsum: float | None = None

    def select(self, settings: TrainConfig, record: dict) -> None:
        if settings.select == "best_val" and (self.best_rsum is None or record["val"]["rsum"] > self.best_rsum):
            self.best_rsum, self.best_epoch = record["val"]["rsum"], record["epoch"]


def _lexical_state(loader) -> dict | None:
    rng = lexical_rng(loader)
    return None if rng is None else rng.bit_generator.state


def _resume(found: tuple[Path, dict], parts: checkpoints.Trainables, generator: torch.Generator, loader,
            log_path: Path, ranks: Ranks) -> _Progress:
    """Restore a checkpoint, its generators and the data order; cut the step log back to its epoch."""
    path, state = found
    checkpoints.restore(path, parts)
    generators = state["rng"]
    if len(generators) != ranks.world:
        log.warning("%s was written by %d torchrun process(es), this run has %d: every rank takes rank 0's "
                    "random generators, so dropout draws differ from the uninterrupted run", path, len(generators),
                    ranks.world)
    restore_rng(generators[ranks.rank if len(generators) == ranks.world else 0], generator)
    if state["lexical"] is not None:
        lexical_rng(loader).bit_generator.state = state["lexical"]
    progress_state = _Progress(state["identity"], state["epoch"], state["history"], state["best_epoch"], state["best_rsum"])
    if ranks.is_main and log_path.is_file():
        kept = [line for line in log_path.read_text(encoding="utf-8").splitlines(keepends=True)
                if _log_epoch_of(line) <= progress_state.epoch]
        write_text(log_path, "".join(kept))
    return progress_state


def _log_epoch_of(line: str) -> float:
    """The epoch a train_log.jsonl line belongs to (a torn last line belongs to none that is kept)."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        return math.inf
    return entry.get("epoch_end", entry.get("epoch", math.inf))


def _log_file(path: Path, append: bool, ranks: Ranks):
    """The step log, opened on rank 0 only (appended to when resuming)."""
    if not ranks.is_main:
        return contextlib.nullcontext()
    return open(path, "a" if append else "w", encoding="utf-8")


@dataclass
class _Step:
    """Everything one optimisation step touches."""

    model: nn.Module
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    settings: TrainConfig
    device: torch.device
    frozen: Frozen
    context: StepContext
    memory: Memory | None
    ranks: Ranks

    def __call__(self, batch: Batch, desc: str, epoch: int, checkpoint_dir: Path) -> dict[str, float]:
        if self.frozen[0] is not None:
            batch.image_features = self.frozen[0].take(batch.image_index)
        if self.frozen[1] is not None:
            batch.text_features = self.frozen[1].take(batch.caption_index)
        batch = batch.to(self.device, non_blocking=True)  # from pinned memory on CUDA (see training_loader)
        with autocast(self.device, self.settings.bf16):
            whole = Batch(image_index=gather_rows(batch.image_index, self.ranks),
                          caption_index=gather_rows(batch.caption_index, self.ranks))
            out = _forward(self.model, batch, whole, self.ranks)
            keys = _gathered(self.memory.keys(batch, out, self.model.training), self.ranks) if self.memory else None
            ctx = self.context if self.memory is None else replace(self.context, queued=self.memory.queued(),
                                                                    bank=self.memory.bank)
            total, parts = self.objective(out, whole, ctx)
        if not torch.isfinite(total):
            bad = [n for n, v in parts.items() if not math.isfinite(v)] or ["total"]
            raise FloatingPointError(f"{desc}: non-finite loss in term(s) {bad} at epoch {epoch}, step "
                                     f"{self.scheduler.last_epoch}; last good checkpoint: {checkpoint_dir}")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
        average_gradients(trainable, self.ranks)
        if self.settings.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trainable, self.settings.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if self.memory:
            self.memory.update(self.model, keys, whole.image_index, whole.caption_index)
        parts["total"] = float(total.detach())
        return parts


def _forward(model: nn.Module, batch: Batch, whole: Batch, ranks: Ranks) -> dict[str, torch.Tensor]:
    """The model's outputs for the global batch `whole` (this rank's share: `batch`). A model that scores
    pairs across its two sides (the teacher: `encode_batch`, then `score_batch`) is run to its encoded
    sides; these are gathered (each rank's own rows keep their gradient) and scored on the global batch."""
    if ranks.world > 1 and hasattr(model, "score_batch"):
        sides = {k: gather_rows(v, ranks) for k, v in model.encode_batch(batch).items()}
        return model.score_batch(sides, whole.image_index)
    return _gathered(model(batch), ranks)


def _gathered(out: dict[str, torch.Tensor], ranks: Ranks) -> dict[str, torch.Tensor]:
    """Model outputs of the global batch (similarities recomputed from the gathered embeddings)."""
    if ranks.world == 1:
        return out
    whole = {k: gather_rows(v, ranks) for k, v in out.items() if k != "sims"}
    if "sims" in out:
        whole["sims"] = whole["img_emb"] @ whole["txt_emb"].T
    return whole


def _train_epoch(step: _Step, loader, epoch: int, log_file, desc: str, progress: bool,
                 checkpoint_dir: Path) -> dict[str, float]:
    """One pass over the loader; returns the epoch's mean of every loss term (and the total)."""
    step.objective.set_epoch(epoch)
    step.model.train()
    sums: dict[str, float] = {}
    steps = bar(loader, desc, progress)
    for batch in steps:
        parts = step(batch, desc, epoch, checkpoint_dir)
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v
        if log_file is not None:
            log_file.write(json.dumps({"step": step.scheduler.last_epoch, "epoch": epoch,
                                       "lr": step.scheduler.get_last_lr()[0], **parts}) + "\n")
        steps.set_postfix(loss=f"{parts['total']:.3f}")
    return {k: v / len(loader) for k, v in sums.items()}


def _log_epoch(desc: str, epochs: int, record: dict) -> None:
    terms = ", ".join(f"{k} {v:.3f}" for k, v in record["loss"].items() if k != "total")
    val = f", val rsum {record['val']['rsum']:.1f}" if "val" in record else ""
    log.info("%s epoch %d/%d: loss %.3f (%s)%s, %.0f s", desc, record["epoch"], epochs, record["loss"]["total"],
             terms, val, record["seconds"])
