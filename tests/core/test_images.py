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


def _palette_with_transparency() -> Image.Image:
    img = Image.new("P", (2, 1), 0)
    img.putpalette([10, 20, 30, 200, 0, 0])
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0  # palette entry 0 is transparent
    return img


def _grey16(mode: str, values: list[int]) -> Image.Image:
    dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
    return Image.frombytes(mode, (len(values), 1), np.asarray(values, dtype=dtype).tobytes())


# (image, file name, expected RGB of each pixel of the first row): what a file of each mode decodes to
ODD_MODES = {
    "L": (Image.new("L", (2, 1), 100), "l.png", [(100, 100, 100)] * 2),
    "1": (Image.new("1", (2, 1), 1), "bw.png", [(255, 255, 255)] * 2),
    "P+transparency": (_palette_with_transparency(), "p.png", [(255, 255, 255), (200, 0, 0)]),
    "RGBA": (Image.new("RGBA", (2, 1), (0, 0, 0, 0)), "rgba.png", [(255, 255, 255)] * 2),
    "RGBA half": (Image.new("RGBA", (1, 1), (0, 0, 255, 128)), "half.png", [(127, 127, 255)]),
    "LA": (Image.new("LA", (1, 1), (0, 255)), "la.png", [(0, 0, 0)]),
    "CMYK": (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "cmyk.jpg", [(255, 0, 0)] * 8),
    "I;16": (_grey16("I;16", [0, 257 * 100, 65535]), "g16.png", [(0, 0, 0), (100, 100, 100), (255, 255, 255)]),
    "I;16B": (_grey16("I;16B", [0, 257 * 100, 65535]), "g16b.tif", [(0, 0, 0), (100, 100, 100), (255, 255, 255)]),
    "I": (_grey16("I", [0, 257 * 100, 65535, 70000]), "i32.tif", [(0, 0, 0), (100, 100, 100)] + [(255, 255, 255)] * 2),
}


@pytest.mark.parametrize("case", list(ODD_MODES))
def test_every_mode_decodes_to_correct_rgb(tmp_path, case):
    image, name, expected = ODD_MODES[case]
    image.save(tmp_path / name)
    out = load_image(tmp_path / name)
    assert out.mode == "RGB"
    row = [out.getpixel((x, 0)) for x in range(len(expected))]
    np.testing.assert_allclose(row, expected, atol=2)  # CMYK goes through lossy JPEG
    assert PRE(out).shape == (3, 8, 8)


def test_preprocess_rescales_16_bit_images_given_directly():
    """convert('RGB') would clip every 16-bit value above 255 to white."""
    direct = PRE(_grey16("I;16", [257 * 100] * 4))
    np.testing.assert_allclose(direct, PRE(Image.new("RGB", (4, 1), (100, 100, 100))))


def _jpeg(path, size=(256, 256)):
    pixels = np.random.default_rng(0).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def _png(path):
    Image.new("RGB", (64, 64), 5).save(path)
    return path


def _cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _bytes(path, data: bytes):
    path.write_bytes(data)
    return path


# kind -> (make the file in a directory, what the error says)
BAD_FILES = {
    "corrupt": (lambda d: _bytes(d / "broken.jpg", b"not an image"), "cannot read image"),
    "empty": (lambda d: _bytes(d / "empty.png", b""), "cannot read image"),
    "truncated JPEG": (lambda d: _cut_in_half(_jpeg(d / "half.jpg")), "image file is truncated"),
    "truncated PNG": (lambda d: _cut_in_half(_png(d / "half.png")), "image file is truncated"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
@pytest.mark.parametrize("draft", [None, (64, 64)])
def test_bad_image_files_name_the_file_and_the_problem(tmp_path, kind, draft):
    make, message = BAD_FILES[kind]
    path = make(tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        load_image(path, draft=draft)
    assert str(path) in str(info.value)


def test_missing_image_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jpg: image file not found"):
        load_image(tmp_path / "nowhere.jpg")


@pytest.mark.parametrize("limit", [40, 20])  # 64 pixels: PIL warns above the limit and fails above twice it
def test_decompression_bomb_is_refused(tmp_path, monkeypatch, limit):
    path = tmp_path / "bomb.png"
    Image.new("RGB", (8, 8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(ValueError, match="bomb.png: image too large .*exceeds limit"):
        load_image(path)


def test_draft_decodes_jpeg_smaller(tmp_path):
    path = _jpeg(tmp_path / "big.jpg", (512, 384))
    assert load_image(path).size == (512, 384)
    assert load_image(path, draft=(64, 64)).size == (128, 96)  # 1/4 scale: the smallest with both sides >= 64


def test_round_trip_dict():
    assert ImagePreprocess.from_dict(PRE.to_dict()) == PRE
