"""Run directories at a URL (s3://bucket/runs/NAME, memory://..., gs://...): a local working copy, synchronised.

Keras writes checkpoints and TensorBoard its event files with local file
calls, and a run's lock is an OS flock, so a run at a URL lives in a local
working folder, <cache root>/runs/<16 hex digits of the runs URL>/NAME (the
cache root of `--cache`, $KIBBLE_CACHE or ~/.cache/kibble), and is copied
to the URL:

* after every commit (RunDir.commit_epoch's COMMIT_HOOKS) the files that
  changed go up in the order of the local commit protocol: the committed
  model under its epoch name (state.json's `checkpoint`), then state.json
  (the commit point at the URL, as locally), then best.keras, history.csv
  and the logs, then the epoch file is copied onto last.keras and deleted.
  A URL whose copy stopped half-way is therefore always one commit, the old
  or the new, as a local folder is; LATEST beside the runs names the newest;
* at a start the working copy and the URL are compared by the commit each
  state.json records (epoch, batches): the URL's newer (or no working copy,
  e.g. another machine) -> downloaded, state.json written last locally; the
  working copy newer (killed between a commit and its upload) -> uploaded.

A URL cannot be locked: one writer per run at a URL (the working copy
keeps its flock, so two trainings on one machine still exclude each other).
Nothing secret is written: URLs with credentials are refused (check_url).
"""
import contextlib
import hashlib
import json
import os

from shards import storage
from shards.errors import UserError
from shards.fsio import TEMP_FILE, LOCK_NAME, atomic_path, crash_point, write_text_atomic
from train import rundir
from train.rundir import BEST, CONFIG, EPOCH_FILE, HISTORY, LAST, LATEST, STATE, RunDir

# Files of a run a read-only command (evaluate, predict, compare) needs; logs/ and figures/ stay behind.
READ_ONLY = (CONFIG, STATE, HISTORY, BEST, LAST, rundir.METRICS)
# What evaluate adds to a run (uploaded after it).
EVALUATE_OUTPUTS = (rundir.METRICS, "report.md", "figures")


