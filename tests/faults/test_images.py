"""Fault suite, image bytes: every file is decoded or refused with BadImage.

`load_image` is the one door from image files to pixels (ingest and predict
both use it), so whatever Pillow does with odd or damaged bytes must come
out of it as an array of the requested shape or as BadImage with a reason:
never another exception, never a hang.
"""
import contextlib
import io
import signal
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from shards.image import BadImage, load_image

SIZE = (16, 20)
# Generous per-file guard: a tiny image decodes in milliseconds.
HANG_SECONDS = 5


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds, what):
    def expire(signum, frame):
        raise Hang(f"{what} still decoding after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


# --- wide greyscale modes (issue 8, item 7) -----------------------------------

def _grey(values, dtype, mode=None):
    values = np.asarray(values).astype(dtype).reshape(24, 32)
    if mode:  # a raw mode such as I;16B, which fromarray does not take
        return Image.frombytes(mode, (32, 24), values.tobytes())
    return Image.fromarray(values)


MID = np.full(24 * 32, 0.5)
RAMP = np.linspace(0.0, 1.0, 24 * 32)  # left to right, top to bottom


@pytest.mark.parametrize("case, image, fmt, expected_mean", [
    ("16-bit PNG, mid-grey", lambda: _grey(MID * 65535, np.uint16), "PNG", 128),
    ("16-bit TIFF, mid-grey", lambda: _grey(MID * 65535, np.uint16), "TIFF", 128),
    ("16-bit big-endian TIFF, mid-grey", lambda: _grey(MID * 65535, ">u2", "I;16B"), "TIFF", 128),
    ("16-bit PNG, dark quarter", lambda: _grey(MID * 32768, np.uint16), "PNG", 64),
    ("32-bit integer TIFF, mid-grey in 16-bit range", lambda: _grey(MID * 65535, np.int32), "TIFF", 128),
    ("32-bit integer TIFF, wide ramp: min..max", lambda: _grey(RAMP * 4e9 - 2e9, np.int32), "TIFF", 128),
    ("float TIFF, mid-grey in 0..1", lambda: _grey(MID, np.float32), "TIFF", 128),
    ("float TIFF, ramp in 0..1000: min..max", lambda: _grey(RAMP * 1000, np.float32), "TIFF", 128),
])
def test_wide_greyscale_is_scaled_to_8_bits_not_clipped(case, image, fmt, expected_mean):
    data = encode(image(), fmt)
    pixels = load_image(data, SIZE)
    assert pixels.shape == (*SIZE, 3)
    assert abs(float(pixels.mean()) - expected_mean) <= 2, (case, float(pixels.mean()))
    assert (pixels[..., 0] == pixels[..., 2]).all()  # still grey


def test_wide_greyscale_keeps_its_contrast():
    pixels = load_image(encode(_grey(RAMP * 65535, np.uint16), "PNG"), (24, 32), draft=False)
    assert pixels[0, 0, 0] <= 2 and pixels[-1, -1, 0] >= 253


def test_float_nan_and_infinities_become_black_and_white_not_an_error():
    values = np.full(24 * 32, 0.5)
    values[:10], values[10:20], values[20:30] = np.nan, np.inf, -np.inf
    pixels = load_image(encode(_grey(values, np.float32), "TIFF"), (24, 32))
    assert pixels[0, 0, 0] == 0 and pixels[0, 12, 0] == 255 and pixels[0, 25, 0] == 0
    assert pixels[12, 12, 0] == 128


# --- files Pillow recognises but cannot decode (item 9) ------------------------

def dds_with_unknown_pixel_format():
    """A DDS header (recognised by Pillow) whose FOURCC pixel format it does not implement."""
    flags, height, width = 0x1007, 8, 8
    header = struct.pack("<3I", flags, height, width) + struct.pack("<3I", 0, 0, 0) + bytes(44)
    pixel_format = struct.pack("<4I", 32, 0x4, int.from_bytes(b"KIBL", "little"), 0) + bytes(16)
    caps = bytes(20)
    return b"DDS " + struct.pack("<I", 124) + header + pixel_format + caps + bytes(64)


def test_a_damaged_dds_file_is_refused_with_a_reason(tmp_path):
    path = tmp_path / "cat.999.jpg"
    path.write_bytes(dds_with_unknown_pixel_format())
    with pytest.raises(BadImage, match="NotImplementedError"):
        load_image(str(path))


# --- seeded fuzz of image bytes -----------------------------------------------

def _seed_picture():
    rng = np.random.default_rng(8)
    y, x = np.mgrid[0:36, 0:48]
    smooth = np.stack([x * 5, y * 7, (x + y) * 3], axis=-1)
    return Image.fromarray((smooth + rng.integers(0, 40, smooth.shape)).clip(0, 255).astype(np.uint8))


SEEDS = {
    "JPEG": lambda im: encode(im, "JPEG", quality=90),
    "PNG": lambda im: encode(im, "PNG"),
    "GIF": lambda im: encode(im.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"),
    "TIFF": lambda im: encode(im, "TIFF", compression="tiff_lzw"),
    "WEBP": lambda im: encode(im, "WEBP", quality=80),
    "BMP": lambda im: encode(im, "BMP"),
}
MUTANTS_PER_CASE = 10  # 6 formats x 5 mutations x 10 = 300 files


def bit_flips(data, rng):
    data = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        position = int(rng.integers(0, len(data)))
        data[position] ^= 1 << int(rng.integers(0, 8))
    return bytes(data)


def truncation(data, rng):
    return data[:int(rng.integers(1, len(data)))]


def insertion(data, rng):
    position = int(rng.integers(0, len(data)))
    return data[:position] + rng.bytes(int(rng.integers(1, 17))) + data[position:]


def deletion(data, rng):
    position = int(rng.integers(0, len(data) - 1))
    return data[:position] + data[position + int(rng.integers(1, 17)):]


def header_swap(data, rng, donors):
    """The first bytes of another format's file in front of this one's body."""
    other = donors[sorted(donors)[int(rng.integers(0, len(donors)))]]
    cut = int(rng.integers(2, 129))
    return other[:cut] + data[cut:]


MUTATIONS = {"bit flips": bit_flips, "truncation": truncation, "insertion": insertion,
             "deletion": deletion, "header swap": header_swap}


@pytest.fixture(scope="module")
def seeds():
    picture = _seed_picture()
    return {fmt: make(picture) for fmt, make in SEEDS.items()}


@pytest.fixture(scope="module")
def donors(seeds):
    """Headers to swap in: every seed's, and DDS's (Pillow opens it, then may not implement it)."""
    return {**seeds, "DDS": dds_with_unknown_pixel_format()}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
@pytest.mark.parametrize("fmt", sorted(SEEDS))
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF on the way
def test_mutated_images_decode_or_are_refused_never_crash_or_hang(seeds, donors, fmt, mutation):
    rng = np.random.default_rng(zlib.crc32(f"{fmt}/{mutation}".encode()))
    mutate = MUTATIONS[mutation]
    outcomes = {"decoded": 0, "refused": 0}
    for number in range(MUTANTS_PER_CASE):
        data = mutate(seeds[fmt], rng, donors) if mutation == "header swap" else mutate(seeds[fmt], rng)
        what = f"{fmt} {mutation} #{number}"
        try:
            with time_limit(HANG_SECONDS, what):
                pixels = load_image(data, SIZE, max_pixels=4_000_000)
        except BadImage as exc:
            assert str(exc), what  # a reason for the report
            outcomes["refused"] += 1
            continue
        assert pixels.shape == (*SIZE, 3) and pixels.dtype == np.uint8, what
        outcomes["decoded"] += 1
    assert sum(outcomes.values()) == MUTANTS_PER_CASE


def test_unmutated_seeds_all_decode(seeds):
    for fmt, data in seeds.items():
        assert load_image(data, SIZE).shape == (*SIZE, 3), fmt


# --- paths that are not regular files (item 10) --------------------------------

def _fifo(path):
    import os

    os.mkfifo(path)
    return path


def _folder(path):
    path.mkdir()
    return path


def _self_loop(path):
    path.symlink_to(path)
    return path


@pytest.mark.parametrize("make, reason", [
    (_fifo, "not a regular file (a FIFO)"),
    (_folder, "not a regular file (a folder)"),
    (_self_loop, "unreadable: Too many levels of symbolic links"),
])
def test_a_path_that_is_not_a_regular_file_is_refused_without_blocking(tmp_path, make, reason):
    path = make(tmp_path / "b.jpg")
    with time_limit(HANG_SECONDS, str(path)), pytest.raises(BadImage) as refused:
        load_image(str(path))
    assert str(refused.value) == reason
