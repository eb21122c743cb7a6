"""`itr-distill compare RUN_DIR...`: the report systems of several runs in one table.

Runs differ in data, config or machine; each run's `report.json` already holds its systems averaged over
seeds with their latency and speed-up, so comparing them is reading those files side by side: nothing is
re-evaluated and nothing here needs torch. The table keeps the report's columns and adds the run and a short
machine column, since a latency or a speed-up means little without the machine it was measured on.
"""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.io import read_json, write_text
from core.run_layout import RunPaths
from eval.metrics import TABLE_KEYS, table_cell

HEADERS = ("run", "system", "seeds", "i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10", "rsum",
           "latency ms (p50)", "backend", "speed-up vs teacher", "machine")


class ReportMissing(FileNotFoundError):
    """A run given to `compare` has no `report.json` (the CLI exits with 2, as for a wrong argument)."""


@dataclass(frozen=True)
class CompareRow:
    """One report system of one run, with what the table and the CSV show of it."""

    run: str
    group: str
    label: str
    seeds: list[int | None]
    mean: dict[str, float]
    std: dict[str, float]
    latency_p50_ms: float | None
    latency_backend: str | None
    speedup_vs_teacher: float | None
    machine: str

    def cell(self, key: str) -> str:
        """Mean, and ± std where several seeds were averaged (as the report writes it)."""
        return table_cell(self.mean[key], self.std.get(key, 0.0) if len(self.seeds) > 1 else None)

    def cells(self) -> list[str]:
        seeds = ",".join(str(s) for s in self.seeds if s is not None) or "-"
        latency = f"{self.latency_p50_ms:.2f}" if self.latency_p50_ms is not None else "-"
        speed = f"{self.speedup_vs_teacher:.1f}x" if self.speedup_vs_teacher is not None else "-"
        return [self.run, self.label, seeds, *(self.cell(k) for k in TABLE_KEYS), latency,
                self.latency_backend or "-", speed, self.machine]

    def csv_row(self) -> dict[str, Any]:
        """Numbers as numbers (rounded to 4 decimals, float noise only), each mean beside its std, for a
        spreadsheet or pandas."""
        out: dict[str, Any] = {"run": self.run, "group": self.group, "system": self.label,
                               "seeds": ";".join(str(s) for s in self.seeds if s is not None)}
        for key in TABLE_KEYS:
            out[key], out[f"{key}_std"] = _round(self.mean[key]), _round(self.std.get(key, 0.0))
        out.update(latency_p50_ms=_round(self.latency_p50_ms), latency_backend=self.latency_backend,
                   speedup_vs_teacher=_round(self.speedup_vs_teacher), machine=self.machine)
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


CSV_FIELDS = ("run", "group", "system", "seeds", *(f for k in TABLE_KEYS for f in (k, f"{k}_std")),
              "latency_p50_ms", "latency_backend", "speedup_vs_teacher", "machine")


def short_machine(info: dict[str, Any] | None) -> str:
    """CPU model and cores, plus the GPU when there is one: enough to tell runs apart in one column
    (`core.machine.describe` gives the whole line, with memory and platform)."""
    if not info:
        return "-"
    cpu = re.sub(r"\((R|TM|tm)\)|\bCPU\b|@.*$", "", str(info.get("cpu") or "?"))
    cpu = " ".join(cpu.split()) or "?"
    cores = f" ({info['cpu_count']} cores)" if info.get("cpu_count") else ""
    return f"{cpu}{cores}" + (f" + {info['gpu']}" if info.get("gpu") else "")


def read_report(run_dir: str | Path) -> dict[str, Any]:
    """A run's `report.json`; a missing one says how to make it."""
    path = RunPaths(run_dir).report_data
    if not path.is_file():
        raise ReportMissing(f"{path}: no report of this run; run `itr-distill report {run_dir}` "
                            "(or `itr-distill run CONFIG`) first")
    report = read_json(path)
    if not isinstance(report, dict) or not isinstance(report.get("systems"), list):
        raise ValueError(f"{path}: not a report (no 'systems' list)")
    return report


def compare_rows(run_dirs: list[str]) -> list[CompareRow]:
    """Every report system of every run, runs in the given order, each run's systems in its report's order."""
    rows = []
    for run in run_dirs:
        report = read_report(run)
        machine = short_machine(report.get("machine"))
        for system in report["systems"]:
            rows.append(CompareRow(run=str(Path(run)), group=system["group"], label=system.get("label", system["group"]),
                                   seeds=list(system.get("seeds") or []), mean=system["mean"], std=system.get("std", {}),
                                   latency_p50_ms=system.get("latency_p50_ms"),
                                   latency_backend=system.get("latency_backend"),
                                   speedup_vs_teacher=system.get("speedup_vs_teacher"), machine=machine))
    return rows


def to_markdown(rows: list[CompareRow]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[CompareRow]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(row.csv_row() for row in rows)
    return buffer.getvalue()


def compare(run_dirs: list[str], csv_path: str | None = None, markdown_path: str | None = None) -> str:
    """The Markdown table of `run_dirs`; also written to `markdown_path` and, as CSV, to `csv_path` when given.
    Every report is read before anything is written, so a missing one leaves no half-made files."""
    rows = compare_rows(run_dirs)
    table = to_markdown(rows)
    if csv_path:
        write_text(csv_path, to_csv(rows))
    if markdown_path:
        write_text(markdown_path, table)
    return table
