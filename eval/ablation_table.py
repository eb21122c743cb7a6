"""The ablation table: each student variant's retrieval metrics over seeds (mean ± std), and how far
each row moves rsum from the contrastive-only row relative to the seed spread."""
from __future__ import annotations

from typing import Any

import numpy as np

from core.machine import describe
from eval.metrics import TABLE_KEYS, table_cell


def summarise_rows(rows: list[dict[str, Any]], reference: str = "baseline") -> list[dict[str, Any]]:
    """Per row {variant, label, components, seeds, per_seed (`SystemResult`s, written as their JSON form),
    mean, std}: std is the sample std (ddof 1),
    None with one seed, where there is no spread to compare a change with (`beyond_spread` is then None).
    Each row's rsum is compared with the `reference` variant's row."""
    out = []
    for row in rows:
        values = {k: np.array([r.metrics[k] for r in row["per_seed"]]) for k in TABLE_KEYS}
        std = {k: float(v.std(ddof=1)) if len(v) > 1 else None for k, v in values.items()}
        out.append({**row, "per_seed": [r.to_dict() for r in row["per_seed"]],
                    "mean": {k: float(v.mean()) for k, v in values.items()}, "std": std})
    base = next((r for r in out if r["variant"] == reference), None)
    for row in out:
        if base is not None and row is not base:
            delta = row["mean"]["rsum"] - base["mean"]["rsum"]
            spreads = (row["std"]["rsum"], base["std"]["rsum"])
            spread = None if None in spreads else max(spreads)
            row["rsum_vs_contrastive"] = {"delta": delta, "seed_spread": spread,
                                          "beyond_spread": None if spread is None else abs(delta) > spread}
    return out


def to_markdown(table: dict[str, Any], subject: str = "Student", reference: str = "contrastive-only row") -> str:
    """The table with its split, budget, machine and command; `subject` heads the first column and
    `reference` names the row Δ rsum is measured from."""
    lines = [f"## {'Ablation' if subject == 'Student' else subject + ' ablation'}", "",
             f"Split `{table['split']}` ({table['gallery_images']} images); every row trains with the same budget "
             f"({table['budget']}); mean ± std (sample) over seeds {table['seeds']}. Δ rsum is against the "
             f"{reference}; 'beyond spread' when |Δ| exceeds the larger of the two rows' std"
             + (" (one seed: no spread, so no change is called beyond it)." if len(table["seeds"]) < 2 else "."), "",
             f"| {subject} | {'terms' if subject == 'Student' else 'settings'} | " + " | ".join(TABLE_KEYS)
             + " | Δ rsum |", "|---|---|" + "---|" * (len(TABLE_KEYS) + 1)]
    for row in table["rows"]:
        cells = [table_cell(row["mean"][k], row["std"][k]) for k in TABLE_KEYS]
        vs = row.get("rsum_vs_contrastive")
        delta = "-" if vs is None else f"{vs['delta']:+.1f}" + (" (beyond spread)" if vs["beyond_spread"] else "")
        lines.append(f"| {row['label']} | {', '.join(row['terms'])} | " + " | ".join(cells) + f" | {delta} |")
    if table.get("skipped"):
        lines += ["", "Not trained (component off in this config): " + ", ".join(table["skipped"])]
    lines += ["", f"Machine: {describe(table['machine'])}.", "", f"Reproduce: `{table['command']}`", ""]
    return "\n".join(lines)
