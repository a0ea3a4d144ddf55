"""A small made-up "Dogs vs. Cats" for demos and tests: no download needed.

`make_demo_images` writes a Kaggle-shaped folder, `train/cat.N.jpg` and
`train/dog.N.jpg`, of JPEGs with varied sizes and aspect ratios. Each picture
is drawn procedurally on a noisy, blotchy background:

- a "cat" is a round or oval head with two pointed triangular ears on top,
  tabby bars on the forehead and whiskers;
- a "dog" is a square or rounded box head with two long floppy ears hanging
  down its sides, a dark patch over an eye or cheek and a muzzle.

Both classes draw their colours, sizes, positions, rotations, eyes and
background clutter from the same distributions, so neither colour nor size
nor brightness gives the answer: a model has to learn the shapes. About one
picture in seven (HARD_SHARE) is drawn small, faint and partly out of frame.
Every image depends only on (seed, class, number), so a seed always gives the
same bytes (with the same Pillow version).
"""
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

KINDS = ("cat", "dog")
SIDE_RANGE = (150, 400)  # pixels per side of the generated pictures
# Share of the pictures whose animal is drawn small, faint or half outside the
# frame: these keep the task from being trivial.
HARD_SHARE = 0.15


def make_demo_images(out_dir, per_class=600, seed=0):
    """Write `per_class` cat and dog JPEGs to `out_dir/train/`; return that folder.

    Args:
        out_dir: folder to create (or reuse); files of the same name are replaced.
        per_class: pictures of each class, numbered 0 .. per_class - 1.
        seed: the same seed always gives byte-identical files.

    Returns:
        The path of the `train/` folder, ready for `ingest`.
    """
    if int(per_class) < 1:
        raise ValueError(f"per_class must be at least 1. Received: per_class={per_class!r}")
    folder = os.path.join(out_dir, "train")
    os.makedirs(folder, exist_ok=True)
    for label, kind in enumerate(KINDS):
        for number in range(int(per_class)):
            rng = np.random.default_rng([int(seed), label, number])
            image, quality = draw_picture(kind, rng)
            image.save(os.path.join(folder, f"{kind}.{number}.jpg"), format="JPEG", quality=quality)
    return folder


