"""The search behind `itr-distill serve`, free of any web framework: a request's checks, its query
encoded and ranked, and the 4xx answer (`ApiError`) for one the API refuses.

`serve.py` maps HTTP onto this; keeping it apart keeps the framework in one module and leaves these
rules testable and reusable without it. The model and galleries load once (`load_searcher`), indexed
by `itr-distill search`'s helper, so each request only encodes its query and ranks.
"""
from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from export.runtime.index import GalleryIndex
from export.runtime.search import open_index

if TYPE_CHECKING:
    from export.runtime.session import OnnxStudent

K_MAX = 100  # the most hits one request may ask for
QUERY_MAX_CHARS = 1000  # longer captions are refused, not silently truncated by the tokenizer
THUMBNAIL_PX = 256


class ApiError(Exception):
    """A request the API refuses: answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def parse_k(value: Any, default: int) -> int:
    """The `k` of a request: an integer in 1..K_MAX (absent: the server's default)."""
    if value is None or value == "":
        return default
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        k = int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"k must be an integer, got {value!r}") from None
    if not 1 <= k <= K_MAX:
        raise ApiError(400, f"k must be between 1 and {K_MAX}, got {k}")
    return k


def decode_image(data: bytes, name: str) -> Any:
    """An uploaded image as RGB, with `core.data.images.load_image`'s checks; anything unreadable is a 415."""
    from core.data.images import ImageTooLarge, read_image

    if not data:
        raise ApiError(400, f"{name}: empty upload")
    try:
        return read_image(io.BytesIO(data), name)
    except ImageTooLarge as exc:
        raise ApiError(413, str(exc)) from None
    except ValueError as exc:
        raise ApiError(415, f"{exc} (not an image?)") from None


@dataclass
class Searcher:
    """The model and its galleries, loaded once; every request only encodes its query and ranks."""

    model: OnnxStudent
    images: GalleryIndex
    captions: GalleryIndex | None
    default_k: int = 5
    position: dict[str, int] = field(init=False, repr=False)  # image id -> its number in /image/{n}

    def __post_init__(self) -> None:
        self.position = {item: i for i, item in enumerate(self.images.ids)}

    def text(self, query: Any, k: Any) -> dict[str, Any]:
        if query is not None and not isinstance(query, str):
            raise ApiError(400, f"the query must be a string, got {type(query).__name__}")
        if not query or not query.strip():
            raise ApiError(400, "empty query: give a caption as `q` (GET) or `query` (POST JSON)")
        if len(query) > QUERY_MAX_CHARS:
            raise ApiError(400, f"query too long: {len(query)} characters (at most {QUERY_MAX_CHARS})")
        k = parse_k(k, self.default_k)
        start = time.perf_counter()
        hits = self.images.hits(self.model.encode_text([query])[0], k)
        latency = (time.perf_counter() - start) * 1e3
        return {"query": query, "k": k, "latency_ms": round(latency, 3),
                "hits": [{**h.__dict__, "url": f"/image/{self.position[h.id]}"} for h in hits]}

    def image(self, data: bytes, name: str, k: Any) -> dict[str, Any]:
        if self.captions is None:
            raise ApiError(404, "image search is off: this server has no caption gallery (start it with --captions FILE)")
        k = parse_k(k, self.default_k)
        img = decode_image(data, name)
        start = time.perf_counter()
        hits = self.captions.hits(self.model.encode_images([img])[0], k)
        latency = (time.perf_counter() - start) * 1e3
        return {"query": name, "k": k, "latency_ms": round(latency, 3), "hits": [h.__dict__ for h in hits]}

    def info(self) -> dict[str, Any]:
        """What the server holds, with the versions serving it (load test results record them)."""
        return {"images": len(self.images), "captions": len(self.captions) if self.captions else 0,
                "variant": self.model.variant, "providers": self.model.providers, "k": self.default_k,
                "k_max": K_MAX, "versions": _versions()}


def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for package in ("onnxruntime", "onnxruntime-gpu", "starlette", "uvicorn", "python-multipart"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


def load_searcher(args: argparse.Namespace) -> Searcher:
    """Load the export and index its galleries (the images one must hold images, `--captions` captions)."""
    from export.runtime.session import OnnxStudent

    if not 1 <= args.top_k <= K_MAX:
        raise ValueError(f"-k must be between 1 and {K_MAX}, got {args.top_k}")
    model = OnnxStudent(args.export_dir, args.variant, providers=args.device)
    images = open_index(model, args.gallery, args.index, args.batch_size)
    if images.modality != "image":
        raise ValueError("serve searches images by text: --gallery/--index must hold images (captions go in --captions)")
    captions = open_index(model, args.captions, None, args.batch_size) if args.captions else None
    if captions is not None and captions.modality != "text":
        raise ValueError(f"--captions {args.captions}: expected a text file with one caption per line")
    return Searcher(model, images, captions, args.top_k)


@lru_cache(maxsize=512)
def thumbnail(path: str) -> bytes:
    """A gallery image at most THUMBNAIL_PX on a side, as PNG (cached: the page shows the same hits often)."""
    from core.data.images import load_image

    img = load_image(path)
    img.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()
