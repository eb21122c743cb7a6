"""Retrieval metrics under the standard image-text protocol (Flickr30K 1K, COCO 5K / 1K)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "i2t_medr", "i2t_meanr",
        "t2i_r1", "t2i_r5", "t2i_r10", "t2i_medr", "t2i_meanr", "rsum")
TABLE_KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")  # the columns of every results table


def table_cell(mean: float, std: float | None) -> str:
    """A results table's cell: the mean, and ± the std when several seeds were averaged (None: one seed)."""
    return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def ranks(sims: np.ndarray, captions_per_image: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of the ground truth: (per image, best of its captions; per caption, its image).

    A rank counts the candidates that score strictly higher, so ties favour the ground truth.
    """
    sims = np.asarray(sims)
    n_img, n_cap = sims.shape
    k = captions_per_image
    if n_cap != n_img * k:
        raise ValueError(f"sims has shape {sims.shape}; expected {n_img * k} captions ({k} per image)")
    if not np.isfinite(sims).all():
        raise ValueError("sims contains NaN or Inf")
    gt_caption = sims.reshape(n_img, n_img, k)[np.arange(n_img), np.arange(n_img)]  # (n_img, k)
    i2t = (sims > gt_caption.max(axis=1, keepdims=True)).sum(axis=1)
    gt_image = sims[np.arange(n_cap) // k, np.arange(n_cap)]  # (n_cap,)
    t2i = (sims > gt_image[None, :]).sum(axis=0)
    return i2t, t2i


def _summary(prefix: str, r: np.ndarray) -> dict[str, float]:
    out = {f"{prefix}_r{k}": 100.0 * float(np.mean(r < k)) for k in (1, 5, 10)}
    out[f"{prefix}_medr"] = float(np.floor(np.median(r)) + 1)
    out[f"{prefix}_meanr"] = float(np.mean(r) + 1)
    return out


def _single(sims: np.ndarray, k: int) -> dict[str, float]:
    i2t, t2i = ranks(sims, k)
    out = {**_summary("i2t", i2t), **_summary("t2i", t2i)}
    out["rsum"] = sum(out[f"{d}_r{n}"] for d in ("i2t", "t2i") for n in (1, 5, 10))
    return {key: out[key] for key in KEYS}


def retrieval_metrics(sims: np.ndarray, captions_per_image: int = 5, folds: int = 1) -> dict[str, float]:
    """R@1/5/10 (percent), medr, meanr in both directions and rsum.

    `sims` is (n_images, n_captions) with caption j belonging to image j // captions_per_image.
    `folds=5` is the COCO 1K protocol: five blocks of n_images/5 images with their captions,
    metrics averaged over the blocks.
    """
    sims = np.asarray(sims)
    if folds == 1:
        return _single(sims, captions_per_image)
    return _mean(_per_fold(sims, captions_per_image, folds))


def _per_fold(sims: np.ndarray, k: int, folds: int) -> list[dict[str, float]]:
    """The metrics of each of the `folds` diagonal blocks of `sims` (a fold's images with their captions)."""
    n_img = sims.shape[0]
    if folds < 1 or n_img % folds:
        raise ValueError(f"{n_img} images cannot be split into {folds} equal folds")
    size = n_img // folds
    return [_single(sims[f * size:(f + 1) * size, f * size * k:(f + 1) * size * k], k) for f in range(folds)]


def _mean(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([r[key] for r in results])) for key in KEYS}


def protocols(folds: int | Sequence[int]) -> list[int]:
    """`eval.folds` as a list of protocols (an int is one protocol)."""
    return [int(folds)] if isinstance(folds, (int, np.integer)) else [int(f) for f in folds]


def check_folds(n_images: int, folds: int | Sequence[int], split: str) -> None:
    """Refuse protocols whose folds do not divide the split's images, before any scoring."""
    bad = [f for f in protocols(folds) if f < 1 or n_images % f]
    if bad:
        raise ValueError(f"eval.folds {protocols(folds)}: split '{split}' has {n_images} images, which cannot be "
                         f"split into {' or '.join(str(f) for f in bad)} equal folds")


def scored_folds(folds: int | Sequence[int]) -> list[int]:
    """The protocols whose diagonal blocks are scored for `folds`: each listed protocol none of whose
    blocks lie inside a coarser listed protocol's (g folds nest in f folds when f divides g). With 1
    listed, that is the whole matrix alone; with [5] (or [5, 10]), the five 1K blocks alone."""
    listed = sorted(set(protocols(folds)))
    return [g for g in listed if not any(g % f == 0 for f in listed if f < g)]


def fold_source(g: int, scored: Sequence[int]) -> int:
    """The coarsest scored protocol whose blocks hold the blocks of protocol g."""
    return min(f for f in scored if g % f == 0)


def block_metrics(blocks: dict[int, Sequence[np.ndarray]], captions_per_image: int,
                  folds: int | Sequence[int]) -> dict[int, dict[str, float]]:
    """The metrics of every protocol of `folds` from the diagonal blocks of the `scored_folds` protocols
    (`blocks[f]`: f blocks of n_images/f images x their captions, in order; `blocks[1]`: the whole matrix).
    A protocol g is averaged over its g blocks, sliced from its `fold_source`'s, so a protocol gets
    the same figures whether its blocks were scored alone or sliced from a larger matrix."""
    out = {}
    for g in protocols(folds):
        f = fold_source(g, list(blocks))
        if g == 1:
            out[g] = _single(np.asarray(blocks[1][0]), captions_per_image)
        else:
            out[g] = _mean([r for b in blocks[f] for r in _per_fold(np.asarray(b), captions_per_image, g // f)])
    return out


def metrics_by_folds(sims: np.ndarray, captions_per_image: int, folds: int | Sequence[int]) -> dict[int, dict[str, float]]:
    """`retrieval_metrics` of one whole matrix under every protocol of `folds`, in their order."""
    return block_metrics({1: [sims]}, captions_per_image, folds)
