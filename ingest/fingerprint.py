"""A perceptual fingerprint per image, and near-duplicate groups from them.

The fingerprint is a 64-bit DCT hash (pHash): the picture in grey, shrunk to
32x32, its 2-D discrete cosine transform, and one bit per coefficient of the
8x8 lowest frequencies saying whether it lies above their median.

Why pHash and not the simpler difference hash (dHash, one bit per pair of
neighbours in a 9x8 thumbnail): both survive re-encoding, resizing and
brightness changes equally well (a brightness change scales the AC
coefficients, which leaves their order against the median as it was), but
dHash's 72 pixels cannot tell apart photos that share a layout: on
clothing-small (garments on plain backgrounds) 108 of every million pairs of
different photos lie within 4 bits, against 0.7 for pHash (figures in
docs/benchmarks.md, "Near-duplicate fingerprints"). The DCT of 32x32 is two
small matrix products: numpy only, microseconds an image. Decoding is the
cost, kept small by JPEG's 1/8-scale DCT decoding (see `fingerprint`).

A horizontal flip is not meant to match: a mirrored photo is a different
training example (and flip augmentation makes it one anyway).

Two images are near-duplicates when their fingerprints differ in at most
`distance` bits (Hamming distance). Candidate pairs are found by the
pigeonhole principle: cut the 64 bits into `distance + 1` bands; two
fingerprints within `distance` bits agree exactly on at least one band, so
only fingerprints sharing a band value are compared, never all pairs
(`near_pairs`; with more bands, several must agree: `_keys`).
"""
import contextlib
import itertools
import math
import warnings
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageOps

from shards.image import BadImage

BITS = 64
KIND = "phash64"
# Chosen from the measurements in docs/benchmarks.md: over 99% of
# re-encoded, resized and brightened variants of real photos lie within 6
# bits (and about 63% of 5% crops), against 2.3 in a million pairs of
# different photos; at 8 bits five times as many unrelated pairs would be
# grouped (and, under different labels, left out as likely label errors).
DEFAULT_DISTANCE = 6
MAX_DISTANCE = 15
# Grey levels (of 255): a thumbnail varying less than this is flat (see thumbnail_hash).
FLAT_GREY_STD = 2.0
# The colour check of a candidate pair (see `colour_layout`): mean difference of
# the chromaticity grids, in 1/255ths. Chosen from docs/benchmarks.md: over 99%
# of variants lie within it; most unrelated look-alikes (the same garment
# layout in another colour) do not.
MAX_COLOUR_DIFFERENCE = 2.5
_COLOUR_GRID = 4
# Side of the grey thumbnail transformed, and of the block of low frequencies kept.
_HASH_SIDE = 32
_LOW = 8
# Smallest side a picture is decoded at before the final resize to 32x32.
_MIN_SIDE = 32
_ROTATED = {5, 6, 7, 8}
_AC_MEDIAN = (_LOW * _LOW - 1) // 2


def _dct_matrix(n):
    k = np.arange(n)
    return np.cos(np.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n))


_DCT = _dct_matrix(_HASH_SIDE)


def phash(grey):
    """The 64-bit DCT hash (a Python int) of a 32x32 grey array."""
    grey = np.asarray(grey, dtype=np.float64)
    if grey.shape != (_HASH_SIDE, _HASH_SIDE):
        raise ValueError(f"phash needs a {_HASH_SIDE}x{_HASH_SIDE} grey array. Received: shape={grey.shape}")
    low = (_DCT[:_LOW] @ grey @ _DCT[:_LOW].T).ravel()
    # The median of the 63 AC coefficients (the DC term, mean brightness, would pull it): the 32nd smallest.
    median = np.partition(low[1:], _AC_MEDIAN)[_AC_MEDIAN]
    return int.from_bytes(np.packbits(low > median).tobytes(), "big")


def thumbnail_hash(image):
    """pHash of an open Pillow image (any mode, any size), or None for a flat picture.

    A picture of one colour (or nearly: a standard deviation of its grey
    thumbnail under FLAT_GREY_STD levels) has no shape to compare: its AC
    coefficients are rounding noise, so its hash would match other flat
    pictures at random. It gets no fingerprint and joins no group; exact
    copies of it are still found by their bytes.
    """
    grey = np.asarray(image.convert("L").resize((_HASH_SIDE, _HASH_SIDE), Image.Resampling.BOX))
    if grey.std() < FLAT_GREY_STD:
        return None
    return phash(grey)


