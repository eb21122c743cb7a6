import numpy as np
import pytest
from PIL import Image

from core.data.images import ImagePreprocess, load_image

PRE = ImagePreprocess(size=8, resize=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear")


def test_normalises_to_channels_first():
    out = PRE(Image.new("RGB", (8, 8), (255, 0, 128)))
    assert out.shape == (3, 8, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [(1 - 0.5) / 0.25, (0 - 0.5) / 0.25, (128 / 255 - 0.5) / 0.25], atol=1e-6)


def test_resizes_shorter_side_then_centre_crops():
    img = Image.new("RGB", (32, 16))
    img.paste((255, 255, 255), (12, 0, 20, 16))  # a white centre band
    out = PRE(img)  # 16 px tall -> 8 px: width 16, centre crop 8 = the band region
    assert out.shape == (3, 8, 8)
    assert out[:, :, 3:5].min() > 1.5  # white centre survives the crop


def test_grayscale_and_rgba_become_rgb(tmp_path):
    for mode in ("L", "RGBA", "CMYK"):
        path = tmp_path / f"x_{mode}.png" if mode != "CMYK" else tmp_path / "x.jpg"
        Image.new(mode, (5, 5)).save(path)
        assert load_image(path).mode == "RGB"


def test_unreadable_image_names_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg: cannot read image"):
        load_image(path)


def test_round_trip_dict():
    assert ImagePreprocess.from_dict(PRE.to_dict()) == PRE
