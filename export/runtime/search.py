"""`itr-distill search`: query an exported student from the command line, without torch.

A gallery is a directory of images (searched by text queries) or a text file with one caption per
line (searched by image queries). Building its index encodes the whole gallery once; `--save-index`
keeps it and `--index` reuses it, refused if another model built it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from export.runtime.index import GalleryIndex
from export.runtime.providers import PROVIDER_ALIASES

if TYPE_CHECKING:
    from export.runtime.session import OnnxStudent

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("export_dir", help="an export directory (manifest.json, *.onnx, tokenizer/)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--gallery", help="a directory of images, or a .txt file with one caption per line")
    source.add_argument("--index", help="a saved index directory (from --save-index)")
    p.add_argument("--save-index", metavar="DIR", help="save the gallery's index here for later searches")
    p.add_argument("--query", action="append", default=[], help="text query against an image gallery (repeatable)")
    p.add_argument("--image", action="append", default=[], help="image query against a caption gallery (repeatable)")
    p.add_argument("-k", "--top-k", type=int, default=5, help="results per query (default 5)")
    p.add_argument("--variant", default="fp32", help="exported variant: fp32, optimized, fp16, int8 (default fp32)")
    p.add_argument("--device", default="cpu", choices=sorted(PROVIDER_ALIASES), help="execution provider (default cpu)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true", help="print results as JSON")


def _gallery_items(path: Path) -> tuple[str, list[str]]:
    """('image', sorted image paths) for a directory, ('text', captions) for a text file."""
    if path.is_dir():
        files = sorted(str(f) for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not files:
            raise ValueError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this directory")
        return "image", files
    if path.is_file():
        try:
            captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc})") from exc
        if not captions:
            raise ValueError(f"{path}: no captions (expected one per line)")
        return "text", captions
    raise FileNotFoundError(f"{path}: no such gallery directory or caption file")


def build_index(model: "OnnxStudent", gallery: str | Path, batch_size: int = 64) -> GalleryIndex:
    modality, items = _gallery_items(Path(gallery))
    emb = model.encode_image_files(items, batch_size) if modality == "image" else model.encode_text(items, batch_size)
    return GalleryIndex(emb, items, modality, {**model.model_id, "variant": model.variant})


def open_index(model: "OnnxStudent", gallery: str | Path | None = None, index: str | Path | None = None,
               batch_size: int = 64) -> GalleryIndex:
    """A saved index (refused if another model built it), else `gallery` encoded once: `search` and `serve` share it."""
    if index:
        return GalleryIndex.load(index, expect_model=model.model_id)
    if gallery is None:
        raise ValueError("give a gallery (images or captions) or a saved index")
    return build_index(model, gallery, batch_size)


def search(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.top_k <= 0:
        raise ValueError(f"--top-k must be positive, got {args.top_k}")
    if not args.query and not args.image and not args.save_index:
        raise ValueError("nothing to do: give --query TEXT or --image PATH (or --save-index DIR)")
    from export.runtime.session import OnnxStudent  # onnxruntime loads only when a search runs, not with the CLI

    model = OnnxStudent(args.export_dir, args.variant, providers=args.device)
    index = open_index(model, args.gallery, args.index, args.batch_size)
    if args.save_index:
        index.save(args.save_index)
    if args.query and index.modality != "image":
        raise ValueError("--query searches images, but the gallery holds captions (use --image, or an image gallery)")
    if args.image and index.modality != "text":
        raise ValueError("--image searches captions, but the gallery holds images (use --query, or a caption file)")
    queries = [("text", q) for q in args.query] + [("image", q) for q in args.image]
    if not queries:
        return []
    texts = [q for kind, q in queries if kind == "text"]
    images = [q for kind, q in queries if kind == "image"]
    embeddings = model.encode_text(texts) if texts else model.encode_image_files(images)
    results = []
    for (kind, query), emb in zip(queries, embeddings, strict=True):
        hits = index.hits(emb, args.top_k)
        results.append({"query": query, "kind": kind, "hits": [h.__dict__ for h in hits]})
    return results


def main(args: argparse.Namespace) -> int:
    results = search(args)
    if args.json:
        json.dump(results, sys.stdout, indent=2, ensure_ascii=False)
        print()
        return 0
    for result in results:
        print(f"{result['kind']} query: {result['query']}")
        for hit in result["hits"]:
            print(f"  {hit['rank']:>3}  {hit['score']:.4f}  {hit['id']}")
    if args.save_index:
        print(f"index saved to {args.save_index}", file=sys.stderr)
    return 0
