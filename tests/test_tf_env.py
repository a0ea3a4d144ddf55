"""The process set-up of train.tf_env: malloc settings in effect, thread pools as configured, library pages released."""
import json
import os
import subprocess
import sys

import pytest

from shards.errors import UserError
from tests.conftest import ROOT
from train.tf_env import ONEDNN_ENV, SETTINGS_ENV, TENSOR_POOL_ENV, ProcessSettings, _clean_file_mappings, process_settings

PARSE = [
    ("", ProcessSettings()),
    ("malloc_arena_max=2", ProcessSettings(malloc_arena_max=2)),
    (" intra_op_threads=1 , inter_op_threads=3 ", ProcessSettings(intra_op_threads=1, inter_op_threads=3)),
    ("release_library_pages=0", ProcessSettings(release_library_pages=False)),
    ("inter_op_threads=1", ProcessSettings(inter_op_threads=1)),
    ("tensor_pool=0", ProcessSettings(tensor_pool=False)),
]
PARSE_ERRORS = ["arenas=2", "malloc_arena_max=two", "malloc_arena_max=-1", "release_library_pages=yes",
                "malloc_arena_max"]


@pytest.mark.parametrize("text, expected", PARSE)
def test_settings_from_the_environment(text, expected):
    assert process_settings({SETTINGS_ENV: text}) == expected


@pytest.mark.parametrize("text", PARSE_ERRORS)
def test_bad_settings_name_the_variable_and_value(text):
    with pytest.raises(UserError, match=f"{SETTINGS_ENV}=.*{text.split('=')[0]}"):
        process_settings({SETTINGS_ENV: text})


SMAPS = """\
7f0000000000-7f0000004000 r--p 00000000 08:01 123 /lib/libtf.so
Rss:                  12 kB
Anonymous:             0 kB
7f0000004000-7f0000010000 r-xp 00004000 08:01 123 /lib/libtf.so
Size:                 48 kB
Rss:                  40 kB
Anonymous:             0 kB
7f0000010000-7f0000012000 r--p 00010000 08:01 123 /lib/libtf.so
Rss:                   8 kB
Anonymous:             8 kB
7f0000012000-7f0000014000 rw-p 00012000 08:01 123 /lib/libtf.so
Rss:                   8 kB
Anonymous:             0 kB
7f0000014000-7f0000020000 rw-p 00000000 00:00 0
Rss:                  48 kB
Anonymous:            48 kB
7f0000020000-7f0000021000 r--p 00000000 00:00 0 [vvar]
Rss:                   4 kB
Anonymous:             0 kB
7f0000030000-7f0000031000 r-xp 00000000 08:01 124 /lib/untouched.so
Rss:                   0 kB
Anonymous:             0 kB
7f0000040000-7f0000041000 r--s 00000000 00:05 125 /dev/some-device
Rss:                   4 kB
Anonymous:             0 kB
7f0000050000-7f0000052000 r-xp 00000000 08:01 126 /lib/replaced.so (deleted)
Rss:                   8 kB
Anonymous:             0 kB
"""


def test_only_read_only_unmodified_file_pages_are_released():
    # Kept: relocated (private) pages, writable mappings, anonymous memory, [vvar], a device, a mapping with nothing
    # resident. A deleted file's pages come back from its inode, which the mapping keeps.
    assert _clean_file_mappings(SMAPS) == [(0x7f0000000000, 0x7f0000004000, 12),
                                           (0x7f0000004000, 0x7f0000010000, 40),
                                           (0x7f0000050000, 0x7f0000052000, 8)]


# Threads that allocate at once, each with its own glibc arena unless M_ARENA_MAX caps them; malloc_info lists them.
ARENAS = r"""
import ctypes, json, sys, tempfile, threading
sys.path.insert(0, sys.argv[1])
from train.tf_env import ProcessSettings, apply_malloc
done = apply_malloc(ProcessSettings(malloc_arena_max=int(sys.argv[2])))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
barrier = threading.Barrier(9)
def allocate():
    libc.malloc(1000)
    barrier.wait()
    barrier.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
[t.start() for t in threads]
barrier.wait()
path = tempfile.mktemp()
handle = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, handle)
libc.fclose(handle)
barrier.wait()
print(json.dumps({"applied": done, "arenas": open(path).read().count("<heap nr=")}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas are Linux's")
@pytest.mark.parametrize("arena_max, most", [(0, None), (2, 2)])
def test_arena_limit_is_in_effect(arena_max, most):
    out = subprocess.run([sys.executable, "-c", ARENAS, ROOT, str(arena_max)], capture_output=True, text=True,
                         check=True)
    result = json.loads(out.stdout)
    if most is None:  # glibc's default: one arena per allocating thread here, so the limit below is visible
        assert result["applied"] == {} and result["arenas"] >= 8
    else:
        assert result["applied"] == {"malloc_arena_max": arena_max} and result["arenas"] <= most


SET_UP = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
def rss_file():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("RssFile:")) / 1024
from train.tf_env import applied, import_tensorflow
tf = import_tensorflow()
from tensorflow.python.util import _pywrap_util_port  # TensorFlow's own answer: are its oneDNN kernels on?
print(json.dumps({**applied(), "onednn_on": _pywrap_util_port.IsMklEnabled(),
                  "intra": tf.config.threading.get_intra_op_parallelism_threads(),
                  "inter": tf.config.threading.get_inter_op_parallelism_threads(), "rss_file_mb": rss_file()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps and glibc are Linux's")
def test_import_tensorflow_sets_the_process_up():
    env = {**{key: value for key, value in os.environ.items() if key != ONEDNN_ENV},
           SETTINGS_ENV: "intra_op_threads=1,inter_op_threads=1,malloc_mmap_threshold=4194304"}
    out = subprocess.run([sys.executable, "-c", SET_UP, ROOT], capture_output=True, text=True, check=True, env=env)
    result = json.loads(out.stdout)
    assert (result["intra"], result["inter"]) == (1, 1)
    assert result["malloc_mmap_threshold"] == 4194304
    assert result["onednn"] == "1" and result["onednn_on"]
    # TensorFlow's import maps a few hundred MB of its libraries; what is left mapped is far less than was released.
    assert result["released_mb"] > 50 and result["rss_file_mb"] < result["released_mb"]


POOL = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from train.tf_env import choose_tensor_pool, import_tensorflow
tf = import_tensorflow()
chosen = [choose_tensor_pool(wanted == "1") for wanted in sys.argv[2:]]
tf.linalg.matmul(tf.ones([512, 512]), tf.ones([512, 512]))
try:  # only an allocator that pools, as TensorFlow's BFC does, keeps these figures
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"]
except ValueError:
    peak = None
print(json.dumps({"chosen": chosen, "peak": peak}))
"""


