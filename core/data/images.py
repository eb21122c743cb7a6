"""Image decoding and preprocessing with PIL + NumPy only.

Training, evaluation and the torch-free ONNX runtime all call this one function, so an exported
model sees exactly the pixels it was trained on. The parameters travel in the export manifest.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
from PIL import Image

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
# 16-bit grey; mode I (32-bit integers, how older Pillow read 16-bit PNGs) is taken as 16-bit too
_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_WHITE = (255, 255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode PIL decodes.

    PIL's convert('RGB') clips 16-bit grey to white and drops transparency, which shows whatever
    colour the file keeps under transparent pixels; here grey is rescaled from 16 to 8 bits and
    transparent pixels are composited over white.
    """
    if image.mode in _WIDE_GREY:
        grey = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257  # 65535 -> 255
        return Image.fromarray(np.round(grey).astype(np.uint8), "L").convert("RGB")
    if image.has_transparency_data:
        return Image.alpha_composite(Image.new("RGBA", image.size, _WHITE), image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path, draft: tuple[int, int] | None = None) -> Image.Image:
    """Open an image as 8-bit RGB; a missing, unreadable, truncated or oversized file raises an error
    naming it and the problem.

    `draft` lets a JPEG decode at a reduced scale no smaller than that size, which is faster and
    still reads every byte, so truncation is still caught (the pre-training check uses it).
    Images over PIL's `Image.MAX_IMAGE_PIXELS` are refused (PIL itself only warns up to twice it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    return read_image(path, str(path), draft)


class ImageTooLarge(ValueError):
    """An image over PIL's `Image.MAX_IMAGE_PIXELS` (a decompression bomb, or a mistake)."""


def read_image(source: Path | BinaryIO, name: str, draft: tuple[int, int] | None = None) -> Image.Image:
    """`load_image` of a file or an open binary stream (an upload); errors name the image as `name`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                if draft is not None:
                    img.draft("RGB", draft)
                img.load()
                return to_rgb(img)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageTooLarge(f"{name}: image too large ({exc})") from exc
    except Exception as exc:  # PIL's plugins raise many types on corrupt bytes (OSError, SyntaxError, struct.error...)
        raise ValueError(f"{name}: cannot read image ({exc})") from exc


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize the shorter side to `resize`, centre-crop `size`, scale to [0, 1], normalise."""

    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Literal["bilinear", "bicubic"] = "bicubic"

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Return a float32 array (3, size, size)."""
        return self.normalise(self.crop(image))

    def crop(self, image: Image.Image) -> np.ndarray:
        """The resized, centre-cropped pixels as uint8 (size, size, 3): every step before normalisation,
        which is what the uint8 image cache stores (core/data/image_cache.py)."""
        image = to_rgb(image)
        w, h = image.size
        scale = self.resize / min(w, h)
        new_w, new_h = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), _RESAMPLE[self.interpolation])
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        return np.asarray(image.crop((left, top, left + self.size, top + self.size)), dtype=np.uint8)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (size, size, 3) from `crop` to the float32 (3, size, size) a model reads: / 255, minus
        the mean, over the std. Each channel's 256 possible
        results are computed once (`_table`, the same float32 arithmetic) and looked up: the same
        values, several times faster per image."""
        channels = np.ascontiguousarray(pixels.transpose(2, 0, 1))
        out = np.empty(channels.shape, dtype=np.float32)
        for c in range(channels.shape[0]):
            np.take(self._table[c], channels[c], out=out[c])
        return out

    @cached_property
    def _table(self) -> np.ndarray:
        """(3, 256) float32: channel c's normalised value of each uint8 value."""
        values = np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1) / 255.0  # laid out as pixels
        values = (values - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(values.T)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImagePreprocess":
        return cls(
            size=int(data["size"]),
            resize=int(data["resize"]),
            mean=tuple(float(x) for x in data["mean"]),
            std=tuple(float(x) for x in data["std"]),
            interpolation=data.get("interpolation", "bicubic"),
        )
