"""The benchmark's results as CSV and Markdown, beside `bench/latency.json`."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from core.io import write_text

MATRIX_COLUMNS = ("backend", "device", "batch", "length", "load_ms", "first_call_ms", "p50_ms", "p90_ms", "p99_ms",
                  "mean_ms", "n", "throughput_per_s", "encoder_gflop_per_caption", "matmul_rate_tflops",
                  "fraction_of_matmul_rate", "process_peak_rss_mib", "cuda_peak_allocated_mib", "cuda_device_used_mib")
SCALING_COLUMNS = ("system", "method", "gallery", "measured", "p50_ms", "p90_ms", "p99_ms", "n", "gallery_bytes", "reason")


def _csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def matrix_markdown(matrix: dict[str, Any]) -> list[str]:
    lines = ["| backend | batch | tokens | first call ms | p50 ms | p90 ms | p99 ms | captions/s | of matmul rate |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in matrix["rows"]:
        lines.append(f"| {r['backend']} | {r['batch']} | {r['length']} | {r['first_call_ms']:.2f} | {r['p50_ms']:.3f} | "
                     f"{r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['throughput_per_s']:.0f} | "
                     f"{100 * r['fraction_of_matmul_rate']:.2f}% |")
    rates = ", ".join(f"{k} {v:.2f} TFLOP/s" for k, v in matrix["matmul_rate_tflops"].items())
    lines += ["", f"Measured matrix-multiply rate: {rates}."]
    if matrix["unavailable"]:
        lines += ["", "Not measured here: " + "; ".join(f"{u['backend']} ({u['reason']})" for u in matrix["unavailable"]) + "."]
    return lines


def scaling_markdown(scaling: dict[str, Any]) -> list[str]:
    sizes = sorted({r["gallery"] for r in scaling["rows"]})
    methods = sorted({(r["system"], r["method"]) for r in scaling["rows"]})
    by = {(r["system"], r["method"], r["gallery"]): r for r in scaling["rows"]}
    lines = ["| system | method | " + " | ".join(f"{n:,}" for n in sizes) + " |", "|---|---|" + "---|" * len(sizes)]
    for system, method in methods:
        cells = []
        for n in sizes:
            r = by.get((system, method, n))
            cells.append("-" if r is None else f"{r['p50_ms']:.2f}" + ("" if r["measured"] else " (extrapolated)"))
        lines.append(f"| {system} | {method} | " + " | ".join(cells) + " |")
    ratio = {r["gallery"]: r for r in scaling["ratios"] if r["teacher_method"].endswith("cpu")}
    if ratio:
        lines.append("| teacher / student (cpu) | ratio | " + " | ".join(
            "-" if n not in ratio else f"{ratio[n]['teacher_over_student']:.0f}x" + ("" if ratio[n]["teacher_measured"] else " (extrapolated)")
            for n in sizes) + " |")
    if scaling.get("unavailable"):
        lines += ["", "Not measured here: " + "; ".join(f"{u['method']} ({u['reason']})" for u in scaling["unavailable"]) + "."]
    lines += ["", "Cost model fitted to the measured points (p50 = fixed + per-image x N):", "",
              f"| system | method | fixed ms | µs per gallery image | usable up to (p50 ≤ {scaling['usable_ms']:g} ms) |",
              "|---|---|---|---|---|"]
    for c in scaling["cost_model"]:
        usable = "-" if c["usable_gallery"] is None else f"{c['usable_gallery']:,} images"
        lines.append(f"| {c['system']} | {c['method']} | {c['fixed_ms']:.2f} | {1000 * c['ms_per_image']:.4f} | {usable} |")
    return lines


def write_bench_files(result: dict[str, Any], directory: str | Path) -> None:
    """`matrix.csv`, `scaling.csv` and `bench.md` from a benchmark result (`latency.json` holds it whole)."""
    directory = Path(directory)
    md = ["# itr-distill benchmark", ""]
    if "matrix" in result:
        write_text(directory / "matrix.csv", _csv(result["matrix"]["rows"], MATRIX_COLUMNS))
        md += ["## Caption encoder: backend x batch x length", "", *matrix_markdown(result["matrix"]), ""]
    if "scaling" in result:
        write_text(directory / "scaling.csv", _csv(result["scaling"]["rows"], SCALING_COLUMNS))
        md += ["## Per-query latency (ms, p50) against gallery size", "", *scaling_markdown(result["scaling"]), ""]
    m = result["machine"]
    md += [f"Machine: {m['cpu']} ({m['cpu_count']} cores), GPU {m.get('gpu') or 'none'}; versions "
           + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + "."]
    write_text(directory / "bench.md", "\n".join(md) + "\n")
