import os
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SAMPLE = os.path.join(ROOT, "..", "shared", "datasets", "kaggle-sample")

# Generated images carry their label in their pixels: cats are reddish,
# dogs bluish, and the green channel encodes the file number, so a test can
# tell from pixels alone which file and label an image came from.
CAT_COLOUR, DOG_COLOUR = 200, 40


def colour_for(label, number):
    red = CAT_COLOUR if label == 1 else DOG_COLOUR
    return (red, number % 256, 255 - red)


def make_image(path, label, number, size=(60, 48), fmt=None, mode="RGB"):
    image = Image.new("RGB", size, colour_for(label, number))
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt, quality=95)
    return path


def make_kaggle_folder(folder, cats=20, dogs=20, start=0):
    """A Kaggle-style train/ folder of small solid-colour JPEGs of varied sizes."""
    os.makedirs(folder, exist_ok=True)
    for label, kind, count in ((1, "cat", cats), (0, "dog", dogs)):
        for i in range(start, start + count):
            size = (40 + (i * 7) % 50, 30 + (i * 11) % 40)
            make_image(os.path.join(folder, f"{kind}.{i}.jpg"), label, i, size=size)
    return folder


@pytest.fixture
def kaggle_dir(tmp_path):
    return make_kaggle_folder(str(tmp_path / "train"))


@pytest.fixture
def sample_dir():
    if not os.path.isdir(SAMPLE):
        pytest.skip("../shared/datasets/kaggle-sample is not available")
    return SAMPLE


def decoded_label(image):
    """Label encoded by make_image, read back from a (resized) image."""
    red = float(np.mean(image[..., 0]))
    return 1 if abs(red - CAT_COLOUR) < abs(red - DOG_COLOUR) else 0
