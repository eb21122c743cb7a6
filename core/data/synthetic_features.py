"""Synthetic precomputed region features at Flickr30K's shape, for a scale rehearsal of the pipeline.

Writes SCAN's format: `{split}_ims.npy` (float32, images x regions x dim) and `{split}_caps.txt`
(five captions per image, in image order), by default 29,000 / 1,014 / 1,000 images of 36 x 2048.

The signal makes words ground in regions. A fixed vocabulary of ~300 object nouns, ~20 attributes
and a few scenes each get a random unit direction in R^dim (drawn from the seed). An image holds
2-4 objects (a noun with an attribute), each covering a few regions whose feature is
`SIGNAL * s * (noun + ATTRIBUTE * attribute)` (s jitters per region, as crops cover objects
unevenly); every region adds the image's scene direction and unit gaussian noise. Projected on the
right noun a region has a signal-to-noise ratio of about 3, close to the ~2.9 that the best of 300
random nouns reaches by chance: one region is ambiguous, several regions or a learned projection
are not. Captions name 1-3 of the image's objects with their attributes ("a red dog next to a
wooden table in a park"), so a cross-attention teacher must match words to the regions that hold
them; the scene and the mean of the object regions give a dual encoder a weaker global cue.
Each split is written in blocks of images, each block from its own RNG seeded by (seed, split,
block): memory stays bounded and the same arguments write byte-identical files.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from core.io import atomic_path, write_text

REAL_NOUNS = """dog cat horse cow sheep bird duck goat pig rabbit bear deer fish table chair bench sofa bed
desk lamp clock vase bottle cup mug bowl plate spoon knife fork pot kettle oven sink mirror window door fence
wall roof tower bridge boat car truck bus train bicycle scooter wagon tractor kite ball racket skateboard surfboard
ski sled helmet hat cap scarf jacket coat shirt dress skirt boot shoe glove umbrella bag backpack basket box
suitcase book guitar drum piano violin camera phone laptop screen television radio tree bush flower plant rock
log barrel bucket ladder rope tent flag sign pole statue fountain sculpture cake pizza sandwich apple banana
carrot bread pie cookie candle pillow blanket towel curtain rug carpet tray jar shelf cabinet
drawer hammer shovel wheel tire balloon toy doll puppet mask crown ring necklace lion tiger zebra giraffe
elephant monkey mouse frog turtle snake owl eagle parrot swan goose chicken penguin whale dolphin shark crab
squirrel fox wolf camel donkey panda airplane helicopter rocket canoe kayak yacht ship anchor motorcycle van taxi
ambulance hammock swing slide trampoline net sweater vest belt tie sock sandal wallet purse watch bracelet teapot
pan grill stove fridge microwave toaster tomato potato onion lemon pear grape melon pumpkin cheese egg donut
burger cactus palm fern mushroom leaf branch stump""".split()
ATTRIBUTES: tuple[tuple[str, ...], ...] = (
    ("red",), ("blue",), ("green",), ("yellow",), ("black",), ("white",), ("brown",), ("orange",), ("pink",),
    ("purple",), ("grey", "gray"), ("small", "little"), ("large", "big"), ("tall",), ("wooden",), ("metal",),
    ("plastic",), ("glass",), ("old",), ("shiny",),
)
SCENES = ("in a park", "on a street", "at the beach", "in a kitchen", "in a field", "in a room", "by a lake",
          "in the snow")
PREFIXES = ("", "a photo of ", "there is ", "this picture shows ", "a view of ")  # one per caption of an image
CONNECTORS = (" and ", " next to ", " near ", " beside ", " with ")
N_NOUNS = 300
SIGNAL, ATTRIBUTE, CONTEXT = 3.0, 0.7, 1.0  # in units of the unit-variance noise per dimension
SPLITS = ("train", "val", "test")


def _pronounceable(n: int, taken: set[str]) -> list[str]:
    """`n` new consonant-vowel words, the same on every call (the vocabulary does not depend on the seed)."""
    rng = np.random.default_rng(1234)
    words: list[str] = []
    while len(words) < n:
        syllables = int(rng.integers(2, 4))
        word = "".join(str(rng.choice(list("bdfgklmnprstvz"))) + str(rng.choice(list("aeiou")))
                       for _ in range(syllables)) + str(rng.choice(["", "n", "r", "l", "s"]))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


_RESERVED = {w for text in (*SCENES, *PREFIXES, *CONNECTORS) for w in text.split()} | {w for a in ATTRIBUTES for w in a}
NOUNS: tuple[str, ...] = tuple(REAL_NOUNS) + tuple(_pronounceable(N_NOUNS - len(REAL_NOUNS), {*REAL_NOUNS, *_RESERVED}))


def concept_directions(seed: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit directions (float32) of the nouns, attributes and scenes: rows follow NOUNS, ATTRIBUTES, SCENES."""
    rng = np.random.default_rng([seed, 0])
    dirs = rng.standard_normal((len(NOUNS) + len(ATTRIBUTES) + len(SCENES), dim), dtype=np.float32)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return np.split(dirs, [len(NOUNS), len(NOUNS) + len(ATTRIBUTES)])