def draw_picture(kind, rng):
    """One picture of `kind` ("cat" or "dog") as a PIL RGB image, and a JPEG quality."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}. Received: kind={kind!r}")
    width, height = _picture_size(rng)
    image = _background(width, height, rng)
    _clutter(image, rng)
    hard = rng.random() < HARD_SHARE
    side = min(width, height) * (rng.uniform(0.45, 0.6) if hard else rng.uniform(0.65, 0.95))
    layer = _animal(kind, int(side), rng)
    layer = layer.rotate(rng.uniform(-25, 25), resample=Image.Resampling.BICUBIC, expand=True)
    if hard:  # faint: the animal partly blends into the background
        alpha = layer.getchannel("A").point(lambda a: int(a * 0.55))
        layer.putalpha(alpha)
    margin = 0.35 if hard else 0.1  # share of the animal allowed outside the frame
    x = _position(width, layer.width, margin, rng)
    y = _position(height, layer.height, margin, rng)
    image.paste(layer, (x, y), layer)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    return image, int(rng.integers(70, 96))


def _picture_size(rng):
    low, high = SIDE_RANGE
    aspect = rng.choice([4 / 3, 3 / 4, 1.0, 3 / 2, 2 / 3]) * rng.uniform(0.9, 1.1)
    long_side = rng.uniform(low * 1.2, high)
    if aspect >= 1:
        width, height = long_side, long_side / aspect
    else:
        width, height = long_side * aspect, long_side
    return int(np.clip(width, low, high)), int(np.clip(height, low, high))


def _colour(rng, low=30, high=230):
    return tuple(int(c) for c in rng.integers(low, high, 3))


def _background(width, height, rng):
    """Blotchy low-frequency colour field plus fine grain."""
    coarse = rng.integers(0, 256, (int(rng.integers(3, 7)), int(rng.integers(3, 7)), 3), dtype=np.uint8)
    field = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    # Pulled towards its mean so the blotches are softer than the animal's edges.
    pixels = np.asarray(field, dtype=np.float32)
    pixels = pixels.mean(axis=(0, 1)) + (pixels - pixels.mean(axis=(0, 1))) * rng.uniform(0.2, 0.5)
    pixels += rng.normal(0, rng.uniform(4, 14), (height, width, 1))  # grain, same in every channel
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _clutter(image, rng):
    """Lines, dots and small boxes or rings, drawn for both classes alike."""
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(int(rng.integers(2, 7))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = min(width, height) * rng.uniform(0.03, 0.12)
        box = [x - r, y - r * rng.uniform(0.5, 1.5), x + r, y + r * rng.uniform(0.5, 1.5)]
        shape = rng.integers(0, 3)
        if shape == 0:
            draw.line([x, y, x + rng.normal(0, width / 4), y + rng.normal(0, height / 4)],
                      fill=_colour(rng), width=int(rng.integers(1, 5)))
        elif shape == 1:
            draw.ellipse(box, outline=_colour(rng), width=int(rng.integers(1, 4)))
        else:
            draw.rectangle(box, outline=_colour(rng), width=int(rng.integers(1, 4)))


def _animal(kind, side, rng):
    """An RGBA square of `side` pixels holding one head, transparent around it."""
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    fur, ears, eyes = _colour(rng), _colour(rng), _colour(rng, 0, 256)
    edge = _shade(fur, rng.uniform(0.3, 0.6))  # a darker rim and markings, for both classes
    line = max(1, int(side / 40))
    c = side / 2
    head_w = side * rng.uniform(0.5, 0.62)
    head_h = head_w * rng.uniform(0.8, 1.1)
    top, bottom = c - head_h / 2 + side * 0.08, c + head_h / 2 + side * 0.08
    left, right = c - head_w / 2, c + head_w / 2
    if kind == "cat":
        _cat_ears(draw, left, right, top, head_w, ears, rng)
        draw.ellipse([left, top, right, bottom], fill=fur, outline=edge, width=line)
        _stripes(draw, c, top, head_w, head_h, edge, rng)
    else:
        radius = head_w * rng.uniform(0.02, 0.22)
        draw.rounded_rectangle([left, top, right, bottom], radius=radius, fill=fur, outline=edge, width=line)
        _patch(draw, left, top, head_w, head_h, edge, rng)
        _dog_ears(draw, left, right, top, bottom, head_w, ears, rng)
    _face(draw, kind, c, top, bottom, head_w, head_h, eyes, rng)
    return layer


def _shade(colour, factor):
    return tuple(int(v * factor) for v in colour)


def _stripes(draw, c, top, head_w, head_h, colour, rng):
    """Tabby marks: two to four short vertical bars on the forehead."""
    count = int(rng.integers(2, 5))
    gap = head_w * 0.12
    for k in range(count):
        x = c + (k - (count - 1) / 2) * gap
        draw.line([x, top + head_h * 0.04, x, top + head_h * rng.uniform(0.2, 0.3)], fill=colour,
                  width=max(1, int(head_w / 16)))


def _patch(draw, left, top, head_w, head_h, colour, rng):
    """A big round patch over one eye or on one cheek."""
    r = head_w * rng.uniform(0.14, 0.22)
    x = left + head_w * rng.choice([0.3, 0.7])
    y = top + head_h * rng.uniform(0.3, 0.6)
    draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def _cat_ears(draw, left, right, top, head_w, colour, rng):
    """Two upright triangles rising above the head."""
    ear_w = head_w * rng.uniform(0.28, 0.38)
    ear_h = head_w * rng.uniform(0.35, 0.55)
    inset = head_w * rng.uniform(0.0, 0.12)
    tilt = ear_w * rng.uniform(-0.3, 0.3)
    base = top + head_w * 0.15
    for x0, sign in ((left + inset, 1), (right - inset - ear_w, -1)):
        tip = (x0 + ear_w / 2 - sign * tilt, base - ear_h)
        draw.polygon([(x0, base), (x0 + ear_w, base), tip], fill=colour)


def _dog_ears(draw, left, right, top, bottom, head_w, colour, rng):
    """Two long ovals hanging from the top corners down the sides of the head."""
    ear_w = head_w * rng.uniform(0.22, 0.32)
    ear_h = (bottom - top) * rng.uniform(0.7, 1.0)
    drop = head_w * rng.uniform(-0.05, 0.1)
    for x_mid in (left, right):
        draw.ellipse([x_mid - ear_w / 2, top + drop, x_mid + ear_w / 2, top + drop + ear_h], fill=colour)


def _face(draw, kind, c, top, bottom, head_w, head_h, colour, rng):
    eye_y = top + head_h * rng.uniform(0.3, 0.45)
    eye_dx, eye_r = head_w * rng.uniform(0.15, 0.25), head_w * rng.uniform(0.04, 0.08)
    for x in (c - eye_dx, c + eye_dx):
        draw.ellipse([x - eye_r, eye_y - eye_r, x + eye_r, eye_y + eye_r], fill=colour)
    nose_y = top + head_h * rng.uniform(0.6, 0.72)
    if kind == "cat":  # whiskers fan out from the nose
        for side in (-1, 1):
            for k in range(int(rng.integers(2, 4))):
                angle = math.radians(rng.uniform(-25, 25) + 20 * (k - 1))
                length = head_w * rng.uniform(0.35, 0.55)
                draw.line([c, nose_y, c + side * length * math.cos(angle), nose_y + length * math.sin(angle)],
                          fill=colour, width=max(1, int(head_w / 60)))
    else:  # a muzzle box with a nose
        mw, mh = head_w * rng.uniform(0.22, 0.32), head_h * rng.uniform(0.15, 0.25)
        draw.rectangle([c - mw, nose_y - mh / 2, c + mw, nose_y + mh], outline=colour,
                       width=max(1, int(head_w / 40)))
    nose_r = head_w * 0.05
    draw.ellipse([c - nose_r, nose_y - nose_r, c + nose_r, nose_y + nose_r], fill=colour)


def _position(frame, size, margin, rng):
    """Top-left coordinate letting up to `margin` of `size` fall outside the frame."""
    low, high = -margin * size, frame - size * (1 - margin)
    if high < low:
        low, high = high, low
    return int(rng.uniform(low, high))
