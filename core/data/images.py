"""Image decoding and preprocessing with PIL + NumPy only.

Training, evaluation and the torch-free ONNX runtime all call this one function, so an exported
model sees exactly the pixels it was trained on. The parameters travel in the export manifest.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def load_image(path: str | Path) -> Image.Image:
    """Open an image as RGB, naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from exc


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
        image = image.convert("RGB")
        w, h = image.size
        scale = self.resize / min(w, h)
        new_w, new_h = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        if (new_w, new_h) != (w, h):
            image = image.resize((new_w, new_h), _RESAMPLE[self.interpolation])
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

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
