"""`train --cutmix SHARE`: a patch of the next image in a share of the training images, labels mixed by area."""
import json
import os

import numpy as np
import pytest

from shards import load_manifest
from shards.errors import UserError
from tests.conftest import assert_train_refuses, make_kaggle_shards
from train.rundir import RunDir
from train.run import TrainSettings, train

SIZE = (24, 32)


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    return make_kaggle_shards(tmp_path_factory.mktemp("cutmix"), cats=24, dogs=24, size=SIZE, shard_size=16,
                              val=0.25, test=0.25)


def _numbered(n, height=20, width=30):
    """n images, image i filled with the value i, and one-hot labels of i % 3."""
    images = np.repeat(np.arange(n, dtype=np.uint8), height * width * 3).reshape(n, height, width, 3)
    return images, np.eye(3, dtype=np.float32)[np.arange(n) % 3]


def test_each_patch_is_a_rectangle_of_the_next_image_and_the_label_mixes_by_its_area():
    from train.mixing import cutmix, window_seed

    images, labels = _numbered(64)
    mixed, mixed_labels = (t.numpy() for t in cutmix(images, labels, 1.0, window_seed(5, 2, 0, 1)))
    patched = 0
    for i in range(64):
        following = (i + 1) % 64
        assert set(np.unique(mixed[i])) <= {i, following}
        taken = mixed[i, :, :, 0] == following
        rows, cols = np.nonzero(taken)
        if rows.size:  # one solid rectangle, the same in every channel
            patched += 1
            assert taken[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
            assert (mixed[i, :, :, 1] == mixed[i, :, :, 0]).all()
        share = taken.mean()
        np.testing.assert_allclose(mixed_labels[i], labels[i] * (1 - share) + labels[following] * share, atol=1e-6)
        np.testing.assert_allclose(mixed_labels[i].sum(), 1.0, atol=1e-6)
    assert patched >= 48  # share 1.0: every image draws a patch; a few are cut to nothing at an edge
    areas = [(mixed[i, :, :, 0] != i).mean() for i in range(64)]
    assert 0.15 < np.mean(areas) < 0.6  # a uniform share of the area, less what the edges cut off


def test_the_share_chooses_how_many_images_are_patched_and_the_seed_fixes_the_draws():
    from train.mixing import cutmix, window_seed

    images, labels = _numbered(200)
    untouched, same_labels = cutmix(images, labels, 0.0, window_seed(0, 0, 0, 0))
    np.testing.assert_array_equal(untouched.numpy(), images)
    np.testing.assert_array_equal(same_labels.numpy(), labels)
    half = cutmix(images, labels, 0.5, window_seed(0, 0, 0, 0))[0].numpy()
    changed = sum((half[i] != i).any() for i in range(200))
    assert 70 <= changed <= 110, changed
    np.testing.assert_array_equal(cutmix(images, labels, 0.5, window_seed(0, 0, 0, 0))[0].numpy(), half)
    for other in (window_seed(1, 0, 0, 0), window_seed(0, 1, 0, 0), window_seed(0, 0, 0, 1)):
        assert (cutmix(images, labels, 0.5, other)[0].numpy() != half).any()


def test_the_pipeline_patches_training_windows_the_same_way_each_time_and_differently_each_epoch(shards_dir):
    from train.pipeline import make_dataset

    manifest = load_manifest(shards_dir)

    def epoch(cutmix, initial_epoch=0):
        data = make_dataset(manifest, "train", 8, None, seed=3, cutmix=cutmix, initial_epoch=initial_epoch)
        images, labels = zip(*((x.numpy(), y.numpy()) for x, y in data))
        return np.concatenate(images), np.concatenate(labels)

    plain, hard = epoch(0.0)
    mixed, soft = epoch(1.0)
    assert mixed.shape == plain.shape and soft.shape == hard.shape == (len(plain), 1) and soft.dtype == np.float32
    assert set(np.unique(hard)) == {0.0, 1.0}
    assert ((soft > 0) & (soft < 1)).any()  # patches of the other class
    assert (mixed != plain).any()
    np.testing.assert_array_equal(epoch(1.0)[0], mixed)  # the same run draws the same patches
    assert (epoch(1.0, initial_epoch=1)[0] != epoch(0.0, initial_epoch=1)[0]).any()
    assert not np.array_equal(epoch(1.0, initial_epoch=1)[1], soft)


def test_rounded_binary_accuracy_counts_a_mixed_label_by_the_class_most_of_it_shows():
    import keras

    from train.mixing import rounded_binary_accuracy

    y_true, y_pred = np.array([[0.3], [0.7], [1.0], [0.0]]), np.array([[0.2], [0.9], [0.4], [0.6]])
    metric = rounded_binary_accuracy()
    metric.update_state(y_true, y_pred)
    assert metric.name == "accuracy" and float(metric.result()) == 0.5
    plain = keras.metrics.BinaryAccuracy()
    plain.update_state(y_true, y_pred)
    assert float(plain.result()) == 0.0  # Keras's own: no soft label ever matches


def test_a_cutmix_run_trains_resumes_and_keeps_its_share(shards_dir, tmp_path):
    run_dir = str(tmp_path / "run")
    settings = TrainSettings(data=shards_dir, train_size=24, val_size=12, epochs=1, batch_size=8, cutmix=0.5)
    train(settings, run_dir=run_dir, progress=False)
    assert json.load(open(os.path.join(run_dir, "config.json")))["cutmix"] == 0.5
    train(TrainSettings(epochs=2), run_dir=run_dir, resume=True, progress=False, given={"epochs"})
    rows = RunDir(run_dir).history()
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all(0 <= row["accuracy"] <= 1 and np.isfinite(row["loss"]) for row in rows)
    with pytest.raises(UserError, match="cutmix"):
        train(TrainSettings(epochs=3, cutmix=0.2), run_dir=run_dir, resume=True, progress=False,
              given={"epochs", "cutmix"})


def test_cutmix_with_more_than_two_classes_trains_on_one_hot_labels(tmp_path):
    import keras

    from tests.test_multiclass_train import small_three_class_shards

    shards = small_three_class_shards(tmp_path)
    result = train(TrainSettings(data=shards, train_size=24, val_size=8, epochs=1, batch_size=8, cutmix=1.0),
                   runs_root=str(tmp_path / "runs"), progress=False)
    model = keras.models.load_model(os.path.join(result["run_dir"], "last.keras"))
    assert model.loss == "categorical_crossentropy"
    [row] = RunDir(result["run_dir"]).history()
    assert 0 <= row["val_accuracy"] <= 1 and np.isfinite(row["val_loss"])


@pytest.mark.parametrize("args, message", [
    (["--cutmix", "1.5"], "--cutmix"),
    (["--cutmix", "0.5", "--model", "conv2"], "cutmix must be"),
])
def test_a_wrong_share_or_a_tutorial_model_is_refused_in_one_line(shards_dir, tmp_path, args, message):
    assert_train_refuses(shards_dir, tmp_path, args, message)
