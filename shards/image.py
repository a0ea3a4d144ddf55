"""Decode one image file into a fixed-size RGB array: the pixels a shard holds.

This is the only place in the project that turns an image file into pixels:
ingest calls it for every file it shards, and predict calls it on the user's
files, so a model always sees images prepared exactly as it was trained on.
It lives with the shard format because it defines what a shard's images are.
"""
import io
import os
import stat
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# (height, width) of a stored image unless the user asks otherwise: the
# tutorial's 375x500 photos at a quarter of their side. The one place the
# default size is written.
DEFAULT_SIZE = (94, 125)
FITS = ("stretch", "crop", "pad")
# Read by content (Pillow identifies the format), so a name only has to say
# "image": any case, .JPG as .jpg. GIF: its first frame; TIFF: its first page.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Pillow's own default limit (about 89 million pixels, a 9459x9459 image).
DEFAULT_MAX_PIXELS = 89_478_485
DRAFT_SLACK = 0.95
# EXIF orientations that swap width and height. ImageOps.exif_transpose
# applies every orientation, but only after decoding; the draft request is
# made before, so it must know which way the picture will stand.
_ROTATED = {5, 6, 7, 8}


class BadImage(Exception):
    """An image that cannot be used; the message is the reason, for reports."""


def format_size(size):
    """(94, 125) -> '94x125', the form `parse_size` reads."""
    return f"{size[0]}x{size[1]}"


def parse_size(text):
    """'64x80' -> (64, 80): height first, as everywhere in this project.

    Raises ValueError (the text is not a size), like int() does for a
    number: the caller knows whether it came from a user.
    """
    try:
        height, width = (int(part) for part in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like HEIGHTxWIDTH, e.g. {format_size(DEFAULT_SIZE)}. "
                         f"Received: {text!r}") from None
    if not (8 <= height <= 4096 and 8 <= width <= 4096):
        raise ValueError(f"size must be between 8 and 4096 pixels per side. Received: {text!r}")
    return height, width


