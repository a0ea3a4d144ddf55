import io

import numpy as np
import pytest
from PIL import Image

from ingest.image import BadImage, load_image, parse_size
from tests.conftest import make_image


@pytest.mark.parametrize("fit", ["stretch", "crop", "pad"])
def test_every_fit_gives_the_requested_shape_and_dtype(tmp_path, fit):
    path = make_image(tmp_path / "a.jpg", 1, 3, size=(500, 375))
    image = load_image(str(path), (94, 125), fit)
    assert image.shape == (94, 125, 3)
    assert image.dtype == np.uint8


def test_pad_letterboxes_and_crop_fills(tmp_path):
    path = make_image(tmp_path / "tall.png", 1, 0, size=(50, 200), fmt="PNG")  # white-free red image, tall
    padded = load_image(str(path), (40, 40), "pad")
    cropped = load_image(str(path), (40, 40), "crop")
    assert padded[:, 0].max() == 0 and padded[:, -1].max() == 0  # black side bars
    assert cropped.min(axis=(0, 1))[0] > 150  # no bars: all red


def test_draft_decode_matches_full_decode_closely(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (12, 16, 3)), np.ones((32, 32, 1))).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    fast = load_image(str(tmp_path / "big.jpg"), (94, 125), draft=True).astype(float)
    full = load_image(str(tmp_path / "big.jpg"), (94, 125), draft=False).astype(float)
    assert np.abs(fast - full).mean() < 4


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (80, 40), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 40, 40))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree turn clockwise
    image.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = load_image(str(tmp_path / "rot.jpg"), (80, 40), "stretch")
    # After rotation the picture is 40 wide and 80 tall; blue is on top.
    assert out[5, 20, 2] > 200 and out[75, 20, 0] > 200


@pytest.mark.parametrize("mode", ["L", "CMYK", "P", "RGBA", "LA"])
def test_colour_modes_become_rgb(tmp_path, mode):
    fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    path = make_image(tmp_path / f"m.{fmt.lower()}", 1, 10, fmt=fmt, mode=mode)
    image = load_image(str(path), (20, 30))
    assert image.shape == (20, 30, 3)


def test_bytes_input_equals_path_input(tmp_path):
    path = make_image(tmp_path / "a.jpg", 0, 5, size=(300, 200))
    assert np.array_equal(load_image(str(path)), load_image(path.read_bytes()))


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert load_image(str(tmp_path / "t.png"), (10, 10)).min() == 255


@pytest.mark.parametrize("content, reason", [
    (b"", "not an image"),
    (b"hello, I am a text file", "not an image"),
])
def test_non_images_are_refused(tmp_path, content, reason):
    (tmp_path / "x.jpg").write_bytes(content)
    with pytest.raises(BadImage, match=reason):
        load_image(str(tmp_path / "x.jpg"))


def test_truncated_jpeg_is_refused(tmp_path):
    path = make_image(tmp_path / "a.jpg", 1, 1, size=(400, 300))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="corrupt"):
        load_image(str(path))


def test_too_many_pixels_are_refused(tmp_path):
    path = make_image(tmp_path / "a.png", 1, 1, size=(200, 100), fmt="PNG")
    with pytest.raises(BadImage, match="too large: 200x100"):
        load_image(str(path), max_pixels=19_999)


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(BadImage, match="unreadable"):
        load_image(str(tmp_path / "nope.jpg"))


@pytest.mark.parametrize("text, expected", [("94x125", (94, 125)), ("64X64", (64, 64))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["94", "ax3", "2x2", "0x100"])
def test_parse_size_rejects_bad_values(text):
    with pytest.raises(ValueError, match="Received"):
        parse_size(text)


def test_unknown_fit_names_the_argument():
    with pytest.raises(ValueError, match="fit must be one of"):
        load_image(io.BytesIO(b""), fit="squash")
