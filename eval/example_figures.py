"""Figures of retrieval examples (from `eval/examples.json`): per query, each system's top-5 with
scores, the ground truth framed in green. Runs without image files (precomputed region features)
show image ids and ranks instead of thumbnails."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from eval.figures import plt, save_figure

THUMB = 1.15  # inches per thumbnail
GREEN, GREY = "#1a9850", "0.75"


def _thumbnail(ax, path: str | None, image: int, score: float | None, truth: bool) -> None:
    """One image cell: the picture (or its id), framed green when it is the ground truth."""
    if path is not None:
        with Image.open(path) as im:
            ax.imshow(ImageOps.fit(im.convert("RGB"), (96, 96)))
    else:
        ax.text(0.5, 0.5, f"image\n{image}", ha="center", va="center", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(GREEN if truth else GREY)
        spine.set_linewidth(4 if truth else 1)
    if score is not None:
        ax.set_title(f"{score:.3f}", fontsize=7, color=GREEN if truth else "0.2", pad=2)


def _label(ax, text: str, width: int = 28) -> None:
    ax.axis("off")
    ax.text(0, 0.5, "\n\n".join(textwrap.fill(part, width) for part in text.split("\n\n")), fontsize=7,
            va="center", ha="left")


def caption_queries(examples: dict[str, Any], queries: list[dict[str, Any]], title: str, path: str | Path) -> Path:
    """Text-to-image: a row per (query, system): the caption and system, then its top-5 images."""
    systems, paths = examples["systems"], examples.get("image_paths", {})
    rows = [(q, s) for q in queries for s in systems]
    fig, axes = plt.subplots(len(rows), 6, figsize=(2.4 + 5 * THUMB, 0.3 + len(rows) * THUMB),
                             gridspec_kw={"width_ratios": [2.1] + [1] * 5}, squeeze=False)
    for (query, system), row in zip(rows, axes, strict=True):
        result = query["results"][system]
        gap = f" (ranks differ by {query['rank_gap']})" if "rank_gap" in query else ""
        head = f'"{query["text"]}"{gap}\n\n' if system == systems[0] else ""
        _label(row[0], f"{head}{system}: ground truth at rank {result['gt_rank'] + 1}")
        for ax, image, score in zip(row[1:], result["ids"], result["scores"], strict=True):
            _thumbnail(ax, paths.get(str(image)), image, score, image in query["ground_truth"])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    save_figure(fig, path, dpi=90)  # 60 thumbnails: the default resolution makes a megabyte file
    return Path(path)


def image_queries(examples: dict[str, Any], path: str | Path) -> Path:
    """Image-to-text: per query image, each system's top-5 captions with scores, ground truth in green."""
    systems, paths = examples["systems"], examples.get("image_paths", {})
    queries = examples["i2t"]
    fig, axes = plt.subplots(len(queries), 1 + len(systems), figsize=(1.6 + 3.2 * len(systems), 0.4 + 1.9 * len(queries)),
                             gridspec_kw={"width_ratios": [1] + [2.6] * len(systems)}, squeeze=False)
    for query, row in zip(queries, axes, strict=True):
        _thumbnail(row[0], paths.get(str(query["query"])), query["query"], None, False)
        for ax, system in zip(row[1:], systems, strict=True):
            result = query["results"][system]
            ax.axis("off")
            ax.set_title(f"{system}: ground truth at rank {result['gt_rank'] + 1}", fontsize=7, loc="left")
            for line, (caption, text, score) in enumerate(zip(result["ids"], result["texts"], result["scores"],
                                                              strict=True)):
                ax.text(0, 0.9 - line * 0.2, f"{score:.3f}  {textwrap.shorten(text, 48)}", fontsize=6.5, va="top",
                        color=GREEN if caption in query["ground_truth"] else "0.15",
                        weight="bold" if caption in query["ground_truth"] else "normal")
    fig.suptitle(f"Image to text, {examples['split']} split: each system's top-5 captions (ground truth in green)",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    save_figure(fig, path)
    return Path(path)


def write_example_figures(examples: dict[str, Any], directory: Path) -> dict[str, Path]:
    """The examples' figures in `directory`, by name: t2i, i2t and (when there are any) disagreements."""
    split = examples["split"]
    out = {"t2i": caption_queries(examples, examples["t2i"], f"Text to image, {split} split: each system's top-5 "
                                  "(score above each image, ground truth framed green)", directory / "examples_t2i.png"),
           "i2t": image_queries(examples, directory / "examples_i2t.png")}
    if examples["disagreements"]:
        teacher, student = examples["disagreement_pair"]
        out["disagreements"] = caption_queries(
            examples, examples["disagreements"], f"Where {student} and {teacher} disagree most (by the rank of the "
            f"ground truth, among {split} captions)", directory / "examples_disagreements.png")
    return out
