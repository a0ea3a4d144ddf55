"""Issue 10, items 10 and 12: train and predict with more than two classes.

Three classes of solid-colour 16x16 images (red, green, blue, the other
channels varied per file), ingested from class folders: tiny enough that
every model trains an epoch in a second, plain enough that a small model
must learn them.
"""
import csv
import io
import json
import os
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import cli
from ingest import IngestSettings, ingest
from kibble.predict import predict
from shards import load_manifest
from shards.errors import UserError
from train.models import MODELS, TUTORIAL_MODELS, build_model
from train.rundir import RunDir
from train.run import TrainSettings, class_weights, train

SIZE = (16, 16)
CLASSES = ("blue", "green", "red")  # ingest's order: sorted by name
COLOURS = {"red": (220, 30, 30), "green": (30, 220, 30), "blue": (30, 30, 220)}
COUNTS = {"blue": 24, "green": 24, "red": 48}  # uneven, for the class weights


def _image(path, colour, number):
    jitter = (number * 7) % 30
    Image.new("RGB", (20 + number % 4, 18), tuple(min(255, c + jitter) for c in colour)).save(path)


def _folders(root, counts=COUNTS):
    for cls, count in counts.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(count):
            _image(os.path.join(root, cls, f"{cls}{i}.png"), COLOURS[cls], i)
    return root


def small_three_class_shards(root):
    """Shards of 12 images in each of three colour classes at 16x16 (a few seconds to ingest); their folder."""
    shards = os.path.join(str(root), "shards")
    ingest(_folders(os.path.join(str(root), "images"), {"blue": 12, "green": 12, "red": 12}), shards,
           IngestSettings(size=(16, 16), shard_size=16, val=0.25, test=0.1), scheduler="sync", progress=False)
    return shards


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    """(image folder, shard folder) of the three colour classes."""
    root = tmp_path_factory.mktemp("three")
    images = _folders(str(root / "images"))
    shards = str(root / "shards")
    ingest(images, shards, IngestSettings(size=SIZE, shard_size=32, val=0.25, test=0.1), scheduler="sync",
           progress=False)
    return images, shards


def _settings(shards, **kwargs):
    return TrainSettings(**{"data": shards, "train_size": 48, "val_size": 16, "epochs": 1, "batch_size": 16,
                            **kwargs})


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("num_classes, units, activation", [(2, 1, "sigmoid"), (3, 3, "softmax"), (7, 7, "softmax")])
def test_every_model_has_one_sigmoid_for_two_classes_else_a_softmax_of_n(model, num_classes, units, activation):
    built = build_model(model, (*SIZE, 3), num_classes=num_classes)
    head = built.layers[-1]
    assert built.output.shape == (None, units) and head.activation.__name__ == activation
    assert head.name == ("cat" if num_classes == 2 else "classes")


# kibble's epoch costs ~20 s of tracing here; its fit path is the others' (and tests/test_train.py trains it).
@pytest.mark.parametrize("model", TUTORIAL_MODELS)
def test_every_model_gets_a_softmax_over_the_classes_and_trains_an_epoch(three, tmp_path, model):
    import keras

    _, shards = three
    result = train(_settings(shards, model=model), runs_root=str(tmp_path), progress=False)
    loaded = keras.models.load_model(os.path.join(result["run_dir"], "best.keras"))
    scores = loaded.predict(np.zeros((2, *SIZE, 3), np.uint8), verbose=0)
    assert scores.shape == (2, 3) and np.allclose(scores.sum(axis=1), 1, atol=1e-5)
    assert loaded.loss == "sparse_categorical_crossentropy"
    config = RunDir(result["run_dir"]).config()
    assert config["classes"] == list(CLASSES) and config["loss"] == "bce"  # the tutorial's MSE became cross-entropy
    [row] = RunDir(result["run_dir"]).history()
    assert 0 <= row["accuracy"] <= 1 and 0 <= row["val_accuracy"] <= 1


@pytest.fixture(scope="module")
def learnt(three, tmp_path_factory):
    """train's result for an mlp trained a few epochs on the three colours."""
    _, shards = three
    return train(_settings(shards, model="mlp", epochs=6, lr=3e-3, batch_size=8),
                 runs_root=str(tmp_path_factory.mktemp("learnt")), progress=False)


def test_a_small_model_learns_the_colours(learnt):
    assert learnt["best_val_accuracy"] >= 0.9, learnt


def test_balanced_class_weights_are_n_over_classes_times_count():
    # 96 images: 24, 24, 48 -> 96 / (3 * 24) = 4/3 and 96 / (3 * 48) = 2/3
    assert class_weights([24, 24, 48]) == pytest.approx({0: 4 / 3, 1: 4 / 3, 2: 2 / 3})
    # Dogs vs. Cats evenly split: both 1; a class absent from the split gets no weight
    assert class_weights([50, 50]) == {0: 1.0, 1: 1.0}
    assert class_weights([30, 0, 10]) == pytest.approx({0: 40 / 60, 2: 40 / 20})


