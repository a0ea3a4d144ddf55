"""Numeric precision of training: float32, or bfloat16 where the CPU computes it natively.

bfloat16 pays only on CPUs with AVX-512 BF16 or AMX units (oneDNN then runs
dense convolutions and matrix products several times faster); elsewhere
TensorFlow emulates it, and a step of the default model takes about 40
times longer than in float32 (16 s against 0.4 s, measured on an AVX2-only
EPYC). So `bfloat16` is refused on such a CPU, and `auto` picks it only
where the flags say the hardware is there. The default model's recipe
(train.models.RECIPES) takes `auto`; the tutorial's models take float32.
A model trained in bfloat16 is scored in float32 on a CPU without it, and
a bfloat16 run resumed there goes on in float32 (load_model_in_float32;
train.run records the switch).
"""
import contextlib
import sys

from shards.errors import UserError

PRECISIONS = ("auto", "float32", "bfloat16")
# Keras's global dtype policy per resolved precision.
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}
CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo_text):
    """The set of CPU flags on the first `flags` line of a /proc/cpuinfo text (empty when there is none)."""
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def supports_bfloat16(cpuinfo_text):
    """Whether a /proc/cpuinfo text shows native bfloat16 arithmetic: AVX-512 BF16, or AMX tiles with BF16."""
    flags = cpu_flags(cpuinfo_text or "")
    return "avx512_bf16" in flags or {"amx_bf16", "amx_tile"} <= flags


def read_cpuinfo():
    """This machine's /proc/cpuinfo text, or None where there is none (macOS, Windows) or it cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open(CPUINFO, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def resolve_precision(requested, cpuinfo_text=None):
    """"float32" or "bfloat16" for a requested "auto", "float32" or "bfloat16".

    `cpuinfo_text` defaults to this machine's. "auto" is bfloat16 only when
    the CPU computes it natively; unknown means float32. An explicit
    "bfloat16" on a CPU without it is refused (UserError): emulated, a step
    is tens of times slower, which no one would choose knowingly.
    """
    if requested not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}. Received: precision={requested!r}")
    if requested == "float32":
        return "float32"
    native = supports_bfloat16(read_cpuinfo() if cpuinfo_text is None else cpuinfo_text)
    if requested == "auto":
        return "bfloat16" if native else "float32"
    if not native:
        raise UserError("--precision bfloat16 needs a CPU with AVX-512 BF16 or AMX (flags avx512_bf16 or amx_bf16 "
                        "in /proc/cpuinfo), and this one has neither; emulated, training would be tens of times "
                        "slower. Use --precision float32 (or auto)")
    return "bfloat16"


def load_model_in_float32(path, compile=True):
    """The Keras model saved at `path` (keras.saving.load_model), any mixed_bfloat16 layer of it made float32.

    For a model trained in bfloat16 used on a CPU without bfloat16: scored
    by evaluate, predict and check-outside (evaluate/run.py), or resumed by
    train (train.run). Emulated, bfloat16 would be tens of times slower.
    The weights and the optimizer's slots are float32 under either policy,
    so only the saved configuration changes: the same weights computed in
    float32 (scores differ by bfloat16's rounding, about 1e-2), and a
    resumed optimizer keeps its state. A file with bfloat16 layers is
    rewritten into a temporary copy (entries streamed, never whole in
    memory); the checkpoint itself is not touched. Any other loads as it is.
    """
    import json
    import os
    import shutil
    import tempfile
    import zipfile

    import keras

    if not zipfile.is_zipfile(path):  # a legacy .h5 model: Keras's own loader, and its own errors
        return keras.saving.load_model(path, compile=compile)
    with zipfile.ZipFile(path) as source:
        config = json.loads(source.read("config.json"))
        if _float32_config(config) == config:
            return keras.saving.load_model(path, compile=compile)
        with tempfile.TemporaryDirectory(prefix="kibble-float32-") as tmp:
            copy = os.path.join(tmp, os.path.basename(path))
            with zipfile.ZipFile(copy, "w") as target:
                for item in source.infolist():
                    if item.filename == "config.json":
                        target.writestr(item, json.dumps(_float32_config(config)))
                        continue
                    with source.open(item) as reader, target.open(item, "w") as writer:
                        shutil.copyfileobj(reader, writer, 1 << 20)
            return keras.saving.load_model(copy, compile=compile)


def _float32_config(config):
    """A model config with every mixed_bfloat16 dtype policy made float32."""
    if isinstance(config, dict):
        if config.get("class_name") == "DTypePolicy" and config.get("config", {}).get("name") == "mixed_bfloat16":
            return {**config, "config": {**config["config"], "name": "float32"}}
        return {key: _float32_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


@contextlib.contextmanager
def dtype_policy(precision):
    """Keras's global dtype policy set for `precision` ("float32"/"bfloat16") inside the block, restored after.

    Layers take the policy when they are built, so a model built (or loaded)
    inside keeps it; the process-wide setting does not leak into later runs.
    """
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)
