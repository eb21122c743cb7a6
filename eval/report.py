"""`report.md` + `report.json`: accuracy, per-query latency and speed-up of every system of a run."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.io import read_json, write_json, write_text
from core.machine import describe
from core.run_layout import ModelDir, RunPaths
from eval.ablation_table import to_markdown as ablation_markdown
from eval.bench_tables import scaling_markdown
from eval.example_figures import write_example_figures
from eval.figures import accuracy_vs_latency, latency_vs_gallery, training_curves
from eval.metrics import TABLE_KEYS, protocols, table_cell
from eval.records import EvalResults, SystemResult

GROUP_ORDER = ("teacher", "baseline", "distilled", "baseline-pack", "distilled-pack", "onnx-fp32", "onnx-optimized", "onnx-int8", "onnx-fp16")


def _order(group: str) -> tuple[int, int]:
    """Listed groups first in their order, then re-ranking by depth, then anything else."""
    if group in GROUP_ORDER:
        return GROUP_ORDER.index(group), 0
    if group.startswith("rerank-top"):
        return len(GROUP_ORDER), int(group[len("rerank-top"):])
    return len(GROUP_ORDER) + 1, 0


def _latency(bench: dict, system: str, backend: str, device: str = "cpu", variant: str | None = None) -> dict | None:
    return next((r for r in bench.get("rows", []) if r["measure"] == "retrieval" and r["system"] == system
                 and r["backend"] == backend and r["device"] == device and r.get("variant") == variant), None)


def _label(group: str, first: SystemResult) -> str:
    if group == "teacher":
        return f"Teacher: {first.matching or 'SCAN cross attention'}"
    if group.startswith("rerank-"):
        fused = f" (+ {first.student_weight:g} x student score)" if first.student_weight else ""
        return f"Re-ranking: student top-{first.k} ({first.source}), teacher re-ranks{fused}"
    if group.startswith("onnx-"):
        return f"ONNX student {first.variant} ({first.source or 'student'}, onnxruntime)"
    name = "Student, no distillation" if group.startswith("baseline") else "Student, distilled"
    name += ", seeds packed into one dual encoder" if group.endswith("-pack") else ""
    return f"{name} ({' + '.join(first.losses)})" if first.losses else name


def summarise(results: EvalResults, bench: dict | None) -> dict[str, Any]:
    """Group evaluated systems, average over seeds, attach latency and speed-up over the teacher."""
    groups: dict[str, list[SystemResult]] = {}
    for entry in results.systems:
        groups.setdefault(entry.group, []).append(entry)
    bench = bench or {}
    teacher_row = _latency(bench, "teacher", "pytorch")
    rows = []
    for group in sorted(groups, key=_order):
        entries = groups[group]
        values = {k: [e.metrics[k] for e in entries] for k in entries[0].metrics}
        others = {str(f): _mean_std([e.by_folds[f] for e in entries]) for f in results.folds[1:]
                  if all(e.by_folds and f in e.by_folds for e in entries)}
        onnx = group.startswith("onnx-")
        backend = "onnxruntime" if onnx else "pytorch"
        system = group if group == "teacher" or group.startswith("rerank-") else "student"
        # bench timed one student (the export's source): a pack's rows are not a single seed's, nor the reverse
        timed = onnx or system != "student" or group.endswith("-pack") == bench.get("student_packed", False)
        latency = _latency(bench, system, backend, variant=entries[0].variant) if timed else None
        row = {
            "group": group,
            "label": _label(group, entries[0]),
            "seeds": [e.seed for e in entries],
            "mean": {k: float(np.mean(v)) for k, v in values.items()},
            "std": {k: float(np.std(v)) for k, v in values.items()},
            "latency_p50_ms": latency["p50_ms"] if latency else None,
            "latency_backend": f"{backend} {latency['device']}" if latency else None,
            "speedup_vs_teacher": (teacher_row["p50_ms"] / latency["p50_ms"]) if latency and teacher_row else None,
        }
        if others:  # the protocols after the first (`eval.folds: [1, 5]`), keyed by their folds
            row["by_folds"] = others
        rows.append(row)
    by_group = {r["group"]: r for r in rows}
    checks = {}
    if "baseline" in by_group:
        base = by_group["baseline"]["mean"]["rsum"]
        if "teacher" in by_group:
            checks["teacher_rsum_above_baseline"] = by_group["teacher"]["mean"]["rsum"] > base
        if "distilled" in by_group:
            checks["distilled_rsum_above_baseline"] = by_group["distilled"]["mean"]["rsum"] > base
    checks.update(_rerank_checks(by_group, bench))
    for group, entries in groups.items():
        parity = entries[0].parity
        if parity is not None:
            checks[f"{group}_r1_drop_within_{parity.r1_drop_bound:g}"] = parity.within_bound
    return {"split": results.split, "folds": results.folds, "gallery_images": results.gallery_images,
            "captions_per_image": results.captions_per_image,
            "systems": rows, "checks": checks, "machine": bench.get("machine"),
            "caption_encoding": [r for r in bench.get("rows", []) if r["measure"] == "caption_encoding"],
            "image_encoding": [r for r in bench.get("rows", []) if r["measure"] == "image_encoding"],
            "scaling": bench.get("scaling"), "matrix": bench.get("matrix")}


def _mean_std(metrics: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and std over seeds of each metric of one protocol."""
    return {"mean": {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]},
            "std": {k: float(np.std([m[k] for m in metrics])) for k in metrics[0]}}


