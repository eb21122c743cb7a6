"""CLIP_benchmark result files: one JSON per evaluated system, in the form LAION-AI/CLIP_benchmark's
`clip_benchmark eval --task zeroshot_retrieval` writes, so our systems sit in the same tables as
CLIP-like models that tool evaluated (`clip_benchmark build <run>/eval/clip_benchmark/*.json` makes its CSV).

Their format, field for field (`clip_benchmark/cli.py`, `metrics/zeroshot_retrieval.py`):
`{"dataset", "model", "pretrained", "task": "zeroshot_retrieval", "metrics": {...}, "language": "en"}`, the
recalls as fractions in [0, 1]. Its "image retrieval" is a text query ranking images (our t2i) and its
"text retrieval" an image query ranking captions (our i2t); recall@K there, as here, counts a query as
found when any of its positives is in the top K. Our recalls are percentages, averaged over the folds
when `eval.folds` > 1 (COCO 1K), so each is divided by 100 and nothing else changes.

What fills the identity fields (kept simple, so the tool's `model_fullname` = "model pretrained" reads well):
- model: the system's name in `eval/results.json` (teacher, distilled-seed0, rerank-top10, onnx-int8...);
- pretrained: the run directory's name (what the weights were trained in, e.g. `demo`);
- dataset: the data's name and the evaluated split, `<name>_<split>`: the Karpathy JSON's file name less
  its `dataset_` prefix (flickr8k_test), a precomputed directory's name, or `synthetic`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from core.io import write_json
from core.run_layout import RunPaths
from eval.records import EvalResults

TASK = "zeroshot_retrieval"
LANGUAGE = "en"
RECALL_KS = (1, 5, 10)
# CLIP_benchmark's metric name -> ours
METRIC_KEYS: dict[str, str] = {
    **{f"image_retrieval_recall@{k}": f"t2i_r{k}" for k in RECALL_KS},
    **{f"text_retrieval_recall@{k}": f"i2t_r{k}" for k in RECALL_KS},
}


def dataset_name(data_format: str, data_path: str | None, split: str) -> str:
    """`<data name>_<split>`, from the config's `data.format` and `data.path` (see the module docstring)."""
    if data_format == "karpathy" and data_path:
        stem = Path(data_path).stem
        name = stem[len("dataset_"):] if stem.startswith("dataset_") and len(stem) > len("dataset_") else stem
    elif data_format == "precomputed" and data_path:
        name = Path(data_path).name
    else:
        name = data_format
    return f"{name}_{split}"


def to_records(results: EvalResults, dataset: str, pretrained: str) -> list[dict[str, Any]]:
    """One CLIP_benchmark record per evaluated system (each seed its own), in the order of `results`."""
    return [{"dataset": dataset, "model": system.name, "pretrained": pretrained, "task": TASK,
             "metrics": {theirs: system.metrics[ours] / 100.0 for theirs, ours in METRIC_KEYS.items()},
             "language": LANGUAGE}
            for system in results.systems]


def write_clip_benchmark(results: EvalResults, paths: RunPaths, data_format: str,
                         data_path: str | None) -> list[Path]:
    """Write `<run>/eval/clip_benchmark/<system>.json` for every system of `results`; files of systems this
    evaluation no longer has are removed, since the tool globs the whole directory."""
    records = to_records(results, dataset_name(data_format, data_path, results.split), paths.root.resolve().name)
    written = [paths.clip_benchmark(record["model"]) for record in records]
    if paths.clip_benchmark_dir.is_dir():
        for stale in set(paths.clip_benchmark_dir.glob("*.json")) - set(written):
            stale.unlink()
    for path, record in zip(written, records, strict=True):
        write_json(path, record)
    return written
