"""`itr-distill bench input`: which bounds training here, the input pipeline or the model step.

A GPU waits whenever the batches come slower than it consumes them, and nothing in a training log
says so. This times the two halves apart, on the config's train split and training settings:

  input pipeline  the training DataLoader alone (no model), images (pairs) delivered per second, for
                  each worker count and each way of feeding it: per-caption decoding (the default:
                  an image decoded and resized once per caption, five times an epoch), the
                  image-level sampler (each image decoded once an epoch), the uint8 image cache
                  (decoded once ever), optionally JPEG draft decoding; every pipeline delivers the
                  uint8 crops, copied to the device as training copies them
  model step      forward, backward and AdamW step of the configured student on one batch already
                  on the device (the contrastive objective: the towers dominate a step's cost),
                  including the image tower's normalisation of the uint8 crops (timed apart too)

Training runs at about the smaller of the two rates; the larger one is idle capacity. The uint8
cache's build time is reported (it is paid once per split and preprocessing, then reused).
"""
from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.config import TrainConfig
from core.data.image_cache import CachedImages, image_cache
from core.data.images import ImagePreprocess
from core.data.loading import Batch, Tokenize, training_loader
from core.data.records import CaptionSplit
from core.io import write_json, write_text
from core.machine import describe, machine_info
from core.precision import autocast
from core.timing import time_calls
from core.towers.image import normalise_crops

CPU = torch.device("cpu")

@dataclass(frozen=True)
class Pipeline:
    """One way of feeding training (the `train.*` settings it sets), and what it means per epoch."""

    name: str
    sampling: str
    image_cache: str
    jpeg_draft: bool
    what: str


PIPELINES = (
    Pipeline("per-caption decode", "caption", "none", False,
             "the default: each caption's image decoded, resized and cropped (five times per image per epoch)"),
    Pipeline("image-level sampler", "image", "none", False,
             "`train.sampling: image`: every image once per epoch with one of its captions, decoded once"),
    Pipeline("uint8 cache", "caption", "uint8", False,
             "`train.image_cache: uint8`: crops read from run_dir/images/ (decoded once ever)"),
)
DRAFT = Pipeline("per-caption decode, JPEG draft", "caption", "none", True,
                 "`train.jpeg_draft: true`: JPEGs decoded at a reduced scale no smaller than the resize")


def _forever(loader) -> Iterator[Batch]:
    """The loader's batches, epoch after epoch (a small split's image-level epoch is a few batches)."""
    while True:
        yield from loader


WINDOW = 5  # batches per timed window: the rate reported is the median window's


