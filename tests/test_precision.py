"""train --precision: CPU detection, the option's errors, the precision a run records and keeps."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from ingest import IngestSettings, ingest
from shards.errors import UserError
from tests.conftest import make_kaggle_folder
from train import precision
from train.precision import read_cpuinfo, resolve_precision, supports_bfloat16
from train.run import TrainSettings, train

# Shortened /proc/cpuinfo texts of real CPUs (flags cut to the ones that matter and a few neighbours).
EPYC_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma bmi2 sha_ni vaes\n"
SAPPHIRE_RAPIDS = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 avx512f "
                   "avx512_bf16 amx_bf16 avx512_fp16 amx_tile amx_int8\n")
COOPER_LAKE = "model name\t: Intel(R) Xeon(R) Platinum 8380H\nflags\t\t: avx2 avx512f avx512_vnni avx512_bf16\n"
ZEN4 = "model name\t: AMD EPYC 9654\nflags\t\t: avx2 avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE_AVX512 = "model name\t: Intel(R) Xeon(R) Gold 6148\nflags\t\t: avx2 avx512f avx512dq avx512bw avx512_vnni\n"
AMX_TILE_ONLY = "flags\t\t: avx2 avx512f amx_tile amx_int8\n"  # tiles without the BF16 instructions
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n"  # not an x86 flag

CPUS = [
    ("AVX2 only (this project's machine)", EPYC_AVX2, False),
    ("AMX and AVX-512 BF16", SAPPHIRE_RAPIDS, True),
    ("AVX-512 BF16 without AMX", COOPER_LAKE, True),
    ("AMD Zen 4", ZEN4, True),
    ("AVX-512 without BF16", SKYLAKE_AVX512, False),
    ("AMX tiles without amx_bf16", AMX_TILE_ONLY, False),
    ("ARM bf16 feature", ARM_BF16, False),
    ("empty text", "", False),
    ("no flags line", "processor\t: 0\nmodel name\t: something\n", False),
]


@pytest.mark.parametrize("text, native", [case[1:] for case in CPUS], ids=[case[0] for case in CPUS])
def test_bfloat16_detection_from_cpuinfo(text, native):
    assert supports_bfloat16(text) is native


RESOLVE = [
    ("float32", EPYC_AVX2, "float32"),
    ("float32", SAPPHIRE_RAPIDS, "float32"),
    ("auto", EPYC_AVX2, "float32"),
    ("auto", "", "float32"),  # unknown CPU: float32
    ("auto", SAPPHIRE_RAPIDS, "bfloat16"),
    ("auto", COOPER_LAKE, "bfloat16"),
    ("bfloat16", SAPPHIRE_RAPIDS, "bfloat16"),
    ("bfloat16", EPYC_AVX2, "needs a CPU with AVX-512 BF16 or AMX"),
    ("bfloat16", "", "needs a CPU with AVX-512 BF16 or AMX"),
    ("half", SAPPHIRE_RAPIDS, "precision must be one of auto, float32, bfloat16. Received: precision='half'"),
]


@pytest.mark.parametrize("requested, text, expected", RESOLVE)
def test_resolve_precision(requested, text, expected):
    if expected in ("float32", "bfloat16"):
        assert resolve_precision(requested, text) == expected
    else:
        with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            resolve_precision(requested, text)


def test_this_machines_cpuinfo_is_read_on_linux():
    text = read_cpuinfo()
    if not os.path.exists(precision.CPUINFO):
        assert text is None
    else:
        assert "flags" in text or "Features" in text


HERE_BF16 = supports_bfloat16(read_cpuinfo() or "")


@pytest.fixture
def cpu(tmp_path, monkeypatch):
    """Point the detection at a cpuinfo text of our choosing (the file is still read as on Linux)."""
    def use(text):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        monkeypatch.setattr(precision, "CPUINFO", str(path))
        monkeypatch.setattr(precision.sys, "platform", "linux")
    return use


OPTION_ERRORS = [
    (["--precision", "half"], "Invalid value for '--precision'"),
    (["--precision", "bfloat16"], "Error: --precision bfloat16 needs a CPU with AVX-512 BF16 or AMX"),
]


@pytest.mark.parametrize("args, message", OPTION_ERRORS)
def test_precision_option_errors_exit_2(tmp_path, cpu, args, message):
    cpu(EPYC_AVX2)
    # No shards at --data: the precision is checked before anything is read or created.
    result = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "none"), "--runs", str(tmp_path / "runs"),
                                      *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision-data")
    src = make_kaggle_folder(str(root / "train"), cats=20, dogs=20)
    ingest(src, str(root / "shards"), IngestSettings(size=(16, 20), shard_size=16, val=0.2, test=0.2),
           scheduler="sync", progress=False)
    return str(root / "shards")


def _config(run_dir):
    with open(os.path.join(run_dir, "config.json")) as handle:
        return json.load(handle)


def test_auto_records_the_precision_it_chose_and_resume_keeps_it(shards_dir, tmp_path, cpu):
    cpu(EPYC_AVX2)
    settings = TrainSettings(data=shards_dir, model="conv1", train_size=16, val_size=8, epochs=1, batch_size=8,
                             precision="auto")
    first = train(settings, runs_root=str(tmp_path), progress=False)
    assert first["precision"] == "float32" and _config(first["run_dir"])["precision"] == "float32"
    from train.summary import format_summary
    assert format_summary(first).startswith("conv1 (float32): 1 epochs")
    # Resumed on a CPU that would now pick bfloat16: the run keeps the float32 it started with.
    cpu(SAPPHIRE_RAPIDS)
    again = train(TrainSettings(data=shards_dir, epochs=2), run_dir=first["run_dir"], resume=True,
                  given={"epochs"}, progress=False)
    assert again["epochs"] == 2 and again["precision"] == "float32"
    assert _config(first["run_dir"])["precision"] == "float32"
    with pytest.raises(UserError, match=r"--precision bfloat16 \(the run has float32\)"):
        train(TrainSettings(data=shards_dir, epochs=2, precision="bfloat16"), run_dir=first["run_dir"],
              resume=True, given={"precision"}, progress=False)


def test_a_run_from_before_precision_existed_resumes_as_float32(shards_dir, tmp_path):
    first = train(TrainSettings(data=shards_dir, model="conv1", train_size=16, val_size=8, epochs=1, batch_size=8),
                  runs_root=str(tmp_path), progress=False)
    config = _config(first["run_dir"])
    del config["precision"]
    with open(os.path.join(first["run_dir"], "config.json"), "w") as handle:
        json.dump(config, handle)
    again = train(TrainSettings(data=shards_dir, epochs=2), run_dir=first["run_dir"], resume=True,
                  given={"epochs"}, progress=False)
    assert again["epochs"] == 2 and again["precision"] == "float32"


@pytest.mark.skipif(not HERE_BF16, reason="this CPU has neither AVX-512 BF16 nor AMX (no avx512_bf16/amx_bf16 flag): "
                                          "bfloat16 is refused here, emulated it is tens of times slower")
def test_one_bfloat16_epoch_keeps_the_output_float32(shards_dir, tmp_path):
    import keras

    result = train(TrainSettings(data=shards_dir, model="conv1", train_size=16, val_size=8, epochs=1, batch_size=8,
                                 precision="bfloat16"), runs_root=str(tmp_path), progress=False)
    assert result["precision"] == "bfloat16" and _config(result["run_dir"])["precision"] == "bfloat16"
    model = keras.models.load_model(os.path.join(result["run_dir"], "best.keras"))
    assert model.layers[1].dtype_policy.name == "mixed_bfloat16"
    scores = model.predict(np.zeros((2, 16, 20, 3), np.uint8), verbose=0)
    assert scores.dtype == np.float32 and scores.shape == (2, 1)
    assert keras.mixed_precision.global_policy().name == "float32"  # not leaked into later runs


def test_output_layer_stays_float32_under_mixed_bfloat16():
    """The model as built under the bfloat16 policy (building needs no bfloat16 CPU; running it would)."""
    import keras

    from train.models import build_model

    with precision.dtype_policy("bfloat16"):
        model = build_model("kibble", (16, 20, 3))
    assert keras.mixed_precision.global_policy().name == "float32"
    assert model.get_layer("cat").dtype_policy.name == "float32"
    convs = [layer.dtype_policy.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and set(convs) == {"mixed_bfloat16"}


def test_a_bfloat16_model_is_loaded_in_float32_on_a_cpu_without_bfloat16(tmp_path, cpu):
    """evaluate, predict and check-outside load models through evaluate.run._load_model."""
    import keras

    from evaluate.run import _load_model
    from train.models import build_model

    with precision.dtype_policy("bfloat16"):
        model = build_model("kibble", (16, 20, 3))
    path = str(tmp_path / "best.keras")
    model.save(path)
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 20, 3), dtype=np.uint8)

    def computes(loaded):
        return {layer.dtype_policy.compute_dtype for layer in loaded._flatten_layers()}

    cpu(ZEN4)
    native = _load_model(path)
    assert "bfloat16" in computes(native)
    cpu(EPYC_AVX2)
    portable = _load_model(path)
    assert computes(portable) == {"float32"}
    assert keras.mixed_precision.global_policy().name == "float32"
    for mine, theirs in zip(portable.get_weights(), native.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_allclose(portable.predict(images, verbose=0), native.predict(images, verbose=0), atol=2e-2)


def test_the_default_model_takes_bfloat16_where_the_cpu_has_it_and_the_tutorials_keep_float32(shards_dir, tmp_path,
                                                                                               cpu):
    cpu(ZEN4)
    assert resolve_precision(TrainSettings().resolved().precision) == "bfloat16"
    assert resolve_precision(TrainSettings(model="conv2").resolved().precision) == "float32"
    assert resolve_precision(TrainSettings(precision="float32").resolved().precision) == "float32"
    run = train(TrainSettings(data=shards_dir, model="conv1", train_size=16, val_size=8, epochs=1, batch_size=8),
                runs_root=str(tmp_path), progress=False)
    assert run["precision"] == "float32" and _config(run["run_dir"])["precision"] == "float32"
    cpu(EPYC_AVX2)
    assert resolve_precision(TrainSettings().resolved().precision) == "float32"


def test_a_bfloat16_run_resumed_on_a_cpu_without_bfloat16_goes_on_in_float32(shards_dir, tmp_path, cpu):
    """Trained where `auto` meant bfloat16, extended on a laptop: float32 from there, the optimizer state kept."""
    import keras

    def computes(path):
        return {layer.dtype_policy.compute_dtype for layer in keras.models.load_model(path)._flatten_layers()}

    cpu(ZEN4)
    first = train(TrainSettings(data=shards_dir, model="conv1", train_size=16, val_size=8, epochs=1, batch_size=8,
                                precision="bfloat16"), runs_root=str(tmp_path), progress=False)
    run_dir = first["run_dir"]
    last = os.path.join(run_dir, "last.keras")
    assert "bfloat16" in computes(last)
    cpu(EPYC_AVX2)
    result = CliRunner().invoke(cli, ["train", "--resume", "--run-dir", run_dir, "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert "goes on in float32" in result.output and "conv1 (float32): 2 epochs" in result.output
    config = _config(run_dir)
    assert config["precision"] == "float32"
    assert config["precision_changed"] == {"from": "bfloat16", "epoch": 1, "batches": 0}
    assert computes(last) == {"float32"}
    # Two batches of 8 an epoch: a fresh optimizer would have counted 2 steps, the resumed one counts on from 2.
    assert int(keras.models.load_model(last).optimizer.iterations.numpy()) == 4
    # Back on a bfloat16 CPU the run stays float32: config.json says so now.
    cpu(ZEN4)
    again = train(TrainSettings(data=shards_dir, epochs=3), run_dir=run_dir, resume=True, given={"epochs"},
                  progress=False)
    assert again["epochs"] == 3 and again["precision"] == "float32" and not again["notes"]
    assert computes(last) == {"float32"}
