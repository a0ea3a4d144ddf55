"""TensorFlow's environment: the one place that quiets its logs, sets the process up and imports it.

The process set-up (ProcessSettings) is what the memory measurements of
the `train` process kept (docs/benchmarks.md, "Memory of the `train`
process"): the pages of TensorFlow's libraries that only its import
touched handed back, and checkpoints saved through disk. glibc's malloc
and TensorFlow's thread pools stay as they come (measured: too little
gained, or bought with step time); every setting is adjustable through
KIBBLE_PROCESS.
"""
import contextlib
import ctypes
import os
import sys
from dataclasses import dataclass, fields, replace

from shards.errors import UserError

# TensorFlow's C++ log threshold, read once when it is imported: 3 hides INFO, WARNING and ERROR lines.
LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
# TensorFlow's switch for its oneDNN kernels, read when it is imported.
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# TensorFlow's switch for its pooling CPU allocator, read when its runtime starts.
TENSOR_POOL_ENV = "TF_CPU_ALLOCATOR_USE_BFC"
# Overrides of ProcessSettings for one process, "name=value,name=value" (benchmarks measure levers with it).
SETTINGS_ENV = "KIBBLE_PROCESS"
# glibc's mallopt parameter numbers (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MADV_DONTNEED = 4


@dataclass(frozen=True)
class ProcessSettings:
    """How a process that runs TensorFlow is set up; applied once, before TensorFlow starts its threads."""

    # glibc malloc arenas (M_ARENA_MAX); 0 keeps glibc's default of 8 per core.
    malloc_arena_max: int = 0
    # Blocks of at least this many bytes are mmap'ed and unmapped when freed (M_MMAP_THRESHOLD);
    # 0 keeps glibc's threshold, which rises to the largest block freed so far (up to 32 MB).
    malloc_mmap_threshold: int = 0
    # Free memory at the top of a heap above this many bytes is returned (M_TRIM_THRESHOLD); 0 keeps glibc's.
    malloc_trim_threshold: int = 0
    # TensorFlow's thread pools (intra: within an op, inter: ops side by side); 0: TensorFlow's, one per core.
    intra_op_threads: int = 0
    # 1 runs one op at a time: conv2-wide then peaked 124-137 MB lower (two ops side by side hold their buffers
    # at once), but its step took 7-8% longer; the default model's peak and step did not change. Not the default.
    inter_op_threads: int = 0
    # Unmap the pages of shared libraries that nothing has written to (release_library_pages) after the import,
    # the first step and each epoch: ~300 MB of TensorFlow's library that its import alone touched.
    release_library_pages: bool = True
    # TensorFlow's oneDNN kernels (TF_ENABLE_ONEDNN_OPTS), which it turns on by itself only on some x86 CPUs
    # (not on this AMD EPYC, where convolutions and their gradients then ran through Eigen): with them the
    # default model's training took 36% less CPU time. Set before the import, for the models in
    # train.models.TENSOR_POOL when `train` names the model (import_tensorflow); a value the user set is kept.
    onednn: bool = True
    # `train` has TensorFlow take the CPU tensors of the models in train.models.TENSOR_POOL from its
    # best-fit-with-coalescing pool, which keeps freed memory for the next step, instead of from malloc, whose
    # large blocks are mmap'ed and unmapped on free: the default model's step faulted in ~1 GB of fresh pages
    # each time, a third of its CPU time in the kernel (choose_tensor_pool). 0: malloc for every model.
    tensor_pool: bool = True
    # `train` has Keras write a checkpoint's weights through a temporary file beside it, not through a copy of
    # them all in memory (which it does whenever they fit in the free memory): conv1's 52 M weights and Adam
    # slots made each save hold ~600 MB more for its length. Set by train.run, not at import: `evaluate` and
    # `predict` keep loading as Keras does (through disk, it would extract into the run directory).
    save_through_disk: bool = True
    # `train` steps Adam and AdamW through TensorFlow's fused in-place kernel (train.fused.fuse_adam), not
    # Keras's chain of weight-sized temporaries. Set by train.run on the compiled or resumed model.
    fused_adam: bool = True
    # `train` trains BatchNormalization layers through TensorFlow's fused kernel (train.fused.fuse_batch_norm),
    # not Keras 3's separate moments, normalise and scale ops and their gradients.
    fused_batch_norm: bool = True
    # `train` takes the step of the models in train.models.SPLIT_STEP in two halves of the batch
    # (train.split_step): the same update with about half the activations held at once.
    split_steps: bool = True
    # `train` updates the largest dense kernel of the models in train.models.DENSE_CHUNKS in blocks of rows
    # (train.dense_chunks): the same step without its whole gradient. Off: conv1's step then peaked ~300 MB
    # lower, but its checkpoints became the peak (Keras copies each weight twice to save it) and its step took
    # twice as long through malloc's fresh pages (docs/benchmarks.md).
    dense_chunks: bool = False


