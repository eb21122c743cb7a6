"""The report's figures (PNG): accuracy against per-query latency, and latency against gallery size.

Each figure says in its own text what was measured, on which split and on which machine, so it can
be read without the report around it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from core.io import atomic_path  # noqa: E402
from core.machine import describe  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 120) -> None:
    """Write the figure as PNG atomically (a killed report keeps the previous figure) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)


def _footnote(fig, text: str) -> None:
    fig.text(0.01, 0.01, text, fontsize=7, color="0.3", ha="left", va="bottom", wrap=True)


def accuracy_vs_latency(summary: dict[str, Any], path: str | Path) -> Path | None:
    """rsum (mean ± std over seeds) against per-query p50 latency, log x, one point per system."""
    rows = [r for r in summary["systems"] if r["latency_p50_ms"] is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = "osD^vP*Xhp"
    for i, r in enumerate(rows):
        ax.errorbar(r["latency_p50_ms"], r["mean"]["rsum"], yerr=r["std"]["rsum"] if len(r["seeds"]) > 1 else None,
                    fmt=markers[i % len(markers)], capsize=3, label=f"{r['label']} — {r['latency_backend']}")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=6, loc="best")
    ax.set_xlabel(f"per-query latency, p50 (ms, log scale): one text query against {summary['gallery_images']} images")
    ax.set_ylabel("rsum (sum of R@1/5/10, both directions)")
    ax.set_title(f"Accuracy against latency — {summary['split']} split")
    ax.grid(True, which="both", alpha=0.3)
    _footnote(fig, f"Measured on {describe(summary['machine'])}" if summary.get("machine") else "machine unknown")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, path)
    return Path(path)


def latency_vs_gallery(scaling: dict[str, Any], machine: dict[str, Any], path: str | Path) -> Path:
    """Per-query p50 against gallery size on log-log axes; extrapolated points hollow and dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for system, method in sorted({(r["system"], r["method"]) for r in scaling["rows"]}):
        points = sorted((r for r in scaling["rows"] if (r["system"], r["method"]) == (system, method)),
                        key=lambda r: r["gallery"])
        measured = [r for r in points if r["measured"]]
        line, = ax.plot([r["gallery"] for r in measured], [r["p50_ms"] for r in measured], "o-", label=f"{system}: {method}")
        guessed = [r for r in points if not r["measured"]]
        if guessed:
            tail = measured[-1:] + guessed
            ax.plot([r["gallery"] for r in tail], [r["p50_ms"] for r in tail], "o--", color=line.get_color(),
                    markerfacecolor="none", label=f"{system}: {method} (extrapolated)")
    ax.axhline(scaling["usable_ms"], color="0.5", linestyle=":", linewidth=1)
    ax.text(ax.get_xlim()[0], scaling["usable_ms"], f" {scaling['usable_ms']:g} ms", fontsize=7, va="bottom", color="0.4")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("gallery size (images, log scale)")
    ax.set_ylabel("per-query latency, p50 (ms, log scale)")
    ax.set_title("One text query, end to end (caption in, top 10 out)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    _footnote(fig, f"Measured on {describe(machine)}; hollow dashed points extrapolated from a + b·N fitted to the measured ones.")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, path)
    return Path(path)


def training_curves(histories: dict[str, list[dict[str, Any]]], selected: dict[str, int], path: str | Path) -> Path:
    """One panel per trained model: each loss term per epoch (left axis) and the selection split's rsum
    (right axis, dashed), the selected epoch marked. `histories` come from each model's training.json."""
    names = list(histories)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names, strict=False):
        history = histories[name]
        epochs = [h["epoch"] for h in history]
        for term in history[0]["loss"]:
            ax.plot(epochs, [h["loss"][term] for h in history], "o-", markersize=3, label=term)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (epoch mean)")
        ax.set_title(name, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
        val = [(h["epoch"], h["val"]["rsum"]) for h in history if "val" in h]
        if val:
            right = ax.twinx()
            right.plot(*zip(*val, strict=True), "s--", color="0.3", markersize=3)
            right.set_ylabel("selection rsum (dashed)", fontsize=8)
        if name in selected:
            ax.axvline(selected[name], color="0.5", linestyle=":", linewidth=1)
    fig.suptitle("Training: loss terms and selection rsum per epoch (dotted line: the selected epoch)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    save_figure(fig, path)
    return Path(path)
