"""A trained model's outputs for a batch of images: the one place `evaluate` and `predict` run it.

Test-time augmentation ("flip", `--tta` of both commands): each image is
scored as the mean of the model's outputs on it and on its mirror image
(left-right, the flip training's augmentation makes, so the model has seen
both). One function does it for both commands, so `predict --tta` gives the
scores `evaluate --tta` measured; kibble/predict.py sits above evaluate and
imports it from here.

A two-class run's threshold is chosen on validation for each way of scoring
separately (averaged scores shift the best threshold): metrics.json keeps one
per way under "thresholds", keyed by `scoring(tta)` (evaluate.run writes
them, `recorded_thresholds` reads them).
"""
import numpy as np

# The names of the two ways of scoring, as metrics.json's "thresholds" keys them.
PLAIN, FLIP = "plain", "flip"


def scoring(tta):
    """The name of a way of scoring: "flip" with test-time augmentation, else "plain"."""
    return FLIP if tta else PLAIN


def model_outputs(model, images, tta=False):
    """float64 outputs of `model` for uint8 `images` (n, H, W, 3), as it gives them ((n, 1) or (n, N)).

    With `tta`, the mean of the outputs on each image and on its mirror (the
    width is axis 2), taken in float64.
    """
    outputs = np.asarray(model.predict_on_batch(images), dtype=np.float64)
    if tta:
        mirrored = np.asarray(model.predict_on_batch(images[:, :, ::-1]), dtype=np.float64)
        outputs = (outputs + mirrored) / 2
    return outputs