# What set-up did in this process: filled by import_tensorflow, once.
_applied = {}


def process_settings(environ=None):
    """ProcessSettings(), with the overrides of the KIBBLE_PROCESS variable ("malloc_arena_max=2,...")."""
    text = (os.environ if environ is None else environ).get(SETTINGS_ENV, "").strip()
    settings = ProcessSettings()
    if not text:
        return settings
    kinds = {f.name: f.type for f in fields(ProcessSettings)}
    changes = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        name, value = name.strip(), value.strip()
        try:
            if kinds[name] in (bool, "bool"):
                if value not in ("0", "1"):
                    raise ValueError(value)
                changes[name] = value == "1"
            else:
                changes[name] = int(value)
                if changes[name] < 0:
                    raise ValueError(value)
        except (KeyError, ValueError):
            raise UserError(f"{SETTINGS_ENV} must be name=value pairs of {', '.join(kinds)} (whole numbers >= 0; "
                            f"0 or 1 for the yes-or-no ones). Received: {SETTINGS_ENV}={text!r}") from None
    return replace(settings, **changes)


def _libc():
    """glibc through ctypes, or None elsewhere (macOS, musl, Windows): the malloc settings then do nothing."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has mallopt but no arena settings
    except (OSError, AttributeError):
        return None
    return libc


def apply_malloc(settings):
    """Set glibc's malloc parameters of `settings`; {parameter: value} of those set (empty off glibc).

    Arenas are made when threads first allocate, so this must run before
    TensorFlow's thread pools start (import_tensorflow calls it first).
    """
    libc = _libc()
    if libc is None:
        return {}
    done = {}
    for name, param in (("malloc_arena_max", M_ARENA_MAX), ("malloc_mmap_threshold", M_MMAP_THRESHOLD),
                        ("malloc_trim_threshold", M_TRIM_THRESHOLD)):
        value = getattr(settings, name)
        if value and libc.mallopt(param, value) == 1:
            done[name] = value
    return done


def choose_tensor_pool(wanted):
    """Have TensorFlow take its CPU tensors from its pool (TF_CPU_ALLOCATOR_USE_BFC) if `wanted`, else from malloc.

    Returns the switch's value in effect ("true" or "false"). TensorFlow
    reads it when it makes its first tensor, so this must run before any op
    (importing TensorFlow makes none); a value the user put in the
    environment is kept. Child processes inherit the choice.
    """
    value = os.environ.get(TENSOR_POOL_ENV)
    if value is None or value == _applied.get("tensor_pool"):  # unset, or this process's own earlier choice
        value = os.environ[TENSOR_POOL_ENV] = "true" if wanted else "false"
        _applied["tensor_pool"] = value
    return value


def apply_threads(tf, settings):
    """Size TensorFlow's thread pools as `settings` says; {setting: value} of those set.

    TensorFlow fixes them when its runtime starts (the first op); later, the
    pools it has keep their size and nothing is changed.
    """
    done = {}
    for name, setter in (("intra_op_threads", tf.config.threading.set_intra_op_parallelism_threads),
                         ("inter_op_threads", tf.config.threading.set_inter_op_parallelism_threads)):
        value = getattr(settings, name)
        if value:
            with contextlib.suppress(RuntimeError):  # the runtime already started
                setter(value)
                done[name] = value
    return done


def _clean_file_mappings(smaps_text):
    """(start, end, resident kB) of each file mapping in a /proc/<pid>/smaps text that holds only the file's pages.

    Not writable and no private (copied-on-write) page: unmapping such a
    range loses nothing, the next touch maps the page from the page cache
    again. A writable mapping, or one with relocated pages, is left alone.
    """
    found, current = [], None
    for line in smaps_text.splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and not parts[0].endswith(":") and len(parts) >= 5:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            path = parts[5] if len(parts) > 5 else ""
            # Regular files only: a device's mapping (/dev/...) may not be backed by pages that come back.
            regular = path.startswith("/") and not path.startswith("/dev/")
            current = {"range": (start, end), "file": regular and "w" not in parts[1],
                       "rss": 0, "private": None}
            found.append(current)
        elif current is not None and parts and parts[0] in ("Rss:", "Anonymous:"):
            current["rss" if parts[0] == "Rss:" else "private"] = int(parts[1])
    return [(*m["range"], m["rss"]) for m in found if m["file"] and m["private"] == 0 and m["rss"]]


def release_library_pages():
    """Unmap the resident pages of this process's read-only, unmodified file mappings; MB unmapped (Linux).

    TensorFlow's import runs the static initialisers of its 1 GB library
    and maps ~330 MB of its pages that training never touches again; they
    count in the resident set (RSS) although they are the file's clean
    pages, which the kernel keeps in its page cache. Training maps back the
    few tens of MB it uses, from that cache. 0 where there is no
    /proc/self/smaps or no madvise.
    """
    libc = _libc()
    if libc is None:
        return 0.0
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as handle:
            ranges = _clean_file_mappings(handle.read())
    except OSError:
        return 0.0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    released = sum(kb for start, end, kb in ranges if libc.madvise(start, end - start, MADV_DONTNEED) == 0)
    return round(released / 1024, 1)


def save_through_disk():
    """Make Keras save (and load) a model's weights through a temporary file, not a copy in memory; whether it could.

    Keras 3 decides per save with saving_lib.is_memory_sufficient: weights
    smaller than a share (_MEMORY_UPPER_BOUND) of the free memory are
    written into an in-memory HDF5 file first. A bound of 0 sends every
    model down its other path, a temporary file in the checkpoint's folder.
    A Keras without that switch is left as it is.
    """
    try:
        from keras.src.saving import saving_lib
    except ImportError:
        return False
    if not isinstance(getattr(saving_lib, "_MEMORY_UPPER_BOUND", None), (int, float)):
        return False
    saving_lib._MEMORY_UPPER_BOUND = 0
    return True


def applied():
    """What set_up_process applied in this process: {setting: value} (empty before it ran)."""
    return dict(_applied)


# Whether quiet_logs was asked to show TensorFlow's logs in this process (the command line's --verbose).
_verbose = [False]


def quiet_logs(verbose=False):
    """Hide TensorFlow's C++ start-up logs in this process and the ones it starts, unless `verbose`.

    Call it before anything imports TensorFlow (the variable is read then);
    a value the user set in the environment is kept.
    """
    if verbose:  # a later import_tensorflow() shows them too (`train` imports TensorFlow itself)
        _verbose[0] = True
    else:
        os.environ.setdefault(LOG_LEVEL_ENV, "3")


def import_tensorflow(verbose=None, settings=None, model=None):
    """Import and return tensorflow, the process set up first (ProcessSettings); hide C++ logs unless `verbose`
    (None: if quiet_logs was asked to show them).

    `model`: the model this process will train, when known. oneDNN is then
    on only for the models in train.models.TENSOR_POOL (its allocator pools
    large tensors as the tensor pool does: conv1 2,153 against 1,536 MB),
    and their tensors come from the pool (choose_tensor_pool), the others'
    from malloc; this part runs even if TensorFlow was imported before.

    TF_CPP_MIN_LOG_LEVEL does not cover the lines absl prints before its
    logging is initialised, so stderr's file descriptor is pointed at
    /dev/null for the duration of the import. Set-up runs once per process.
    """
    from train.models import TENSOR_POOL

    verbose = _verbose[0] if verbose is None else verbose
    set_up = not _applied.get("set_up")
    settings = process_settings() if settings is None else settings
    pooled = model is None or model in TENSOR_POOL
    if set_up:
        _applied.update(apply_malloc(settings), set_up=True)
        if "tensorflow" not in sys.modules:
            _applied["onednn"] = os.environ.setdefault(ONEDNN_ENV, "1" if settings.onednn and pooled else "0")
    if model is not None:
        choose_tensor_pool(settings.tensor_pool and pooled)
    if verbose or "tensorflow" in sys.modules:
        import tensorflow
    else:
        quiet_logs(verbose)
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "w") as devnull:
                os.dup2(devnull.fileno(), 2)
                import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        with contextlib.suppress(Exception):
            tensorflow.get_logger().setLevel("ERROR")
    if set_up:
        _applied.update(apply_threads(tensorflow, settings))
        if settings.release_library_pages:
            import keras  # noqa: F401 - its import touches pages too; release them with TensorFlow's

            _applied["released_mb"] = release_library_pages()
    return tensorflow