@pytest.mark.parametrize("user, wanted, chosen", [
    (None, ["1"], ["true"]),
    (None, ["0"], ["false"]),
    (None, ["0", "1"], ["false", "true"]),  # the process's own earlier choice may change before the first op
    ("false", ["1"], ["false"]),  # the user's own value is kept
])
def test_train_chooses_where_tensorflow_takes_its_tensors(user, wanted, chosen):
    # oneDNN off: its own allocator pools large tensors whatever the switch says.
    env = {**{key: value for key, value in os.environ.items() if key != TENSOR_POOL_ENV}, ONEDNN_ENV: "0"}
    if user is not None:
        env[TENSOR_POOL_ENV] = user
    out = subprocess.run([sys.executable, "-c", POOL, ROOT, *wanted], capture_output=True, text=True, check=True,
                         env=env)
    result = json.loads(out.stdout)
    assert result["chosen"] == chosen
    if chosen[-1] == "true":
        assert result["peak"] >= 3 * 512 * 512 * 4  # the two operands and the product, float32
    else:
        assert result["peak"] is None


@pytest.mark.parametrize("overrides, switch", [({SETTINGS_ENV: "onednn=0"}, "0"), ({ONEDNN_ENV: "0"}, "0")])
def test_onednn_stays_off_when_asked(overrides, switch):
    env = {key: value for key, value in os.environ.items() if key not in (SETTINGS_ENV, ONEDNN_ENV)}
    out = subprocess.run([sys.executable, "-c", SET_UP, ROOT], capture_output=True, text=True, check=True,
                         env={**env, **overrides})
    result = json.loads(out.stdout)
    assert result["onednn"] == switch and not result["onednn_on"]


def test_a_bad_setting_is_one_error_line_before_tensorflow_loads(tmp_path):
    env = {**os.environ, SETTINGS_ENV: "arenas=2"}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "train", "--data", str(tmp_path / "none")],
                         capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith(f"Error: {SETTINGS_ENV} must be")
    assert "Received: KIBBLE_PROCESS='arenas=2'" in out.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings are Linux's")
def test_the_process_settings_do_not_change_what_is_learned(tmp_path):
    """One tiny epoch of conv2 in a process with every setting changed, against one in this process."""
    from tests.conftest import make_kaggle_shards
    from train.run import TrainSettings, train
    from train.rundir import RunDir

    shards = make_kaggle_shards(tmp_path / "data", cats=16, dogs=16, size=(16, 20), shard_size=8, val=0.25)
    here = train(TrainSettings(data=shards, model="conv2", train_size=16, val_size=6, epochs=1, batch_size=8),
                 run_dir=str(tmp_path / "here"), progress=False)
    from tensorflow.python.util import _pywrap_util_port

    env = {**os.environ, SETTINGS_ENV: "malloc_arena_max=2,malloc_mmap_threshold=4194304,malloc_trim_threshold="
                                       "1048576,intra_op_threads=1,inter_op_threads=1,release_library_pages=1",
           ONEDNN_ENV: "1" if _pywrap_util_port.IsMklEnabled() else "0"}  # the same kernels as in this process
    subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "-q", "train", "--data", shards, "--model", "conv2",
                    "--train-size", "16",
                    "--val-size", "6", "--epochs", "1", "--batch-size", "8", "--run-dir", str(tmp_path / "there"),
                    "--no-verify"], check=True, env=env, cwd=str(tmp_path), capture_output=True)
    from keras.src.saving import saving_lib
    assert saving_lib._MEMORY_UPPER_BOUND == 0  # train saves checkpoints through disk
    [mine], [theirs] = RunDir(here["run_dir"]).history(), RunDir(str(tmp_path / "there")).history()
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        assert theirs[key] == pytest.approx(mine[key], rel=1e-5, abs=1e-6), key