def work_root(runs_url, cache=None):
    """The local folder holding the working copies of the runs at `runs_url`."""
    key = hashlib.sha256(storage.public(runs_url).rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(storage.cache_root(cache), "runs", key)


def split_run_url(url):
    """(runs URL, run name) of a run directory URL."""
    url = storage.check_url(url).rstrip("/")
    parent, _, name = url.rpartition("/")
    if not name or parent.endswith(":/"):
        raise UserError(f"a run directory URL names a folder inside a bucket, e.g. s3://bucket/runs/NAME. "
                        f"Received: {storage.public(url)}")
    return parent, name


def _commit_key(state):
    return (state["epoch"], state.get("batches") or 0) if state else (-1, 0)


class RemoteRun:
    """One run directory at `url` and its local working copy `local` (a folder path)."""

    def __init__(self, url, local):
        self.url, self.local = url.rstrip("/"), local
        self.fs, self.root = storage.filesystem(self.url)
        self.sent = {}  # name (relative, "/"-separated) -> (size, mtime_ns) the URL holds

    # -- the URL's side ----------------------------------------------------------------------

    def _key(self, name):
        return f"{self.root.rstrip('/')}/{name}"

    def remote_state(self):
        with storage.remote_errors(self.url):
            try:
                raw = self.fs.cat_file(self._key(STATE))
            except FileNotFoundError:
                return None, None
        try:
            state = json.loads(raw)
            if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
                raise ValueError("no epoch count")
        except ValueError as exc:
            raise UserError(f"{storage.public(self.url)}/{STATE} is damaged ({exc}); start a new run") from None
        return state, raw

    def remote_files(self):
        """{relative name: size} of every object under the run's URL."""
        with storage.remote_errors(self.url, "list"):
            try:
                found = self.fs.find(self.root, detail=True)
            except FileNotFoundError:
                return {}
        base = self.root.rstrip("/") + "/"
        return {path[len(base):]: info.get("size") for path, info in found.items()
                if path.startswith(base) and info.get("type", "file") == "file"}

    # -- the working copy's side ---------------------------------------------------------------

    def local_files(self):
        """Relative names of the working copy's files, without the lock, temporaries and uncommitted epoch files."""
        names = []
        for folder, _, files in os.walk(self.local):
            for name in files:
                if name == LOCK_NAME or TEMP_FILE.match(name) or EPOCH_FILE.match(name):
                    continue
                names.append(os.path.relpath(os.path.join(folder, name), self.local).replace(os.sep, "/"))
        return sorted(names)

    def _stat(self, name):
        st = os.stat(os.path.join(self.local, name))
        return st.st_size, st.st_mtime_ns

    def _changed(self, name):
        path = os.path.join(self.local, name)
        return os.path.isfile(path) and self.sent.get(name) != self._stat(name)

    def _put(self, name, as_name=None):
        with storage.remote_errors(self.url, "upload to"):
            self.fs.put_file(os.path.join(self.local, name), self._key(as_name or name))
        self.sent[name] = self._stat(name)

    # -- synchronising ---------------------------------------------------------------------------

    def push(self, state=None):
        """Upload what changed since the last push, state.json after the model it names (see module docstring)."""
        state = state if state is not None else RunDir(self.local).state()
        names = self.local_files()
        protocol = (STATE, LAST, BEST, HISTORY)
        for name in names:  # config.json first of all: a URL with a state always has its config
            if name not in protocol and self._changed(name):
                self._put(name)
        pending = state.get("checkpoint") if state else None
        moved = False
        if self._changed(LAST):
            moved = bool(pending)
            self._put(LAST, pending)
        if self._changed(STATE):
            self._put(STATE)
        for name in (BEST, HISTORY):
            if self._changed(name):
                self._put(name)
        if moved:
            with storage.remote_errors(self.url, "upload to"):
                self.fs.copy(self._key(pending), self._key(LAST))
                self.fs.rm_file(self._key(pending))

    def pull(self, names=None):
        """Make the working copy the URL's run: state.json read first, written last; sizes checked.

        `names`: only these top-level files (READ_ONLY for a read-only
        command); default every object. Returns the URL's state (or None).
        """
        storage.forget_listings(self.url)
        state, raw = self.remote_state()
        files = self.remote_files()
        if CONFIG not in files:
            raise UserError(f"{storage.public(self.url)} is not a run directory (no {CONFIG}); "
                            "run `train` first, or check the URL")
        pending = state.get("checkpoint") if state else None
        if pending is not None:
            rundir.inside(self.local, pending, f"checkpoint named in {STATE}")  # a plain name
            if not EPOCH_FILE.match(pending):
                raise UserError(f"{storage.public(self.url)}/{STATE} names {pending!r} as its checkpoint, "
                                "which train never writes; start a new run")
        wanted = [n for n in files if n != STATE and not EPOCH_FILE.match(n) and (names is None or n in names)]
        os.makedirs(self.local, exist_ok=True)
        if pending in files:  # the commit's model, not yet copied onto last.keras at the URL
            wanted = [n for n in wanted if n != LAST]
            # Writing: kept under its epoch name, so RunDir.recover rolls it forward (best.keras too).
            self._get(pending, files[pending], LAST if names is not None else pending)
        for name in wanted:
            self._get(name, files[name])
        if raw is not None:
            with atomic_path(os.path.join(self.local, STATE)) as tmp, open(tmp, "wb") as f:
                f.write(raw)
            self.sent[STATE] = self._stat(STATE)
        return state

    def _get(self, name, expected, as_name=None):
        as_name = as_name or name
        target = os.path.join(self.local, *as_name.split("/"))
        if not os.path.realpath(target).startswith(os.path.realpath(self.local) + os.sep):
            raise UserError(f"{storage.public(self.url)} holds {name!r}, which is not a file name inside a run; "
                            "refusing to download it")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with storage.remote_errors(f"{self.url}/{name}", "download"):
            with atomic_path(target) as tmp:
                self.fs.get_file(self._key(name), tmp)
                got = os.path.getsize(tmp)
                if expected is not None and got != expected:
                    raise UserError(f"{storage.public(self.url)}/{name}: downloaded {got} bytes, the bucket "
                                    f"lists {expected}; it changed while being read (one writer per run at a URL)")
        if not EPOCH_FILE.match(as_name):
            self.sent[as_name] = self._stat(as_name)

    def start(self, writing=True):
        """Bring the working copy and the URL to the same commit, the newer one winning; returns "pulled",
        "pushed" or "same". Read-only (`writing` False): never uploads, downloads only READ_ONLY files."""
        storage.forget_listings(self.url)
        remote, _ = self.remote_state()
        has_local = os.path.isfile(os.path.join(self.local, CONFIG))
        local = RunDir(self.local).state() if has_local else None
        if not has_local or _commit_key(remote) > _commit_key(local):
            if not has_local and not self.remote_files():
                return "same"  # a new run: nothing at the URL yet
            if writing:
                with RunDir(self.local).lock() as run:
                    self.pull()
                    run.recover()
            else:
                self.pull(READ_ONLY)
            return "pulled"
        if writing and _commit_key(local) > _commit_key(remote):
            with RunDir(self.local).lock() as run:
                state = run.recover()
                self.push(state)
            return "pushed"
        if writing and remote is not None:
            if remote.get("checkpoint") in self.remote_files():
                # Killed between state.json and the roll forward at the URL: finish that upload.
                with RunDir(self.local).lock() as run:
                    self.push(run.recover())
                return "pushed"
            # The same commit, rolled forward: what the working copy holds is what went up.
            self.sent.update({name: self._stat(name) for name in self.local_files()})
        return "same"


# -- the runs folder at a URL ---------------------------------------------------------------------


def latest_name(runs_url):
    """The name LATEST at `runs_url` gives, else the run whose config.json is newest; None when none."""
    fs, root = storage.filesystem(runs_url)
    storage.forget_listings(runs_url)
    with storage.remote_errors(runs_url):
        try:
            name = fs.cat_file(f"{root.rstrip('/')}/{LATEST}").decode().strip()
        except FileNotFoundError:
            name = None
    if name:
        return storage.inside_url(runs_url, name, f"the run named by {storage.public(runs_url)}/{LATEST}") \
            and name
    with storage.remote_errors(runs_url, "list"):
        try:
            configs = fs.glob(f"{root.rstrip('/')}/*/{CONFIG}", detail=True)
        except FileNotFoundError:
            return None
    if not configs:
        return None
    newest = max(configs.items(), key=lambda item: (_modified(item[1]), item[0]))
    return newest[0].rstrip("/").split("/")[-2]


def _modified(info):
    value = info.get("LastModified") or info.get("mtime") or info.get("created") or 0
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def mark_latest(runs_url, name):
    fs, root = storage.filesystem(runs_url)
    storage.inside_url(runs_url, name, "run directory")
    with storage.remote_errors(runs_url, "upload to"):
        fs.pipe_file(f"{root.rstrip('/')}/{LATEST}", (name + "\n").encode())


def run_names(runs_url):
    """Names of the run directories (holding config.json) at `runs_url`."""
    fs, root = storage.filesystem(runs_url)
    storage.forget_listings(runs_url)
    with storage.remote_errors(runs_url, "list"):
        try:
            found = fs.glob(f"{root.rstrip('/')}/*/{CONFIG}")
        except FileNotFoundError:
            return []
    return sorted(path.rstrip("/").split("/")[-2] for path in found)


# -- what the commands use ------------------------------------------------------------------------


@contextlib.contextmanager
def remote_training(run_dir, runs_root, resume, cache=None):
    """Yield the (run_dir, runs_root) `train.run.train` is given, and copy its run to the URL.

    Paths pass through unchanged. With a URL --run-dir or --runs the yield
    is the working copy; the copy is brought up to date first (see
    RemoteRun.start), every commit is uploaded as it happens, and once
    more at the end (the last TensorBoard events).
    """
    if run_dir is not None and storage.is_url(run_dir):
        runs_url, name = split_run_url(run_dir)
    elif run_dir is None and storage.is_url(runs_root):
        runs_url, name = storage.check_url(runs_root).rstrip("/"), None
    else:
        yield run_dir, runs_root
        return
    root = work_root(runs_url, cache)
    os.makedirs(root, exist_ok=True)
    local_runs = rundir.Runs(root)
    if run_dir is None:
        name = latest_name(runs_url)
        if name is None:  # killed before its first upload: only the working copy knows the run
            with contextlib.suppress(UserError):
                name = local_runs.latest().name
    remotes = {}

    def remote(name):
        if name not in remotes:
            remotes[name] = RemoteRun(f"{runs_url}/{name}", os.path.join(root, name))
        return remotes[name]

    if name is not None and (resume or run_dir is not None or _unfinished(remote(name))):
        remote(name).start()
        if os.path.isfile(os.path.join(root, name, CONFIG)):
            write_text_atomic(os.path.join(root, LATEST), name + "\n")  # where train looks for "the newest run"
    marked = set()

    def upload(run, state):
        if os.path.dirname(os.path.abspath(run.path)) != os.path.abspath(root):
            return  # another run (a test's, a library user's) is none of ours
        remote(run.name).push(state)
        if run.name not in marked:
            mark_latest(runs_url, run.name)
            marked.add(run.name)
        crash_point("uploaded", rundir._tag(state))

    rundir.COMMIT_HOOKS.append(upload)
    ok = False
    try:
        yield (os.path.join(root, name) if run_dir is not None else None), root
        ok = True
    finally:
        rundir.COMMIT_HOOKS.remove(upload)
        # A failed training keeps its committed epochs in the working copy; a later start uploads them.
        with contextlib.suppress(UserError) if not ok else contextlib.nullcontext():
            for name, each in remotes.items():
                if os.path.isfile(os.path.join(each.local, CONFIG)) and each.sent:
                    each.push()
                    if name not in marked:
                        mark_latest(runs_url, name)


def _unfinished(remote):
    """Whether the URL's run stopped before its epochs: `train` without --resume may continue it."""
    state, _ = remote.remote_state()
    if state is None:
        return False
    with storage.remote_errors(remote.url):
        try:
            config = json.loads(remote.fs.cat_file(remote._key(CONFIG)))
        except (FileNotFoundError, ValueError):
            return False
    return isinstance(config, dict) and _commit_key(state) < (config.get("epochs") or 0, 0)


def fetch_run(url, cache=None):
    """A local, read-only working copy of the run at `url` (downloaded when the URL's commit is newer)."""
    runs_url, name = split_run_url(url)
    each = RemoteRun(f"{runs_url}/{name}", os.path.join(work_root(runs_url, cache), name))
    each.start(writing=False)
    if not os.path.isfile(os.path.join(each.local, CONFIG)):
        raise UserError(f"{storage.public(url)} is not a run directory (no {CONFIG}); run `train` first, "
                        "or check the URL")
    return each


def resolve_runs(run_dirs, runs_root, cache=None, everything=False):
    """Local paths for RUN_DIR arguments (URLs fetched) and, when none, --runs's newest (or every) run.

    Returns [(local path, RemoteRun or None)].
    """
    if run_dirs:
        return [_resolve(d, cache) for d in run_dirs]
    if storage.is_url(runs_root):
        url = storage.check_url(runs_root).rstrip("/")
        names = run_names(url) if everything else [latest_name(url)]
        if not names or names == [None]:
            raise UserError(f"no training run in {storage.public(url)}/: run `train --runs {storage.public(url)}` "
                            "first (or name a run directory)")
        return [_resolve(f"{url}/{name}", cache) for name in names]
    if everything:
        return [(run.path, None) for run in rundir.Runs(runs_root).all()]
    return [(rundir.Runs(runs_root).latest().path, None)]


def _resolve(run_dir, cache):
    if storage.is_url(run_dir):
        each = fetch_run(run_dir, cache)
        return each.local, each
    return run_dir, None


def upload_outputs(remote, out):
    """After `evaluate`: metrics.json, report.md and figures/ from `out` to the run's URL."""
    for name in EVALUATE_OUTPUTS:
        path = os.path.join(out, name)
        if os.path.isdir(path):
            for folder, _, files in os.walk(path):
                for each in sorted(files):
                    if not TEMP_FILE.match(each):
                        full = os.path.join(folder, each)
                        remote._put(os.path.relpath(full, remote.local).replace(os.sep, "/"))
        elif os.path.isfile(path):
            remote._put(name)
