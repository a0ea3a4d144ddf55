"""The usual approach, for bench_clothing.py: Keras's own loader and its example convnet.

    python benchmarks/clothing_baseline.py DATASET --minutes B [--size 94x125] [--batch-size 128]

DATASET holds train/, validation/ and test/, one sub-folder per class.
`keras.utils.image_dataset_from_directory` reads train/ and validation/ at
--size; the network is the small convnet that keras.io's "Image
classification from scratch" example describes (written here from its
description): flip and rotation augmentation on the dataset, a rescaling,
an entry block of a strided 128-filter convolution, three residual blocks
of two separable convolutions (256, 512, 728 filters) with a strided
shortcut, a 1024-filter separable convolution, global average pooling,
dropout and a softmax over the classes, trained by Adam at 3e-4.

Training stops after the epoch that crosses B minutes (kibble's budget
rule in bench_clothing.py); the weights of the epoch with the best
validation accuracy are kept and scored on test/ with kibble's own
MulticlassAccumulator, so both sides' figures are computed alike. Prints
one JSON line. Not a test.
"""
import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def build_model(input_shape, num_classes):
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape)
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(128, 3, strides=2, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    shortcut_from = x
    for filters in (256, 512, 728):
        for _ in range(2):
            x = layers.Activation("relu")(x)
            x = layers.SeparableConv2D(filters, 3, padding="same")(x)
            x = layers.BatchNormalization()(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
        shortcut = layers.Conv2D(filters, 1, strides=2, padding="same")(shortcut_from)
        x = layers.add([x, shortcut])
        shortcut_from = x
    x = layers.SeparableConv2D(1024, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.25)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def augmentation():
    import keras
    from keras import layers

    return keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1)])


def make_budget_callback(budget_seconds):
    """Stops after the epoch that crosses the budget; keeps the weights of the best val accuracy."""
    import keras

    class Budget(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.started = time.monotonic()
            self.best = (-1.0, 0, None)  # (val accuracy, epoch, weights)
            self.epochs = 0

        def on_epoch_end(self, epoch, logs=None):
            self.epochs = epoch + 1
            accuracy = float((logs or {}).get("val_accuracy", 0.0))
            if accuracy > self.best[0]:
                self.best = (accuracy, epoch + 1, self.model.get_weights())
            if time.monotonic() - self.started >= budget_seconds:
                self.model.stop_training = True

    return Budget()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--size", default="94x125", help="HEIGHTxWIDTH, as kibble's --size")
    parser.add_argument("--batch-size", type=int, default=128, help="The example's batch size.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    height, width = (int(side) for side in args.size.lower().split("x"))

    import keras
    import numpy as np
    import tensorflow as tf

    from evaluate.metrics import MulticlassAccumulator

    keras.utils.set_random_seed(args.seed)

    def load(split, shuffle):
        return keras.utils.image_dataset_from_directory(
            os.path.join(args.dataset, split), image_size=(height, width), batch_size=args.batch_size,
            shuffle=shuffle, seed=args.seed, label_mode="int")

    train, val, test = load("train", True), load("validation", False), load("test", False)
    classes = train.class_names
    flip_rotate = augmentation()
    train = train.map(lambda x, y: (flip_rotate(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    train, val = train.prefetch(tf.data.AUTOTUNE), val.prefetch(tf.data.AUTOTUNE)

    model = build_model((height, width, 3), len(classes))
    model.compile(optimizer=keras.optimizers.Adam(3e-4), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    budget = make_budget_callback(args.minutes * 60)
    started = time.monotonic()
    # A large epoch cap: the budget callback is what ends training.
    model.fit(train, validation_data=val, epochs=10_000, callbacks=[budget], verbose=2)
    train_seconds = time.monotonic() - started
    best_accuracy, best_epoch, weights = budget.best
    model.set_weights(weights)

    scores = MulticlassAccumulator(classes)
    for images, labels in test:
        scores.update(model.predict_on_batch(images), labels.numpy())
    summary = scores.summary()
    print(json.dumps({
        "classes": classes, "epochs": budget.epochs, "best_epoch": best_epoch,
        "best_val_accuracy": best_accuracy, "train_minutes": train_seconds / 60,
        "params": int(model.count_params()), "batch_size": args.batch_size,
        "test": {"count": summary["count"], "accuracy": summary["accuracy"],
                 "top_3_accuracy": summary.get("top_3_accuracy"), "macro_f1": summary["macro"]["f1"]},
    }))


if __name__ == "__main__":
    main()