def test_balanced_weights_reach_model_fit(three, tmp_path, monkeypatch):
    import keras

    _, shards = three
    seen = []
    fit = keras.Model.fit
    monkeypatch.setattr(keras.Model, "fit", lambda self, *a, **kw: (seen.append(kw.get("class_weight")),
                                                                     fit(self, *a, **kw))[1])
    counts = load_manifest(shards).class_counts("train")
    train(_settings(shards, model="mlp", class_weight="balanced"), runs_root=str(tmp_path / "a"), progress=False)
    train(_settings(shards, model="mlp"), runs_root=str(tmp_path / "b"), progress=False)
    n = sum(counts)
    assert seen == [pytest.approx({i: n / (3 * c) for i, c in enumerate(counts)}), None]
    assert counts[0] < counts[2] and seen[0][0] > seen[0][2]  # the smaller class weighs more


def test_mse_with_more_than_two_classes_is_refused_in_one_line(three, tmp_path):
    _, shards = three
    with pytest.raises(UserError, match="--loss mse .* holds 3 classes"):
        train(_settings(shards, loss="mse"), runs_root=str(tmp_path), progress=False)
    result = CliRunner().invoke(cli, ["train", "--data", shards, "--runs", str(tmp_path), "--loss", "mse"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "--loss mse" in result.stderr


def test_a_set_smaller_than_the_default_sample_trains_on_what_it_holds(three, tmp_path):
    _, shards = three
    held = load_manifest(shards)
    result = CliRunner().invoke(cli, ["train", "--data", shards, "--runs", str(tmp_path), "--model", "mlp",
                                      "--epochs", "1"])
    assert result.exit_code == 0, result.output
    train_n, val_n = held.split_count("train"), held.split_count("val")
    assert f"note: train: {train_n:,} images (the split holds fewer than the 4,096 asked)" in result.stderr
    assert f"note: val: {val_n:,} images (the split holds fewer than the 1,024 asked)" in result.stderr
    [name] = [n for n in os.listdir(tmp_path) if n.startswith("mlp-")]
    config = RunDir(str(tmp_path / name)).config()
    assert (config["train_size"], config["val_size"]) == (train_n, val_n)  # the sizes used, so a rerun resumes it
    full = CliRunner().invoke(cli, ["train", "--data", shards, "--runs", str(tmp_path / "f"), "--model", "mlp",
                                    "--epochs", "1", "--full"])
    assert full.exit_code == 0 and "fewer than the 10,000 asked" in full.stderr, full.output
    again = CliRunner().invoke(cli, ["train", "--data", shards, "--runs", str(tmp_path / "f"), "--resume", "--full"])
    assert again.exit_code == 0 and "already finished its 1 epochs" in again.stderr, again.output
    # a size the user typed must exist
    asked = CliRunner().invoke(cli, ["train", "--data", shards, "--runs", str(tmp_path / "x"),
                                     "--train-size", "500"])
    assert asked.exit_code == 2 and "asked for 500 train images" in asked.stderr, asked.output


def test_all_takes_what_each_split_holds_and_a_rerun_resumes_it(three, tmp_path):
    _, shards = three
    held = load_manifest(shards)
    args = ["train", "--data", shards, "--runs", str(tmp_path), "--model", "mlp", "--epochs", "1",
            "--train-size", "all", "--val-size", "ALL"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "split holds fewer" not in result.stderr  # all is not a size asked for and cut
    [name] = [n for n in os.listdir(tmp_path) if n.startswith("mlp-")]
    config = RunDir(str(tmp_path / name)).config()
    assert (config["train_size"], config["val_size"]) == (held.split_count("train"), held.split_count("val"))
    again = CliRunner().invoke(cli, [*args, "--resume", "--epochs", "2"])
    assert again.exit_code == 0, again.output
    assert [n for n in os.listdir(tmp_path) if n.startswith("mlp-")] == [name]  # the same run, extended
    assert len(RunDir(str(tmp_path / name)).history()) == 2
    for bad in ("none", "0", "-3", "1.5"):
        refused = CliRunner().invoke(cli, ["train", "--data", shards, "--train-size", bad])
        assert refused.exit_code == 2 and "or all" in refused.output, (bad, refused.output)


def _probe(folder):
    """One new image per class (and a broken file) to predict: {file name: class}."""
    os.makedirs(folder, exist_ok=True)
    for cls in CLASSES:
        _image(os.path.join(folder, f"new-{cls}.png"), COLOURS[cls], 5)
    with open(os.path.join(folder, "broken.png"), "wb") as f:
        f.write(b"\x89PNG not really")
    return {f"new-{cls}.png": cls for cls in CLASSES}


def test_predict_gives_the_class_its_probability_and_the_whole_distribution(learnt, tmp_path):
    expected = _probe(str(tmp_path / "in"))
    results = {os.path.basename(r["file"]): r for r in predict(str(tmp_path / "in"), learnt["run_dir"], top_k=2)}
    assert results["broken.png"]["label"] is None and results["broken.png"]["top"] == []
    for name, cls in expected.items():
        r = results[name]
        assert r["label"] == cls and r["error"] is None and "p_cat" not in r
        assert list(r["probabilities"]) == list(CLASSES) and sum(r["probabilities"].values()) == pytest.approx(1)
        assert r["probability"] == max(r["probabilities"].values()) == r["probabilities"][cls]
        assert len(r["top"]) == 2 and r["top"][0] == [cls, r["probability"]] and r["top"][1][1] <= r["probability"]
    # --top-k is at most the number of classes
    [one] = predict(str(tmp_path / "in" / "new-red.png"), learnt["run_dir"], top_k=9)
    assert [name for name, _ in one["top"]] == sorted(CLASSES, key=lambda c: -one["probabilities"][c])


def test_predict_cli_csv_has_a_column_per_class_and_json_the_distribution(learnt, tmp_path):
    expected = _probe(str(tmp_path / "in"))
    args = ["predict", str(tmp_path / "in"), "--run", learnt["run_dir"], "--top-k", "2"]
    result = CliRunner().invoke(cli, [*args, "--format", "csv"])
    assert result.exit_code == 1, result.output  # the broken file
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == ["file", "label", "probability", "label_2", "probability_2",
                             "p_blue", "p_green", "p_red", "error"]
    assert rows[0]["label"] == "" and rows[0]["p_red"] == "" and rows[0]["error"]
    for row in rows[1:]:
        cls = expected[os.path.basename(row["file"])]
        assert row["label"] == cls and float(row["probability"]) == pytest.approx(float(row[f"p_{cls}"]), abs=1e-6)
        assert row["label_2"] in CLASSES and row["label_2"] != cls
        assert sum(float(row[f"p_{c}"]) for c in CLASSES) == pytest.approx(1, abs=1e-5)
    assert "3 predicted (1 blue, 1 green, 1 red), 1 failed" in result.stderr
    assert "threshold" not in result.stderr

    parsed = json.loads(CliRunner().invoke(cli, [*args, "--format", "json"]).stdout)
    assert {r["label"] for r in parsed} == {None, *CLASSES}
    good = [r for r in parsed if r["label"]]
    assert all(set(r["probabilities"]) == set(CLASSES) and len(r["top"]) == 2 for r in good)
    table = CliRunner().invoke(cli, [*args]).stdout.splitlines()
    assert table[0].split() == ["p", "label", "p_2", "label_2", "file"] and len(table) == 5
    assert table[2].split()[1] == "blue" and table[2].endswith("new-blue.png")


def test_a_run_from_before_class_weight_is_still_the_same_run(three, tmp_path):
    _, shards = three
    settings = _settings(shards, model="conv2")
    run_dir = train(settings, runs_root=str(tmp_path), progress=False)["run_dir"]
    path = os.path.join(run_dir, "config.json")
    with open(path) as f:
        config = json.load(f)
    del config["class_weight"]
    with open(path, "w") as f:
        json.dump(config, f)
    assert train(settings, run_dir=run_dir, runs_root=str(tmp_path), progress=False)["already_done"]
    with pytest.raises(UserError, match="other settings"):
        train(replace(settings, class_weight="balanced"), run_dir=run_dir, runs_root=str(tmp_path), progress=False)


def test_the_default_models_architecture_knobs_change_only_what_they_name():
    """bench_model.py --variants times these; the default model keeps its stride-2 stem and max-pools."""
    import keras

    from train.models import _kibble

    def shapes(model):
        pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
        last = [layer for layer in model.layers if isinstance(layer, keras.layers.SeparableConv2D)][-1]
        return len(pools), tuple(last.output.shape[1:3]), model.count_params()

    shape = (94, 125, 3)
    pools, last, params = shapes(build_model("kibble", shape))
    assert (pools, last) == (4, (3, 4))
    assert shapes(_kibble(keras, shape, 2)) == (pools, last, params)
    assert shapes(_kibble(keras, shape, 2, stem_stride=4)) == (4, (2, 2), params)
    no_pool = shapes(_kibble(keras, shape, 2, pool=False))
    assert no_pool[:2] == (0, (3, 4)) and no_pool[2] == params  # a strided conv has the same weights
