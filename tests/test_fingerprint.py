"""The perceptual fingerprint (ingest.fingerprint): robust to copies, apart for different pictures, and
candidate pairs found by bucketing exactly as all-pairs would find them."""
import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from ingest.fingerprint import DEFAULT_DISTANCE, fingerprint, groups, hamming, near_pairs

MAX_PIXELS = 10 ** 8


def textured(seed, size=(96, 128)):
    """A picture with a shape of its own: 6x8 random blocks, smoothed, plus a little noise."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size[::-1], Image.BILINEAR)
    pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-10, 10, (*size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def encoded(image, fmt="JPEG", **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    buffer.seek(0)
    return buffer


def fp(image, fmt="JPEG", **kwargs):
    return fingerprint(encoded(image, fmt, **kwargs), MAX_PIXELS)[0]


VARIANTS = [
    ("jpeg q50", lambda im: (im, {"quality": 50})),
    ("resize 50%", lambda im: (im.resize((im.width // 2, im.height // 2), Image.BILINEAR), {"quality": 90})),
    ("resize 200%", lambda im: (im.resize((im.width * 2, im.height * 2), Image.BICUBIC), {"quality": 90})),
    ("brightness +20%", lambda im: (ImageEnhance.Brightness(im).enhance(1.2), {"quality": 90})),
    ("brightness -20%", lambda im: (ImageEnhance.Brightness(im).enhance(0.8), {"quality": 90})),
]


@pytest.mark.parametrize("name,make", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_a_copy_stays_within_the_default_distance(name, make):
    for seed in range(5):
        original = textured(seed)
        image, kwargs = make(original)
        assert hamming(fp(original, quality=95), fp(image, **kwargs)) <= DEFAULT_DISTANCE, (name, seed)


def test_different_pictures_lie_far_apart_and_a_flip_is_not_a_copy():
    prints = np.array([fp(textured(seed), quality=90) for seed in range(30)], dtype=np.uint64)
    distances = np.bitwise_count(prints[:, None] ^ prints[None, :])[np.triu_indices(30, 1)]
    assert distances.min() > DEFAULT_DISTANCE
    image = textured(3)
    assert hamming(fp(image), fp(image.transpose(Image.FLIP_LEFT_RIGHT))) > DEFAULT_DISTANCE


def test_png_with_transparency_and_exif_rotation_give_the_upright_size():
    image = textured(7, size=(300, 400)).convert("RGBA")
    value, height, width, _ = fingerprint(encoded(image, "PNG"), MAX_PIXELS)
    assert (height, width) == (300, 400) and hamming(value, fp(image.convert("RGB"), quality=95)) <= DEFAULT_DISTANCE
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated a quarter turn
    _, height, width, _ = fingerprint(encoded(textured(8, size=(300, 400)), exif=exif.tobytes()), MAX_PIXELS)
    assert (height, width) == (400, 300)


def test_a_flat_picture_has_no_fingerprint():
    assert fingerprint(encoded(Image.new("RGB", (64, 48), (200, 30, 40))), MAX_PIXELS)[0] is None


@pytest.mark.parametrize("distance", [0, 3, 6, 10, 15])
def test_bucketed_pairs_equal_all_pairs(distance):
    rng = np.random.default_rng(distance)
    prints = rng.integers(0, 2 ** 63, size=1500, dtype=np.int64).astype(np.uint64)
    # Planted near-copies at every distance from 0 to distance + 2.
    for i in range(300):
        flips = rng.choice(64, size=i % (distance + 3), replace=False)
        prints[1000 + i % 500] = prints[i] ^ np.uint64(sum(1 << int(b) for b in flips))
    every = np.bitwise_count(prints[:, None] ^ prints[None, :])
    i, j = np.nonzero(np.triu(every <= distance, 1))
    assert sorted(zip(i.tolist(), j.tolist())) == [tuple(p) for p in near_pairs(prints, distance).tolist()]


def test_groups_join_chains_and_leave_singletons_out():
    assert groups(8, [(0, 1), (6, 5), (1, 2)]) == [[0, 1, 2], [5, 6]]
    assert groups(3, np.empty((0, 2), dtype=np.int64)) == []


def test_the_colour_check_keeps_copies_and_parts_look_alikes_in_another_colour():
    from ingest.fingerprint import MAX_COLOUR_DIFFERENCE, colour_layout

    image = textured(11)
    brighter = ImageEnhance.Brightness(image).enhance(1.2)
    swapped = Image.merge("RGB", image.split()[::-1])  # the same layout, red and blue exchanged
    own = colour_layout(image)
    assert np.abs(np.subtract(own, colour_layout(brighter))).mean() <= MAX_COLOUR_DIFFERENCE
    assert np.abs(np.subtract(own, colour_layout(swapped))).mean() > MAX_COLOUR_DIFFERENCE
    prints = np.array([5, 5, 5], dtype=np.uint64)
    assert near_pairs(prints, 0, [own, colour_layout(swapped), None]).tolist() == [[0, 2], [1, 2]]
