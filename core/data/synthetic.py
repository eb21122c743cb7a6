"""Synthetic scenes where fine-grained alignment matters, written in Karpathy format.

Each image holds 2-4 objects with a shape, a colour and a size at a grid position. Images come in
*families*: a base scene and variants that permute the colours, sizes or positions among its
objects. Every member of a family therefore has the same multiset of attribute words, so a model
that matches bags of words cannot tell them apart; only binding attributes to objects ("red
circle", not "red" and "circle") and reading the spatial relations can. Five differently worded
captions per image (synonyms, both directions of a relation, different object pairs) state both.
Deterministic by seed: the same seed writes byte-identical files.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from core.io import atomic_dir, write_json

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (50, 185, 70),
    "blue": (55, 95, 235),
    "yellow": (235, 215, 50),
    "purple": (160, 70, 210),
    "white": (235, 235, 235),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of"),
    "right": ("to the right of", "right of"),
    "above": ("above", "over"),
    "below": ("below", "under"),
}
INVERSE = {"left": "right", "right": "left", "above": "below", "below": "above"}
GRID = 3  # objects sit in distinct cells of a GRID x GRID layout
JSON_NAME = "dataset_synthetic.json"
IMAGE_DIR = "images"  # beside the JSON, the Karpathy image root


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    cell: tuple[int, int]  # (row, col)


def relation(a: SceneObject, b: SceneObject) -> str:
    """Where `a` is relative to `b`: the dominant axis of their cell offset."""
    dr, dc = a.cell[0] - b.cell[0], a.cell[1] - b.cell[1]
    if abs(dc) >= abs(dr):
        return "left" if dc < 0 else "right"
    return "above" if dr < 0 else "below"


def _random_scene(rng: np.random.Generator, n_objects: int) -> list[SceneObject]:
    shapes = rng.choice(list(SHAPE_WORDS), size=n_objects, replace=False)
    colours = rng.choice(list(COLOURS), size=n_objects, replace=False)
    sizes = rng.choice(list(SIZE_WORDS), size=n_objects)
    if n_objects >= 2 and len(set(sizes)) == 1:  # make size a distinguishing attribute too
        sizes[rng.integers(n_objects)] = "small" if sizes[0] == "large" else "large"
    cells = rng.choice(GRID * GRID, size=n_objects, replace=False)
    return [
        SceneObject(str(s), str(c), str(z), (int(k) // GRID, int(k) % GRID))
        for s, c, z, k in zip(shapes, colours, sizes, cells, strict=True)
    ]


def _key(scene: list[SceneObject]) -> frozenset:
    return frozenset(scene)


def _variant(rng: np.random.Generator, scene: list[SceneObject]) -> list[SceneObject]:
    """Permute one attribute (colour, size or position) among the objects of `scene`."""
    attribute = ("colour", "size", "cell")[int(rng.integers(3))]
    values = [getattr(o, attribute) for o in scene]
    perm = rng.permutation(len(scene))
    return [replace(o, **{attribute: values[p]}) for o, p in zip(scene, perm, strict=True)]


def make_family(rng: np.random.Generator, size: int, min_objects: int, max_objects: int) -> list[list[SceneObject]]:
    """A base scene and `size - 1` distinct variants sharing its multiset of attribute words."""
    while True:
        base = _random_scene(rng, int(rng.integers(min_objects, max_objects + 1)))
        family, keys = [base], {_key(base)}
        for _ in range(50 * size):
            if len(family) == size:
                return family
            candidate = _variant(rng, family[int(rng.integers(len(family)))])
            if _key(candidate) not in keys:
                family.append(candidate)
                keys.add(_key(candidate))
        # too few distinct variants exist for this base (e.g. identical sizes); draw another base


def _phrase(rng: np.random.Generator, obj: SceneObject, with_size: bool) -> str:
    shape = str(rng.choice(SHAPE_WORDS[obj.shape]))
    if with_size:
        return f"{rng.choice(SIZE_WORDS[obj.size])} {obj.colour} {shape}"
    return f"{obj.colour} {shape}"


def _relation_caption(rng: np.random.Generator, a: SceneObject, b: SceneObject, style: int) -> str:
    rel = relation(a, b)
    if style % 2 == 1:  # state it the other way round
        a, b, rel = b, a, INVERSE[rel]
    words = str(rng.choice(RELATION_WORDS[rel]))
    if style == 0:
        return f"a {_phrase(rng, a, True)} {words} a {_phrase(rng, b, True)}"
    if style == 1:
        return f"the {_phrase(rng, a, True)} is {words} the {_phrase(rng, b, True)}"
    if style == 2:
        return f"there is a {_phrase(rng, a, False)} {words} a {_phrase(rng, b, True)}"
    return f"a {_phrase(rng, a, True)} sits {words} the {_phrase(rng, b, False)}"


def captions_for(rng: np.random.Generator, scene: list[SceneObject]) -> list[str]:
    """Five captions: four relation statements over different object pairs, one full inventory."""
    pairs = [(i, j) for i in range(len(scene)) for j in range(i + 1, len(scene))]
    order = rng.permutation(len(pairs))
    out = []
    for style in range(4):
        i, j = pairs[int(order[style % len(pairs)])]
        a, b = (scene[i], scene[j]) if rng.random() < 0.5 else (scene[j], scene[i])
        out.append(_relation_caption(rng, a, b, style))
    listed = [f"a {_phrase(rng, o, True)}" for o in sorted(scene, key=lambda o: o.cell[1] * GRID + o.cell[0])]
    out.append(("from left to right: " if rng.random() < 0.5 else "left to right there are ") + ", ".join(listed))
    return out


def render(scene: list[SceneObject], image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the scene (4x supersampled, then downscaled) on a slightly noisy dark background."""
    scale = 4
    big = image_size * scale
    cell = big / GRID
    img = Image.new("RGB", (big, big), (40, 40, 48))
    draw = ImageDraw.Draw(img)
    for obj in scene:
        radius = cell * (0.42 if obj.size == "large" else 0.22)
        cx = (obj.cell[1] + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        cy = (obj.cell[0] + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
        elif obj.shape == "square":
            r = radius * 0.9
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
        elif obj.shape == "triangle":
            pts = [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
            draw.polygon(pts, fill=colour)
        else:  # diamond
            draw.polygon([(cx, cy - radius), (cx + radius * 0.75, cy), (cx, cy + radius), (cx - radius * 0.75, cy)], fill=colour)
    small = np.asarray(img.resize((image_size, image_size), Image.Resampling.LANCZOS), dtype=np.int16)
    noise = rng.integers(-6, 7, size=small.shape, dtype=np.int16)
    return Image.fromarray(np.clip(small + noise, 0, 255).astype(np.uint8))


def generate(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    n_test: int,
    image_size: int = 64,
    family_size: int = 4,
    min_objects: int = 2,
    max_objects: int = 3,
    seed: int = 0,
) -> Path:
    """Write `images/*.png` and `dataset_synthetic.json` into `out_dir` (atomically); return the JSON path."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    entries = []
    with atomic_dir(out_dir) as tmp:
        (tmp / IMAGE_DIR).mkdir()
        for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
            scenes: list[list[SceneObject]] = []
            while len(scenes) < count:
                scenes.extend(make_family(rng, family_size, min_objects, max_objects))
            for index, scene in enumerate(scenes[:count]):
                filename = f"{split}_{index:05d}.png"
                render(scene, image_size, rng).save(tmp / IMAGE_DIR / filename)
                captions = captions_for(rng, scene)
                entries.append(
                    {
                        "filename": filename,
                        "split": split,
                        "imgid": len(entries),
                        "family": index // family_size,
                        "scene": [
                            {"shape": o.shape, "colour": o.colour, "size": o.size, "row": o.cell[0], "col": o.cell[1]}
                            for o in scene
                        ],
                        "sentences": [{"raw": c, "tokens": c.replace(",", "").split()} for c in captions],
                    }
                )
        write_json(tmp / JSON_NAME, {"dataset": "synthetic-scenes", "seed": seed, "images": entries})
    return out_dir / JSON_NAME