def _article(word: str) -> str:
    """`word` after "a" or "an"."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _captions(rng: np.random.Generator, nouns: np.ndarray, attrs: np.ndarray, scene: int, k: int) -> list[str]:
    """`k` captions naming 1-3 of the objects; the first five have different prefixes, so they differ."""
    out = []
    order = rng.permutation(len(PREFIXES))
    for i in range(k):
        named = rng.permutation(len(nouns))[: int(rng.integers(1, min(3, len(nouns)) + 1))]
        phrases = [_article(f"{rng.choice(ATTRIBUTES[attrs[j]])} {NOUNS[nouns[j]]}" if rng.random() < 0.8
                            else NOUNS[nouns[j]]) for j in named]
        text = phrases[0] + "".join(str(rng.choice(CONNECTORS)) + p for p in phrases[1:])
        out.append(PREFIXES[order[i % len(PREFIXES)]] + text + (" " + SCENES[scene] if rng.random() < 0.5 else ""))
    return out


def _block(rng: np.random.Generator, n: int, regions: int, dirs: tuple[np.ndarray, ...],
           captions_per_image: int) -> tuple[np.ndarray, list[str]]:
    """Features (n, regions, dim) and captions of `n` images."""
    noun_dirs, attr_dirs, scene_dirs = dirs
    n_obj = rng.integers(2, 5, n)
    nouns = np.argsort(rng.random((n, len(NOUNS))), axis=1)[:, :4]  # distinct nouns within an image
    attrs = rng.integers(0, len(ATTRIBUTES), (n, 4))
    scenes = rng.integers(0, len(SCENES), n)
    low = max(1, regions // 12)
    sizes = rng.integers(low, max(low, regions // 5) + 1, (n, 4)) * (np.arange(4) < n_obj[:, None])
    # object j holds positions ends[j-1]..ends[j] of a random permutation of the regions; label 4 is background
    ends = np.cumsum(sizes, axis=1)
    ranked = (np.arange(regions)[None, :, None] >= ends[:, None, :]).sum(-1)
    labels = np.empty_like(ranked)
    np.put_along_axis(labels, rng.permuted(np.tile(np.arange(regions), (n, 1)), axis=1), ranked, axis=1)
    objects = SIGNAL * (noun_dirs[nouns] + ATTRIBUTE * attr_dirs[attrs])  # (n, 4, dim)
    objects = np.concatenate([objects, np.zeros_like(objects[:, :1])], axis=1)
    strength = 0.6 + 0.8 * rng.random((n, regions), dtype=np.float32)
    feats = rng.standard_normal((n, regions, noun_dirs.shape[1]), dtype=np.float32)
    signal = objects[np.arange(n)[:, None], labels]
    feats += np.multiply(signal, strength[..., None], out=signal)
    feats += CONTEXT * scene_dirs[scenes][:, None, :]
    caps = [c for i in range(n)
            for c in _captions(rng, nouns[i, : n_obj[i]], attrs[i], int(scenes[i]), captions_per_image)]
    return feats, caps


def generate_features(root: str | Path, n_train: int, n_val: int, n_test: int, regions: int = 36, dim: int = 2048,
                      captions_per_image: int = 5, seed: int = 0, block_images: int = 256) -> dict:
    """Write the three splits' `_ims.npy` and `_caps.txt` into `root` (each file atomically); return a summary."""
    if min(n_train, n_val, n_test, regions, dim, captions_per_image, block_images) < 1:
        raise ValueError("image counts, regions, dim, captions_per_image and block_images must be positive")
    root = Path(root)
    dirs = concept_directions(seed, dim)
    summary: dict = {"root": str(root), "seed": seed, "regions": regions, "dim": dim, "splits": {}}
    for s, (split, count) in enumerate(zip(SPLITS, (n_train, n_val, n_test), strict=True)):
        captions: list[str] = []
        ims_path = root / f"{split}_ims.npy"
        with atomic_path(ims_path) as tmp:
            # the memmap writes the header and sizes the file; blocks go through plain writes, which leave
            # clean page cache behind rather than a mapping that grows to the whole file in resident memory
            offset = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, regions, dim)).offset
            with open(tmp, "r+b") as f:
                f.seek(offset)
                for b, start in enumerate(range(0, count, block_images)):
                    rng = np.random.default_rng([seed, s, b])
                    feats, caps = _block(rng, min(block_images, count - start), regions, dirs, captions_per_image)
                    f.write(memoryview(feats))
                    captions.extend(caps)
        write_text(root / f"{split}_caps.txt", "\n".join(captions) + "\n")
        summary["splits"][split] = {"images": count, "captions": len(captions),
                                    "bytes": ims_path.stat().st_size + (root / f"{split}_caps.txt").stat().st_size}
    summary["bytes"] = sum(v["bytes"] for v in summary["splits"].values())
    return summary


def main(argv: list[str] | None = None) -> int:
    """`python -m core.data.synthetic_features OUT_DIR [--train N ...]`: generate and print the summary as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--train", type=int, default=29000)
    ap.add_argument("--val", type=int, default=1014)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--regions", type=int, default=36)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--captions-per-image", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    summary = generate_features(args.out_dir, args.train, args.val, args.test, args.regions, args.dim,
                                args.captions_per_image, args.seed)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