def time_loader(loader, batches: int, warmup: int, device: torch.device = CPU) -> dict[str, float]:
    """Images per second over `batches` batches after `warmup` (at least the workers' prefetched
    batches, so the steady rate is timed, not a full buffer), each copied to `device` as training
    does (non-blocking from pinned memory on CUDA); `startup_s`: until the first batch.

    `images_per_s` is the median over windows of WINDOW batches, so that another process taking the
    cores for a moment moves it less than the overall mean (`overall_images_per_s`)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    started = time.perf_counter()
    stream = (batch.to(device, non_blocking=True) for batch in _forever(loader))
    next(stream)
    startup = time.perf_counter() - started
    for _ in range(max(0, warmup - 1)):
        next(stream)
    sync()
    stamps, sizes = [time.perf_counter()], []
    for _ in range(batches):
        sizes.append(len(next(stream)))
        sync()
        stamps.append(time.perf_counter())
    seconds = stamps[-1] - stamps[0]
    windows = [sum(sizes[i:i + WINDOW]) / (stamps[min(i + WINDOW, batches)] - stamps[i])
               for i in range(0, batches - WINDOW + 1, WINDOW)] or [sum(sizes) / seconds]
    rate = float(np.median(windows))
    return {"images_per_s": rate, "ms_per_batch": 1000 * sizes[0] / rate, "overall_images_per_s": sum(sizes) / seconds,
            "window_images_per_s": windows, "batches": batches, "images": sum(sizes), "seconds": seconds,
            "startup_s": startup}


def time_model_step(model: nn.Module, objective: nn.Module, batch: Batch, device: torch.device, steps: int,
                    bf16: bool = True) -> dict[str, Any]:
    """Forward, backward and AdamW step on one batch already on `device` (bf16 autocast on CUDA, as
    training runs). `objective(outputs, batch)` returns (total, parts), as `distill.terms.Objective`."""
    model.to(device).train()
    objective.to(device)
    trainable = [p for p in [*model.parameters(), *objective.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-6)
    batch = batch.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    def step(_: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, bf16):
            total, _parts = objective(model(batch), batch)
        total.backward()
        optimizer.step()

    stats = time_calls(step, 1, steps, sync)
    normalise = None
    if batch.images is not None and batch.images.dtype == torch.uint8:
        table = model.image_tower.pixel_table
        normalise = time_calls(lambda _: normalise_crops(batch.images, table), 1, max(steps, 5), sync)["p50_ms"]
    return {"images_per_s": len(batch) / (stats["p50_ms"] / 1000), "ms_per_step": stats["p50_ms"], "batch": len(batch),
            "normalise_ms": normalise,
            "steps": steps, "device": str(device), "trainable_params": sum(p.numel() for p in trainable),
            "image_tower_trains": any(p.requires_grad for p in model.image_tower.parameters()),
            "text_tower_trains": any(p.requires_grad for p in model.text_tower.parameters()), **stats}


def _epoch(split: CaptionSplit, pipeline: Pipeline, batch_size: int) -> dict[str, int]:
    """Steps and image decodes of one epoch under `pipeline` (the uint8 cache decodes nothing once built)."""
    items = split.n_images if pipeline.sampling == "image" else split.n_captions
    return {"epoch_steps": items // batch_size, "epoch_decodes": 0 if pipeline.image_cache == "uint8" else items}


def run_input_bench(split: CaptionSplit, preprocess: ImagePreprocess, tokenize: Tokenize, settings: TrainConfig,
                    cache_root: Path, workers: list[int], batches: int, model: nn.Module | None = None,
                    objective: nn.Module | None = None, device: torch.device = CPU, steps: int = 3,
                    draft: bool = False, seed: int = 0, rounds: int = 3) -> dict[str, Any]:
    """Time every pipeline with every worker count, `rounds` times in turn (and the model step when a
    model is given)."""
    pipelines = [*PIPELINES, *([DRAFT] if draft else [])]
    cache: CachedImages | None = None
    result: dict[str, Any] = {"machine": machine_info(), "split": {
        "name": split.name, "source": split.source, "images": split.n_images, "captions": split.n_captions,
        "captions_per_image": split.captions_per_image}}
    if any(p.image_cache == "uint8" for p in pipelines):
        cache = image_cache(split, preprocess, cache_root, workers=max(workers))
        result["cache"] = {"directory": str(cache.directory), "build_s": cache.build_s, "build_workers": max(workers),
                           "gib": cache.pixels.nbytes / 2**30}
    timings: dict[tuple[Pipeline, int], list[dict[str, Any]]] = {}
    for r in range(rounds):  # rounds interleave the settings: another process's burst falls on one round of each
        for pipeline in pipelines:
            for n in workers:
                run = replace(settings, sampling=pipeline.sampling, image_cache=pipeline.image_cache,
                              jpeg_draft=pipeline.jpeg_draft, num_workers=n)
                # the in-memory cache of a small split's crops (no workers) is off: it would serve the timed
                # batches' repeats of an image, which a long training would not see as often
                loader = training_loader(split, preprocess, tokenize, run, seed + r, torch.Generator().manual_seed(seed + r),
                                         device, cached=cache if pipeline.image_cache == "uint8" else None,
                                         memory_cache=False)
                timings.setdefault((pipeline, n), []).append(
                    time_loader(loader, batches, max(1, n * run.prefetch_factor), device))
                del loader
                gc.collect()  # the persistent workers go before the next setting starts its own
    rows = []
    for (pipeline, n), runs in timings.items():
        windows = [w for t in runs for w in t["window_images_per_s"]]
        rate, batch = float(np.median(windows)), settings.batch_size
        epoch = _epoch(split, pipeline, batch)
        rows.append({"pipeline": pipeline.name, "workers": n, "images_per_s": rate, "ms_per_batch": 1000 * batch / rate,
                     "overall_images_per_s": sum(t["images"] for t in runs) / sum(t["seconds"] for t in runs),
                     "window_images_per_s": windows, "startup_s": float(np.median([t["startup_s"] for t in runs])),
                     "batches": sum(t["batches"] for t in runs), **epoch,
                     "input_s_per_epoch": epoch["epoch_steps"] * batch / rate})
    result["rows"] = rows
    result["pipelines"] = {p.name: p.what for p in pipelines}
    result["settings"] = {"batch_size": settings.batch_size, "batching": settings.batching, "batches": batches,
                          "rounds": rounds,
                          "workers": workers, "prefetch_factor": settings.prefetch_factor,
                          "preprocess": preprocess.to_dict(), "device": str(device)}
    if model is not None and objective is not None:
        batch = next(iter(training_loader(split, preprocess, tokenize, replace(settings, num_workers=0), seed,
                                          torch.Generator().manual_seed(seed), CPU, cached=cache)))
        result["model_step"] = time_model_step(model, objective, batch, device, steps, settings.bf16)
    result["speedups"], result["speedups_vs_default"] = _speedups(rows)
    return result


def _speedups(rows: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Each pipeline against per-caption decoding with the same workers, and every setting against
    the pipeline before workers existed (per-caption decoding in the training process)."""
    base = {r["workers"]: r["images_per_s"] for r in rows if r["pipeline"] == PIPELINES[0].name}
    same = {f"{r['pipeline']}, {r['workers']} workers": r["images_per_s"] / base[r["workers"]]
            for r in rows if r["pipeline"] != PIPELINES[0].name and r["workers"] in base}
    default = {f"{r['pipeline']}, {r['workers']} workers": r["images_per_s"] / base[0]
               for r in rows if 0 in base and (r["pipeline"], r["workers"]) != (PIPELINES[0].name, 0)}
    return same, default