def protocol_label(folds: int, n_images: int) -> str:
    """How a table names a protocol: '5K (all pairs)', 'COCO 1K (5 folds)', '8 images (2 folds)'."""
    size = n_images // folds
    name = f"{size // 1000}K" if size and size % 1000 == 0 else f"{size} images"
    if folds == 1:
        return f"{name} (all pairs)"
    return f"{'COCO ' if (folds, n_images) == (5, 5000) else ''}{name} ({folds} folds)"


def _protocol_lines(summary: dict) -> list[str]:
    """A compact table per protocol after the first: the recalls and rsum of every system under it."""
    lines = []
    for folds in protocols(summary["folds"])[1:]:
        rows = [r for r in summary["systems"] if str(folds) in r.get("by_folds", {})]
        if not rows:
            continue
        lines += ["", f"### {protocol_label(folds, summary['gallery_images'])}", "",
                  "| System | seeds | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | rsum |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in rows:
            seeds = ",".join(str(s) for s in row["seeds"] if s is not None) or "-"
            lines.append(f"| {row['label']} | {seeds} | "
                         + " | ".join(_fmt({**row["by_folds"][str(folds)], "seeds": row["seeds"]}, k)
                                      for k in TABLE_KEYS) + " |")
    return lines


def _rerank_checks(by_group: dict[str, dict], bench: dict) -> dict[str, bool]:
    """Two-stage retrieval earns its place when it keeps the teacher's accuracy at less than its cost."""
    teacher = by_group.get("teacher")
    student = _latency(bench, "student", "pytorch")
    checks = {}
    for group, row in by_group.items():
        if not group.startswith("rerank-") or teacher is None:
            continue
        checks[f"{group}_rsum_at_or_above_teacher"] = row["mean"]["rsum"] >= teacher["mean"]["rsum"]
        if row["latency_p50_ms"] is not None and teacher["latency_p50_ms"] is not None and student:
            checks[f"{group}_latency_between_student_and_teacher"] = (
                student["p50_ms"] < row["latency_p50_ms"] < teacher["latency_p50_ms"])
    return checks


COST_MODEL = ("Cost model. Per text query the student pays one caption encoding plus N·d multiply-adds for the search "
              "(N gallery images, d = {d}) and holds N·d numbers; the teacher pays its caption encoding plus cross "
              "attention over N·R·L·D (R = {r} regions, L words, D = {D}) and must hold N·R·D token features. Both "
              "grow linearly in N, the teacher's cost per image {ratio:.0f} times the student's here (fitted below), so "
              "the gallery size at which each stops being usable is where its line crosses {usable:g} ms.")


def _scaling_lines(summary: dict, figure: str | None) -> list[str]:
    scaling = summary["scaling"]
    fits = {c["system"]: c for c in scaling["cost_model"] if c["method"] in ("exact-numpy", "scan-pytorch-cpu")}
    lines = ["", "## Latency against gallery size", ""]
    if {"student", "teacher"} <= fits.keys():
        lines += [COST_MODEL.format(d=scaling["embedding_dim"], r=scaling["teacher_tokens"]["regions"],
                                    D=scaling["teacher_tokens"]["dim"], usable=scaling["usable_ms"],
                                    ratio=fits["teacher"]["ms_per_image"] / fits["student"]["ms_per_image"]), ""]
    lines += scaling_markdown(scaling)
    if figure:
        lines += ["", f"![latency against gallery size]({figure})"]
    return lines


def _matrix_lines(summary: dict) -> list[str]:
    """Batch 1 and the largest batch at the longest caption, per backend (the whole matrix is in bench/bench.md)."""
    matrix = summary["matrix"]
    longest, largest = max(matrix["settings"]["caption_lengths"]), max(matrix["settings"]["batch_sizes"])
    rows = [r for r in matrix["rows"] if r["length"] == longest and r["batch"] in (1, largest)]
    lines = ["", f"## Caption encoder, {longest} tokens (whole matrix: `bench/bench.md`)", "",
             "| backend | batch | p50 ms | p99 ms | captions/s | of matmul rate |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['batch']} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['throughput_per_s']:.0f} | "
              f"{100 * r['fraction_of_matmul_rate']:.1f}% |" for r in rows]
    return lines


def _example_lines(figures: dict[str, str]) -> list[str]:
    """What the systems retrieve and how their training went (eval/examples.json, each training.json)."""
    lines = []
    if "examples_t2i" in figures:
        lines += ["", "## Retrieval examples", "",
                  "Seeded queries of the split: each system's top-5 (ground truth framed green; `eval/examples.json` "
                  "holds the ids and scores).", "", f"![text to image]({figures['examples_t2i']})", "",
                  f"![image to text]({figures['examples_i2t']})"]
        if "examples_disagreements" in figures:
            lines += ["", "Where the distilled student and the teacher disagree most, by the rank of the ground truth:",
                      "", f"![disagreements]({figures['examples_disagreements']})"]
    if "curves" in figures:
        lines += ["", "## Training", "", f"![training curves]({figures['curves']})"]
    return lines


def _fmt(row: dict, key: str) -> str:
    return table_cell(row["mean"][key], row["std"][key] if len(row["seeds"]) > 1 else None)


def _protocols_text(summary: dict) -> str:
    """The header's protocols: the main table's first, then the others' tables."""
    listed = [protocol_label(f, summary["gallery_images"]) for f in protocols(summary["folds"])]
    return listed[0] + (f"; further tables: {', '.join(listed[1:])}" if len(listed) > 1 else "")


def to_markdown(summary: dict, command: str, figures: dict[str, str] | None = None) -> str:
    lines = [
        "# itr-distill report",
        "",
        f"Split: `{summary['split']}` ({summary['gallery_images']} images, {summary['captions_per_image']} captions each), "
        f"{_protocols_text(summary)}. Students: mean ± std over seeds.",
        "Latency: one text query against the whole split's gallery (features precomputed), p50. ONNX variants are "
        "evaluated with the CPU provider; each is timed only on the providers it is built for (fp16: CUDA).",
        "",
        "| System | seeds | i2t R@1 | i2t R@5 | i2t R@10 | t2i R@1 | t2i R@5 | t2i R@10 | rsum | latency ms (p50) | speed-up vs teacher |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["systems"]:
        seeds = ",".join(str(s) for s in row["seeds"] if s is not None) or "-"
        latency = f"{row['latency_p50_ms']:.2f} ({row['latency_backend']})" if row["latency_p50_ms"] is not None else "-"
        speed = f"{row['speedup_vs_teacher']:.1f}x" if row["speedup_vs_teacher"] is not None else "-"
        lines.append(f"| {row['label']} | {seeds} | " + " | ".join(_fmt(row, k) for k in TABLE_KEYS)
                     + f" | {latency} | {speed} |")
    lines += _protocol_lines(summary)
    if summary["caption_encoding"]:
        lines += ["", "Batch-1 caption encoding (student):", "",
                  "| backend | variant | device | p50 ms | p95 ms |", "|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r.get('variant') or '-'} | {r['device']} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} |"
                  for r in summary["caption_encoding"]]
    if summary.get("image_encoding"):
        lines += ["", "Image encoding (student; gallery indexing, from decoded and resized pixels):", "",
                  "| backend | variant | device | batch | p50 ms | ms per image |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r.get('variant') or '-'} | {r['device']} | {r['batch']} | {r['p50_ms']:.2f} | "
                  f"{r['per_image_ms']:.2f} |" for r in summary["image_encoding"]]
    figures = figures or {}
    if "accuracy" in figures:
        lines += ["", f"![accuracy against latency]({figures['accuracy']})"]
    lines += _example_lines(figures)
    if summary.get("scaling"):
        lines += _scaling_lines(summary, figures.get("gallery"))
    if summary.get("matrix"):
        lines += _matrix_lines(summary)
    if summary.get("ablation"):
        lines += ["", ablation_markdown(summary["ablation"]).rstrip()]
    if summary["checks"]:
        lines += ["", "Checks:", ""] + [f"- {name}: {'yes' if ok else 'NO'}" for name, ok in summary["checks"].items()]
    if summary.get("machine"):
        lines += ["", f"Machine: {describe(summary['machine'])}."]
    lines += ["", f"Reproduce: `{command}`", ""]
    return "\n".join(lines)


def write_training_curves(models: dict[str, Path], path: Path) -> Path | None:
    """The training curves of the named model directories that finished training (None when none did)."""
    trained = {name: read_json(ModelDir(d).training) for name, d in models.items() if ModelDir(d).training.is_file()}
    if not trained:
        return None
    return training_curves({n: t["history"] for n, t in trained.items()},
                           {n: t["selected_epoch"] for n, t in trained.items()}, path)


def write_report(run_dir: str | Path, command: str) -> dict[str, Any]:
    """Read a run's evaluation results and latency file; write `report.json` and `report.md`."""
    paths = RunPaths(run_dir)
    results = EvalResults.read(paths.eval_results)
    bench = read_json(paths.bench) if paths.bench.exists() else None
    summary = summarise(results, bench)
    summary["command"] = command
    if paths.student_ablation.exists():  # written by `itr-distill ablate`
        summary["ablation"] = read_json(paths.student_ablation)
    paths.figures.mkdir(exist_ok=True)
    figures = {}
    accuracy, gallery = paths.figures / "accuracy_vs_latency.png", paths.figures / "latency_vs_gallery.png"
    if accuracy_vs_latency(summary, accuracy):
        figures["accuracy"] = accuracy.relative_to(paths.root).as_posix()
    if summary.get("scaling"):
        latency_vs_gallery(summary["scaling"], summary["machine"], gallery)
        figures["gallery"] = gallery.relative_to(paths.root).as_posix()
    if paths.eval_examples.exists():
        for name, figure in write_example_figures(read_json(paths.eval_examples), paths.figures).items():
            figures[f"examples_{name}"] = figure.relative_to(paths.root).as_posix()
    models = {"teacher": paths.teacher, **{d.name: d for d in sorted(paths.students.glob("*"))}}
    curves = write_training_curves(models, paths.figures / "training_curves.png")
    if curves is not None:
        figures["curves"] = curves.relative_to(paths.root).as_posix()
    summary["figures"] = figures
    write_json(paths.report_data, summary)
    write_text(paths.report, to_markdown(summary, command, figures))
    return summary
