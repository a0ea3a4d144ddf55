import io

import numpy as np
import pytest
from PIL import Image

from shards.image import BadImage, load_image, parse_size
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


# What a viewer must do to a picture stored with each EXIF orientation to
# show it upright (the standard's wording, as exiftool prints it), in NumPy.
UPRIGHT = {
    1: lambda a: a,                              # normal
    2: lambda a: a[:, ::-1],                     # mirror horizontal
    3: lambda a: a[::-1, ::-1],                  # rotate 180
    4: lambda a: a[::-1],                        # mirror vertical
    5: lambda a: np.rot90(a[:, ::-1], 1),        # mirror horizontal, rotate 270 CW
    6: lambda a: np.rot90(a, -1),                # rotate 90 CW
    7: lambda a: np.rot90(a[:, ::-1], -1),       # mirror horizontal, rotate 90 CW
    8: lambda a: np.rot90(a, 1),                 # rotate 270 CW
}
STORED = (400, 200)  # width, height of the JPEG as stored
TARGET = (100, 50)   # height, width: portrait, like the rotated orientations
# The JPEG scale the draft decode must use, by fit and by whether the picture
# turns on its side (orientations 5-8): it is chosen for the upright picture,
# so a decoder that ignored the rotation would pick another one.
DRAFT_SCALE = {("stretch", False): 2, ("stretch", True): 4, ("crop", False): 2, ("crop", True): 4,
               ("pad", False): 8, ("pad", True): 4}


def _encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def stored_picture():
    """(JPEG without EXIF, Image) of smooth random blocks, different in every direction."""
    rng = np.random.default_rng(2)
    blocks = np.kron(rng.integers(0, 256, (5, 10, 3)), np.ones((40, 40, 1))).astype(np.uint8)
    image = Image.fromarray(blocks)
    return _encode(image, "JPEG", quality=95), image


@pytest.mark.parametrize("draft", [False, True])
@pytest.mark.parametrize("fit", ["stretch", "crop", "pad"])
@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_gives_the_hand_transposed_pixels(stored_picture, orientation, fit, draft):
    plain, image = stored_picture
    exif = Image.Exif()
    exif[0x0112] = orientation
    # The same encoder on the same pixels: only the EXIF block differs.
    tagged = _encode(image, "JPEG", quality=95, exif=exif)
    decoded = load_image(tagged, TARGET, fit, draft=draft)

    with Image.open(io.BytesIO(plain)) as reference:
        if draft:
            scale = DRAFT_SCALE[(fit, orientation >= 5)]
            reference.draft("RGB", (STORED[0] // scale, STORED[1] // scale))
            assert reference.size == (STORED[0] // scale, STORED[1] // scale)
        upright = np.ascontiguousarray(UPRIGHT[orientation](np.asarray(reference.convert("RGB"))))
    # Lossless and without EXIF: load_image only resizes it, as it does the JPEG after turning it.
    expected = load_image(_encode(Image.fromarray(upright), "PNG"), TARGET, fit)
    assert np.array_equal(decoded, expected)


def test_the_default_size_is_written_once():
    from cli import cli
    from ingest import IngestSettings
    from shards.image import DEFAULT_SIZE, format_size

    image = Image.new("RGB", (300, 200), (10, 20, 30))
    assert load_image(_encode(image, "PNG")).shape == (*DEFAULT_SIZE, 3)
    assert IngestSettings().size == DEFAULT_SIZE
    [size_option] = [p for p in cli.commands["ingest"].params if p.name == "size"]
    assert parse_size(size_option.default) == DEFAULT_SIZE
    with pytest.raises(ValueError, match=f"e.g. {format_size(DEFAULT_SIZE)}."):
        parse_size("square")


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