def to_markdown(result: dict[str, Any], command: str = "") -> str:
    s, split = result["settings"], result["split"]
    pre = s["preprocess"]
    lines = ["# Input pipeline against the model step", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += [f"Train split `{split['name']}` ({split['images']:,} images, {split['captions']:,} captions); batches of "
              f"{s['batch_size']} ({s['batching']} batching), {pre['size']} px crops of a {pre['resize']} px resize; "
              f"{s['batches']} batches timed per setting after the workers' prefetched ones, in {s['rounds']} rounds "
              f"that take the settings in turn (images/s: the median of every round's windows of {WINDOW} batches; "
              f"ms per batch from it).", ""]
    if "cache" in result:
        c = result["cache"]
        built = (f"built in {c['build_s']:.1f} s with {c['build_workers']} workers (once per split and preprocessing)"
                 if c["build_s"] is not None else "found built (run again after removing it to time the build)")
        lines += [f"uint8 cache: {c['gib']:.2f} GiB, {built}.", ""]
    lines += ["| input pipeline | workers | images/s | ms per batch | first batch s | steps per epoch | "
              "decodes per epoch | input s per epoch |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['pipeline']} | {r['workers']} | {r['images_per_s']:,.0f} | {r['ms_per_batch']:,.0f} | "
              f"{r['startup_s']:.1f} | {r['epoch_steps']:,} | {r['epoch_decodes']:,} | {r['input_s_per_epoch']:,.1f} |"
              for r in result["rows"]]
    lines.append("")
    if "model_step" in result:
        m = result["model_step"]
        towers = ", ".join(n for n, on in (("image tower", m["image_tower_trains"]), ("text tower", m["text_tower_trains"]))
                           if on) or "no tower"
        lines += [f"Model step (forward + backward + AdamW on a batch of {m['batch']} already on `{m['device']}`, "
                  f"{towers} training, {m['trainable_params']:,} trainable parameters): **{m['images_per_s']:,.1f} "
                  f"images/s** ({m['ms_per_step']:,.0f} ms per step, median of {m['steps']}"
                  + (f"; of it, {m['normalise_ms']:,.1f} ms normalising the uint8 crops on the device"
                     if m.get("normalise_ms") is not None else "") + ").", ""]
        for r in result["rows"]:
            bound = "input pipeline" if r["images_per_s"] < m["images_per_s"] else "model step"
            lines.append(f"- {r['pipeline']}, {r['workers']} workers: training bounded by the **{bound}** "
                         f"({r['images_per_s']:,.0f} vs {m['images_per_s']:,.1f} images/s)")
        lines.append("")
    if result["speedups"]:
        lines += ["Against per-caption decoding with the same workers: " +
                  "; ".join(f"{k} {v:.1f}x" for k, v in result["speedups"].items()) + ".", ""]
    if result.get("speedups_vs_default"):
        lines += ["Against per-caption decoding without workers (the pipeline before workers): " +
                  "; ".join(f"{k} {v:.1f}x" for k, v in result["speedups_vs_default"].items()) + ".", ""]
    lines += [f"- {name}: {what}" for name, what in result["pipelines"].items()]
    lines += ["", f"Machine: {describe(result['machine'])}.", ""]
    return "\n".join(lines)


def write_results(result: dict[str, Any], out: Path, command: str = "") -> str:
    """`input_bench.json` and `input_bench.md` under `out`; returns the Markdown."""
    text = to_markdown(result, command)
    write_json(Path(out) / "input_bench.json", {**result, "command": command})
    write_text(Path(out) / "input_bench.md", text)
    return text


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="itr-distill bench input", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="YAML config (its train split, student and student.train settings)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set student.image_tower.freeze=false (repeatable)")
    ap.add_argument("--run-dir", help="run directory (its images/ keeps the uint8 cache; default: the config's)")
    ap.add_argument("--batches", type=int, default=20, help="batches timed per setting and round (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over every setting (default 3)")
    ap.add_argument("--workers", type=int, nargs="+", help="DataLoader worker counts (default: 0 and train.num_workers)")
    ap.add_argument("--steps", type=int, default=3, help="model steps timed (median; 0: no model step)")
    ap.add_argument("--draft", action="store_true", help="also time per-caption decoding with JPEG draft decoding")
    ap.add_argument("--out", default="bench/input", help="directory for input_bench.json and input_bench.md")
    return ap