class Print(NamedTuple):
    """What the scan learns from one decoded image."""

    value: object  # the 64-bit pHash (int), None for a flat picture
    height: int  # upright size as found, before any resizing
    width: int
    colour: tuple  # the chromaticity layout (see colour_layout), 32 bytes


def colour_layout(image):
    """Chromaticity (r, g of r + g + b) of a 4x4 grid of the picture, as 32 values in 0..255.

    pHash looks at grey levels only, so two photos of the same layout in
    different colours (a red and a green sweater laid out alike on one
    background) can share it. Chromaticity tells them apart, and a
    brightness change (which scales r, g and b alike) leaves it unchanged.
    Used only to confirm a candidate pair (`near_pairs(colours=...)`).
    """
    rgb = np.asarray(image.convert("RGB").resize((_COLOUR_GRID, _COLOUR_GRID), Image.Resampling.BOX),
                     dtype=np.float64) + 1
    chroma = rgb[:, :, :2] / rgb.sum(axis=2, keepdims=True)
    return tuple(int(v) for v in np.rint(chroma.ravel() * 255))


@contextlib.contextmanager
def _image(opened, max_pixels):
    """(image, width, height, EXIF orientation) of a binary file object, its header read, nothing decoded.

    Raises BadImage for a picture over `max_pixels` and turns any failure
    inside the block (a decode error is this file's problem) into BadImage.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(opened) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise BadImage(f"image too large: {width}x{height} is over the limit of {max_pixels:,} pixels")
                yield image, width, height, image.getexif().get(ExifTags.Base.Orientation, 1)
        except (BadImage, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - any decode failure is this file's problem
            raise BadImage(f"cannot decode: {type(exc).__name__}: {exc}") from None


def fingerprint(opened, max_pixels):
    """Print(fingerprint or None if flat, height, width, colour) of the image in a binary file object.

    height and width are the picture's upright size before any resizing.
    JPEGs are decoded at the smallest DCT scale (1/8) that keeps _MIN_SIDE
    pixels a side; other formats are decoded and reduced by an integer
    factor first. Raises BadImage for what cannot be decoded.
    """
    with _image(opened, max_pixels) as (image, width, height, orientation):
        if image.format == "JPEG":
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)) if min(width, height) >= 8 * _MIN_SIDE
                        else (_MIN_SIDE, _MIN_SIDE))
            image.load()
        else:
            image.load()
            factor = min(width, height) // _MIN_SIDE
            if factor > 1 and image.mode not in ("P", "1"):
                image = image.reduce(factor)
        if image.mode in ("RGBA", "LA", "P", "PA"):
            image = _on_white(image)
        if orientation != 1:
            image = ImageOps.exif_transpose(image)
        if orientation in _ROTATED:
            width, height = height, width
        return Print(thumbnail_hash(image), height, width, colour_layout(image))


def header_size(opened, max_pixels):
    """(height, width) upright, from the image header alone: nothing is decoded.

    What the scan records when near-duplicates are not looked for. Raises
    BadImage for a file Pillow cannot identify or one over `max_pixels`,
    as `fingerprint` does.
    """
    with _image(opened, max_pixels) as (_, width, height, orientation):
        return (width, height) if orientation in _ROTATED else (height, width)


def _on_white(image):
    """Transparent pixels as white, as the shards store them (shards.image._to_rgb)."""
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def hamming(a, b):
    """Bits in which two fingerprints (ints or uint64 arrays) differ."""
    return _popcount(np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64)))


def _popcount(values):
    return np.bitwise_count(np.asarray(values, dtype=np.uint64))


def _bands(count):
    """Bit masks of `count` bands covering the 64 bits, as even as can be."""
    widths = [BITS // count + (1 if i < BITS % count else 0) for i in range(count)]
    masks, start = [], 0
    for width in widths:
        masks.append(((1 << width) - 1) << start)
        start += width
    return masks


def _keys(count, distance):
    """The bit masks two fingerprints within `distance` bits must agree on, one of them at least.

    Pigeonhole: with `distance + extra` bands, `distance` differing bits
    spoil at most `distance` bands, so at least `extra` bands agree exactly;
    the masks are every combination of `extra` bands. `extra` = 1 is the
    plain d + 1 bands. More bands agreeing make longer keys, so far fewer
    fingerprints share one (fewer comparisons), at the price of more
    combinations to sort: the estimate below picks the cheaper for `count`.
    """
    def cost(extra):
        bands = distance + extra
        combos = math.comb(bands, extra)
        key_bits = BITS * extra / bands
        return combos * (count + count * count / 2 ** (key_bits + 1))

    extra = min(range(1, 5), key=cost)
    masks = _bands(distance + extra)
    return [sum(combo) for combo in itertools.combinations(masks, extra)]


def near_pairs(fingerprints, distance, colours=None):
    """Index pairs (i < j) of fingerprints within `distance` bits, as an (n, 2) int array, sorted.

    With `colours` (one colour_layout per fingerprint, or None where
    unknown), a pair also needs layouts within MAX_COLOUR_DIFFERENCE.

    Never all pairs: for each key mask (see `_keys`), the fingerprints are
    sorted by their bits under the mask and only neighbours within one run
    of equal keys are compared, offset by offset, in whole-array steps. The
    work grows with the sizes of those runs, not with the square of the count.
    Equal keys fall in the same part (`_parts`), and one part is sorted at a
    time, so the sorting's copies stay small however many fingerprints.
    """
    fps = np.asarray(fingerprints, dtype=np.uint64)
    found = []
    for mask in _keys(len(fps), distance):
        for part in _parts(fps, np.uint64(mask)):
            _pairs_within(fps, part, np.uint64(mask), distance, found)
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.unique(np.sort(np.concatenate(found).astype(np.int64), axis=1), axis=0)
    if colours is not None and isinstance(colours, np.ndarray):  # one row of 32 per fingerprint
        difference = np.abs(colours[pairs[:, 0]].astype(np.float64) - colours[pairs[:, 1]]).mean(axis=1)
        pairs = pairs[difference <= MAX_COLOUR_DIFFERENCE]
    elif colours is not None:
        pairs = pairs[[_same_colours(colours[a], colours[b]) for a, b in pairs]]
    return pairs


# Fingerprints per part of one key's search (see `_parts`).
PART_SIZE = 1 << 14
_SPREAD = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing's multiplier


def _parts(fps, mask):
    """Index arrays cutting `fps` into parts of about PART_SIZE, equal keys (fps & mask) in the same part."""
    count = max(1, len(fps) // PART_SIZE)
    if count == 1:
        yield np.arange(len(fps))
        return
    part_of = np.empty(len(fps), dtype=np.uint16)
    for start in range(0, len(fps), PART_SIZE):
        keys = fps[start:start + PART_SIZE] & mask
        # High key bits folded down first: a product's top bits see only the factors' lower bits.
        spread = (keys ^ (keys >> np.uint64(29))) * _SPREAD
        part_of[start:start + PART_SIZE] = (spread >> np.uint64(40)) % np.uint64(count)
    for part in range(count):
        yield np.flatnonzero(part_of == part)


def _pairs_within(fps, part, mask, distance, found):
    """Append to `found` the pairs (indices into fps) of `part` sharing a key and within `distance` bits."""
    mine = fps[part]
    keys = mine & mask
    order = np.argsort(keys, kind="stable")
    sorted_keys, sorted_fps, index = keys[order], mine[order], part[order]
    del keys, mine, order
    active = np.arange(len(sorted_fps) - 1)
    offset = 1
    while True:
        # Sorted keys: once a neighbour at some offset differs, farther ones differ too.
        active = active[sorted_keys[active] == sorted_keys[active + offset]]
        if not len(active):
            break
        near = active[np.bitwise_count(sorted_fps[active] ^ sorted_fps[active + offset]) <= distance]
        if len(near):
            found.append(np.stack([index[near], index[near + offset]], axis=1))
        offset += 1
        active = active[active + offset < len(sorted_fps)]


def _same_colours(a, b):
    if a is None or b is None:
        return True
    a, b = (np.frombuffer(v, dtype=np.uint8) if isinstance(v, bytes) else v for v in (a, b))
    return float(np.abs(np.subtract(a, b, dtype=np.float64)).mean()) <= MAX_COLOUR_DIFFERENCE


def groups(count, pairs):
    """Connected groups (lists of indices, sorted, 2 or more each) of `count` items joined by `pairs`.

    Union-find over the indices the pairs name (the others are alone):
    nothing per item, so it costs the same for 25,000 items as for 250,000.
    Groups come out ordered by their smallest index, so the result is a
    pure function of the input.
    """
    parent = {}

    def root(i):
        parent.setdefault(i, i)
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members = {}
    for i in sorted(parent):
        members.setdefault(root(i), []).append(i)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])
