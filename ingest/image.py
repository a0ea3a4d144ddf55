"""Decode one image file into a fixed-size RGB array.

This is the only place in the project that turns an image file into pixels:
ingest calls it for every file it shards, and predict calls it on the user's
files, so a model always sees images prepared exactly as it was trained on.
"""
import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

FITS = ("stretch", "crop", "pad")
# Pillow's own default limit (about 89 million pixels, a 9459x9459 image).
DEFAULT_MAX_PIXELS = 89_478_485
DRAFT_SLACK = 0.95
_EXIF_ORIENTATION = 0x0112
_ROTATED = {5, 6, 7, 8}  # orientations that swap width and height
_TRANSPOSE = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


class BadImage(Exception):
    """An image that cannot be used; the message is the reason, for reports."""


def parse_size(text):
    """'94x125' -> (94, 125): height first, as everywhere in this project."""
    try:
        height, width = (int(part) for part in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like HEIGHTxWIDTH, e.g. 94x125. Received: {text!r}") from None
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


def _to_rgb(image):
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


def load_image(source, size=(94, 125), fit="stretch", max_pixels=DEFAULT_MAX_PIXELS, draft=True):
    """Decode `source` and return a uint8 array of shape (height, width, 3).

    Args:
        source: a path, or the file's bytes (as read from a zip archive).
        size: (height, width) of the result.
        fit: "stretch" resizes to `size` ignoring aspect (the tutorial's way),
            "crop" centre-crops to the aspect of `size` first, "pad" letterboxes
            with black.
        max_pixels: images with more pixels than this are refused.
        draft: let Pillow decode JPEGs at a reduced scale (1/2, 1/4, 1/8) when
            the result is small anyway; about twice as fast, same output size.

    EXIF orientation is applied; grayscale, CMYK, palette and RGBA images are
    converted to RGB (transparency composited onto white).

    Raises:
        BadImage: with a short reason, for anything that is not a usable image.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}. Received: fit={fit!r}")
    opened = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(opened) as image:
                pixels = image.size[0] * image.size[1]
                if pixels > max_pixels:
                    raise BadImage(f"image too large: {image.size[0]}x{image.size[1]} "
                                   f"is over the limit of {max_pixels:,} pixels")
                orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
                if draft and image.format == "JPEG":
                    image.draft("RGB", _draft_request(image.size, size, fit, orientation in _ROTATED))
                image.load()
                for step in _TRANSPOSE.get(orientation, ()):
                    image = image.transpose(step)
                image = _fit(_to_rgb(image), size, fit)
    except BadImage:
        raise
    except Image.DecompressionBombError as exc:
        raise BadImage(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        raise BadImage("not an image (Pillow cannot identify it)") from None
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        raise BadImage(f"unreadable: {exc.strerror or exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"corrupt image: {exc}") from None
    array = np.asarray(image, dtype=np.uint8)
    if array.shape != (size[0], size[1], 3):  # defensive: every path above yields this
        raise BadImage(f"decoded to shape {array.shape}, expected {(size[0], size[1], 3)}")
    return array


def is_image_name(name):
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
