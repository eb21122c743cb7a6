"""The evaluation's record: one `SystemResult` per evaluated system, written as `eval/results.json` and
read back by the report and the ablation tables, so a field is named once, here."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.io import read_json, write_json
from eval.metrics import TABLE_KEYS


@dataclass(frozen=True)
class OnnxParity:
    """How far an ONNX variant's metrics are from the PyTorch student it was exported from. fp32 recalls
    must be identical; a near-tie can still move a mean rank by 1/n, hence a separate rank figure."""

    recall_difference_vs_pytorch: float
    r1_drop_vs_pytorch: float
    r1_drop_bound: float
    rank_difference_vs_pytorch: float

    @classmethod
    def compare(cls, metrics: dict[str, float], pytorch: dict[str, float], r1_drop_bound: float) -> OnnxParity:
        return cls(recall_difference_vs_pytorch=max(abs(metrics[k] - pytorch[k]) for k in TABLE_KEYS),
                   r1_drop_vs_pytorch=max(0.0, *(pytorch[k] - metrics[k] for k in ("i2t_r1", "t2i_r1"))),
                   r1_drop_bound=r1_drop_bound,
                   rank_difference_vs_pytorch=max(abs(metrics[k] - pytorch[k]) for k in metrics if k not in TABLE_KEYS))

    @property
    def within_bound(self) -> bool:
        """The export gate's own criterion (R@5/R@10 of an exact fp32 export can move by a near-tied query)."""
        return self.r1_drop_vs_pytorch <= self.r1_drop_bound


@dataclass(frozen=True)
class SystemResult:
    """One evaluated system: `group` gathers the seeds of one system (teacher, baseline, distilled,
    rerank-topK, onnx-VARIANT); the optional fields belong to some groups only."""

    name: str
    group: str
    seed: int | None
    metrics: dict[str, float]
    matching: str | None = None  # teacher: what scores its pairs
    scored: str | None = None  # teacher: every pair, or a cross-encoder's re-ranked top-K
    token_dtype: str | None = None  # teacher: dtype of its token store
    losses: list[str] | None = None  # student: its loss terms
    k: int | None = None  # re-ranking: the student's top-K the teacher re-ranks
    source: str | None = None  # re-ranking, ONNX: the student it starts from
    student_weight: float | None = None  # re-ranking: weight of the student's score in the fused score
    variant: str | None = None  # ONNX: fp32, optimized, int8, fp16
    parity: OnnxParity | None = None  # ONNX: against its PyTorch source, when that was evaluated too
    # several protocols evaluated (`eval.folds: [1, 5]`): the metrics of each, by folds; `metrics` is the first's
    by_folds: dict[int, dict[str, float]] | None = None

    @property
    def rsum(self) -> float:
        return self.metrics["rsum"]

    @classmethod
    def of_folds(cls, name: str, group: str, seed: int | None, by_folds: dict[int, dict[str, float]],
                 **fields: Any) -> SystemResult:
        """A system evaluated under the protocols of `by_folds` (in `eval.folds` order): `metrics` holds
        the first's, `by_folds` all of them when there are several."""
        first = next(iter(by_folds.values()))
        return cls(name, group, seed, first, by_folds=dict(by_folds) if len(by_folds) > 1 else None, **fields)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: unset fields left out, the parity figures beside the metrics, the metrics by
        folds under "metrics_by_folds" keyed by the number of folds as a string (JSON keys are strings)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("parity", "by_folds") and (getattr(self, f.name) is not None or f.name == "seed")}
        if self.by_folds is not None:
            out["metrics_by_folds"] = {str(f): m for f, m in self.by_folds.items()}
        return {**out, **(dataclasses.asdict(self.parity) if self.parity else {})}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "results") -> SystemResult:
        parity_names = [f.name for f in dataclasses.fields(OnnxParity)]
        known = ({f.name for f in dataclasses.fields(cls)} - {"by_folds"}) | set(parity_names) | {"metrics_by_folds"}
        unknown = sorted(set(data) - known)
        if unknown or not {"name", "group", "metrics"} <= data.keys():
            raise ValueError(f"{source}: not an evaluation record (unknown fields {unknown}, or no name/group/metrics)")
        fields = {k: v for k, v in data.items() if k not in parity_names and k != "metrics_by_folds"}
        parity = OnnxParity(**{k: data[k] for k in parity_names}) if "r1_drop_vs_pytorch" in data else None
        by_folds = data.get("metrics_by_folds")
        by_folds = None if by_folds is None else {int(f): m for f, m in by_folds.items()}
        return cls(**{"seed": None, **fields}, parity=parity, by_folds=by_folds)


@dataclass(frozen=True)
class EvalResults:
    """Every system evaluated on one split under one or more protocols (`folds`, in `eval.folds` order:
    each system's `metrics` are the first's)."""

    split: str
    folds: list[int]
    gallery_images: int
    captions_per_image: int
    systems: list[SystemResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.folds, int):  # one protocol, as files (and callers) before the list had it
            object.__setattr__(self, "folds", [self.folds])

    def write(self, path: str | Path) -> None:
        write_json(path, {"split": self.split, "folds": self.folds, "gallery_images": self.gallery_images,
                          "captions_per_image": self.captions_per_image,
                          "systems": [s.to_dict() for s in self.systems]})

    @classmethod
    def read(cls, path: str | Path) -> EvalResults:
        return cls.from_dict(read_json(path), str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "results") -> EvalResults:
        """The JSON form; files written before `captions_per_image` was recorded all had 5, and those
        written before several protocols could be evaluated hold one number of folds."""
        try:
            return cls(data["split"], data.get("folds", 1), data["gallery_images"], data.get("captions_per_image", 5),
                       [SystemResult.from_dict(s, source) for s in data["systems"]])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{source}: not an evaluation results file ({exc!r})") from exc