def _draft_request(image_size, target, fit, rotated):
    """The size to pass to Image.draft so JPEG decoding scales down as far as it may.

    libjpeg decodes at 1/2, 1/4 or 1/8 scale nearly for free, with a proper
    low-pass in the DCT domain. We take the largest scale that leaves each
    side at least DRAFT_SLACK of what the fit needs; the last few pixels are
    made up by the resize. For Kaggle's 500x374 photos and 94x125 this means
    decoding at 1/4 (125x93) instead of 1/2: 1.5x faster, within 3.5 grey
    levels on average of a full decode plus bilinear resize.
    """
    width, height = image_size
    if rotated:
        width, height = height, width
    t_height, t_width = target
    if fit == "stretch":
        need_w, need_h = t_width, t_height
    else:
        pick = max if fit == "crop" else min
        scale = pick(t_width / width, t_height / height)
        need_w, need_h = width * scale, height * scale
    factor = 1
    for candidate in (8, 4, 2):
        if width / candidate >= need_w * DRAFT_SLACK and height / candidate >= need_h * DRAFT_SLACK:
            factor = candidate
            break
    # Pillow picks the scale as min(w // request_w, h // request_h), so asking
    # for the floor of the scaled size yields exactly `factor`.
    request = (max(1, width // factor), max(1, height // factor))
    return (request[1], request[0]) if rotated else request


# Greyscale modes wider than 8 bits. Pillow's convert("RGB") clips them
# (anything over 255 becomes white), so they are scaled here first.
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_UINT16_MAX = 65535


def _wide_to_l(image):
    """An 8-bit "L" image from a 16-bit, 32-bit integer or float greyscale image.

    16-bit images use their type's full range (0..65535 -> 0..255), as every
    viewer shows them. 32-bit integer ("I") images whose values all fit in
    0..65535 are scaled the same way: Pillow decodes many 16-bit files into
    mode "I". Float ("F") images whose values all lie in 0..1 are scaled by
    255, the usual convention for float pixels. Anything else has no standard
    range, so it is stretched from its own minimum to its maximum: that keeps
    the picture visible where clipping would give all black or all white.
    NaN becomes black; a constant image of that kind becomes black too.
    """
    values = np.asarray(image)
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        lo, hi = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
        if 0.0 <= lo and hi <= 1.0:
            lo, hi = 0.0, 1.0
    else:
        lo, hi = int(values.min()), int(values.max())
        if 0 <= lo and hi <= _UINT16_MAX:
            lo, hi = 0, _UINT16_MAX
    # float32 is exact enough for an 8-bit result and halves the memory of float64.
    scaled = (values.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / ((hi - lo) or 1))
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _to_rgb(image):
    if image.mode in _WIDE_GREY:
        image = _wide_to_l(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def _fit(image, target, fit):
    t_height, t_width = target
    resample = Image.Resampling.BILINEAR
    if fit == "stretch":
        return image.resize((t_width, t_height), resample)
    if fit == "crop":
        return ImageOps.fit(image, (t_width, t_height), method=resample)
    return ImageOps.pad(image, (t_width, t_height), method=resample, color=(0, 0, 0))


def _open_regular(path):
    """Open `path` for reading if it is a regular file (after symlinks); else BadImage.

    O_NONBLOCK keeps the open itself from waiting on a FIFO (which would
    block until a writer appears); fstat then refuses it, a device or a
    folder, with one stat of work per image.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise BadImage(f"unreadable: {exc.strerror or exc}") from None
    try:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind != "regular file":
            raise BadImage(f"not a regular file ({kind})")
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode):
    """A short name for the file type in an st_mode, for skip reasons."""
    for test, kind in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a file"


def load_image(source, size=DEFAULT_SIZE, fit="stretch", max_pixels=DEFAULT_MAX_PIXELS, draft=True):
    """Decode `source` and return a uint8 array of shape (height, width, 3).

    Args:
        source: a path, the file's bytes (as read from a zip archive) or an
            open binary file. A path must lead to a regular file.
        size: (height, width) of the result.
        fit: "stretch" resizes to `size` ignoring aspect (the tutorial's way),
            "crop" centre-crops to the aspect of `size` first, "pad" letterboxes
            with black.
        max_pixels: images with more pixels than this are refused.
        draft: let Pillow decode JPEGs at a reduced scale (1/2, 1/4, 1/8) when
            the result is small anyway; about twice as fast, same output size.

    EXIF orientation is applied; grayscale, CMYK, palette and RGBA images are
    converted to RGB (transparency composited onto white); 16-bit, 32-bit
    and float greyscale images are scaled to 8 bits (see `_wide_to_l`).

    Raises:
        BadImage: with a short reason, for anything that is not a usable image.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}. Received: fit={fit!r}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        opened = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        opened = _open_regular(source)
    else:
        opened = source
    try:
        array = _decode(opened, size, fit, max_pixels, draft)
    except (BadImage, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise BadImage("not an image (Pillow cannot identify it)") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise BadImage(f"unreadable: {exc.strerror or exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"corrupt image: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - one damaged file must never stop a run
        # Pillow's plugins raise what they like on damaged or unsupported data
        # (NotImplementedError for a DDS pixel format, struct.error, ...).
        # MemoryError is re-raised above and KeyboardInterrupt is not an
        # Exception: those concern the whole run, not this file.
        raise BadImage(f"cannot decode: {type(exc).__name__}: {exc}") from None
    finally:
        if opened is not source:
            opened.close()
    return array


def _decode(opened, size, fit, max_pixels, draft):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(opened) as image:
            pixels = image.size[0] * image.size[1]
            if pixels > max_pixels:
                raise BadImage(f"image too large: {image.size[0]}x{image.size[1]} "
                               f"is over the limit of {max_pixels:,} pixels")
            if draft and image.format == "JPEG":
                rotated = image.getexif().get(ExifTags.Base.Orientation, 1) in _ROTATED
                image.draft("RGB", _draft_request(image.size, size, fit, rotated))
            # Decodes, then turns the picture upright; in place, so an upright
            # picture (nearly all of them) costs no copy.
            ImageOps.exif_transpose(image, in_place=True)
            return np.asarray(_fit(_to_rgb(image), size, fit), dtype=np.uint8)


def is_image_name(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
