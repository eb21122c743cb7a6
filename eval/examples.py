"""Retrieval examples: what the teacher and the students return for the same queries.

A reader judges a retrieval model by its answers first. For a seeded set of caption queries and a
few images of the evaluation split, each system's top-5 (ids, scores, the ground truth's rank) is
recorded; and among a seeded pool of captions, those whose ground truth the distilled student and
the teacher rank most differently. Only the picked rows are kept (a pool x images block and a few
image rows per system), never a whole score matrix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.data.records import CaptionSplit
from teacher.topk import ScorePart

TOP = 5
N_TEXT, N_IMAGES, POOL = 4, 2, 200  # fixed caption queries, image queries, captions searched for disagreements


@dataclass(frozen=True)
class Picked:
    """Caption ids (the first `n_text` are the fixed queries, all of them the disagreement pool) and image ids."""

    pool: np.ndarray
    images: np.ndarray
    n_text: int


def pick(split: CaptionSplit, seed: int) -> Picked:
    rng = np.random.default_rng(seed)
    captions = rng.permutation(split.n_captions)[:POOL]
    return Picked(captions, np.sort(rng.permutation(split.n_images)[:N_IMAGES]), min(N_TEXT, len(captions)))


def teacher_pairs(n_images: int, n_captions: int) -> int:
    """Pairs a teacher scores for the examples of a split (the plan counts them)."""
    return min(POOL, n_captions) * n_images + min(N_IMAGES, n_images) * n_captions


def _ranked(scores: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Top-5 ids and scores of one query's row, and the best ground truth's rank (0-based, ties in its favour)."""
    top = np.argsort(-scores, kind="stable")[:TOP]
    rank = int((scores > scores[truth].max()).sum())
    return {"ids": top.tolist(), "scores": [round(float(s), 4) for s in scores[top]], "gt_rank": rank}


class ExampleCollector:
    """Gathers the picked rows of each system while eval scores it, then writes the examples."""

    def __init__(self, split: CaptionSplit, seed: int):
        self.split, self.picked = split, pick(split, seed)
        self.rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # system -> (pool x images, picked images x captions)

    def add_sims(self, system: str, sims: np.ndarray) -> None:
        """A system whose whole (images, captions) similarity matrix is at hand (the students)."""
        self.rows[system] = (np.array(sims[:, self.picked.pool].T), np.array(sims[self.picked.images]))

    def add_scorer(self, system: str, score: ScorePart) -> None:
        """A system that scores query-candidate lists (the teacher): every image for each pool caption,
        every caption for each picked image."""
        n_img, n_cap, p = self.split.n_images, self.split.n_captions, self.picked
        t2i = score("t2i", p.pool, np.broadcast_to(np.arange(n_img), (len(p.pool), n_img)))
        i2t = score("i2t", p.images, np.broadcast_to(np.arange(n_cap), (len(p.images), n_cap)))
        self.rows[system] = (t2i, i2t)

    def _caption_query(self, position: int) -> dict[str, Any]:
        caption = int(self.picked.pool[position])
        truth = np.array([caption // self.split.captions_per_image])
        return {"query": caption, "text": self.split.captions[caption], "ground_truth": truth.tolist(),
                "results": {s: _ranked(t2i[position], truth) for s, (t2i, _) in self.rows.items()}}

    def to_dict(self, teacher: str | None, student: str | None) -> dict[str, Any]:
        """The examples; `teacher` and `student` name the systems whose disagreements are listed (None: none)."""
        k, p = self.split.captions_per_image, self.picked
        out: dict[str, Any] = {"split": self.split.name, "captions_per_image": k, "systems": list(self.rows),
                               "t2i": [self._caption_query(i) for i in range(p.n_text)], "i2t": [],
                               "disagreements": []}
        for position, image in enumerate(p.images.tolist()):
            truth = np.arange(image * k, (image + 1) * k)
            results = {s: _ranked(i2t[position], truth) for s, (_, i2t) in self.rows.items()}
            for result in results.values():
                result["texts"] = [self.split.captions[c] for c in result["ids"]]
            out["i2t"].append({"query": image, "ground_truth": truth.tolist(), "results": results})
        if teacher in self.rows and student in self.rows:
            queries = [self._caption_query(i) for i in range(len(p.pool))]
            gap = [abs(q["results"][teacher]["gt_rank"] - q["results"][student]["gt_rank"]) for q in queries]
            order = np.argsort(-np.array(gap), kind="stable")[:p.n_text]
            out["disagreements"] = [{**queries[i], "rank_gap": gap[i]} for i in order if gap[i] > 0]
            out["disagreement_pair"] = [teacher, student]
        if self.split.image_paths is not None:
            shown = {i for q in out["t2i"] + out["disagreements"] for r in q["results"].values() for i in r["ids"]}
            shown |= set(p.images.tolist()) | {i for q in out["t2i"] + out["disagreements"] for i in q["ground_truth"]}
            out["image_paths"] = {str(i): str(self.split.image_paths[i]) for i in sorted(shown)}
        return out
