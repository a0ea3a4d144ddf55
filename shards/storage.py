"""Shards anywhere fsspec reaches: a local folder or a URL (s3://, gs://, memory://, file://).

Three ways to read a shard folder, chosen per command:

* a local path (or file://): exactly as before, no copy;
* a URL, cached (the default): manifest.json and the shards a command needs
  are downloaded once into a local cache folder, each checked against the
  manifest's sha256 as it arrives, and reused afterwards (a cached copy that
  no longer matches is downloaded again);
* a URL, streamed (`--stream` / `--cache none`): h5py reads each shard
  through a file object doing ranged reads with read-ahead, for sets larger
  than the local disk. Only a few such objects hold a read-ahead buffer at a
  time (LIVE_STREAMS), so memory does not grow with the number of shards.

Credentials and endpoints are never passed here: fsspec and its backends
find them where their users put them (AWS_* variables, ~/.aws/config,
FSSPEC_S3_ENDPOINT_URL and other fsspec configuration). A URL written to a
file or a log goes through `public()` first, which drops any user:secret@
and query string.
"""
import collections
import contextlib
import hashlib
import io
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from shards.errors import ShardError, UserError
from shards.format import sha256_file
from shards.fsio import atomic_path

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# The pip extra that brings each scheme's fsspec backend.
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
CACHE_ENV = "KIBBLE_CACHE"
# Bytes per request when downloading or hashing an object.
COPY_BLOCK = 8 << 20
# Streaming: bytes fetched beyond each read, and how many shards keep such
# a buffer at once (the rest reopen theirs when next read).
READ_AHEAD = 4 << 20
LIVE_STREAMS = 8
# Shards downloaded at once into the cache.
DOWNLOADS = 4


def is_url(path):
    """True for a URL other than file:// (those are plain local paths)."""
    match = isinstance(path, str) and _SCHEME.match(path)
    return bool(match) and match.group(1).lower() != "file"


def local_path(path):
    """A file:// URL as the local path it names; anything else unchanged."""
    if isinstance(path, str) and path.lower().startswith("file://"):
        return urlsplit(path).path or "/"
    return path


def public(url):
    """`url` as it may be shown or recorded: no user:secret@, query or fragment."""
    if not is_url(url):
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_url(url):
    """UserError for a URL that carries credentials: they belong in the environment or a config file."""
    if is_url(url):
        parts = urlsplit(url)
        if "@" in parts.netloc or parts.query:
            raise UserError(f"{public(url)}: put credentials and options in the environment or the "
                            "file system's config (AWS_ACCESS_KEY_ID, ~/.aws/config, fsspec config), "
                            "not in the URL, so they are never written to a manifest, config or log")
    return url


def absolute(path):
    """A path made absolute, or a URL as `public` gives it: how a run records where its data was."""
    path = local_path(path)
    return public(path).rstrip("/") if is_url(path) else os.path.abspath(path)


def same_place(a, b):
    """Whether two paths or URLs name the same shard folder."""
    a, b = local_path(a), local_path(b)
    if is_url(a) or is_url(b):
        return absolute(a) == absolute(b)
    return os.path.realpath(a) == os.path.realpath(b)


def join(folder, name):
    """folder/name for a path or a URL; `name` must be a plain file name (checked by the caller)."""
    return f"{folder.rstrip('/')}/{name}" if is_url(folder) else os.path.join(folder, name)


def inside_url(folder, name, what="path"):
    """folder/name for a URL folder, after checking `name` is one plain file name.

    An object store has no symbolic links, so a name without a slash, a
    backslash, `..` or a NUL cannot lead out of the folder.
    """
    if (not isinstance(name, str) or not name or name in (".", "..") or
            any(c in name for c in "/\\\x00") or _SCHEME.match(name)):
        raise UserError(f"{what} {name!r} in {public(folder)} is not a plain file name; refusing to use it "
                        "(the file naming it was edited or comes from elsewhere)")
    return join(folder, name)


def filesystem(url):
    """(fsspec file system, path inside it) for `url`; one UserError when its backend is missing."""
    import fsspec

    scheme = _SCHEME.match(url).group(1).lower()
    check_url(url)
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError:
        extra = EXTRAS.get(scheme)
        hint = f"pip install 'kibble[{extra}]'" if extra else "install the fsspec backend for it"
        raise UserError(f"{scheme}:// URLs need a package that is not installed: {hint}. "
                        f"Received: {public(url)}") from None
    except ValueError as exc:
        raise UserError(f"{public(url)}: {exc}") from None


def _remote_error_types():
    types = [OSError]
    with contextlib.suppress(ImportError):
        from botocore.exceptions import BotoCoreError
        types.append(BotoCoreError)
    return tuple(types)


@contextlib.contextmanager
def remote_errors(url, action="read"):
    """Turn a refusal of the storage service (no such bucket, no credentials, no network) into one UserError.

    ShardError and UserError pass unchanged. The message holds the public URL
    and the service's own words, which name no secret.
    """
    try:
        yield
    except (ShardError, UserError):
        raise
    except FileNotFoundError:
        raise UserError(f"cannot {action} {public(url)}: not found") from None
    except _remote_error_types() as exc:
        text = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"cannot {action} {public(url)}: {text or type(exc).__name__}") from None


def exists(path):
    if not is_url(path):
        return os.path.exists(path)
    fs, inner = filesystem(path)
    with remote_errors(path):
        return fs.isfile(inner)


def read_bytes(path):
    fs, inner = filesystem(path)
    with remote_errors(path):
        return fs.cat_file(inner)


def size(path):
    if not is_url(path):
        return os.path.getsize(path)
    fs, inner = filesystem(path)
    with remote_errors(path):
        return fs.size(inner)


def sha256(path):
    """sha256 of a local file or an object (read in COPY_BLOCK pieces)."""
    if not is_url(path):
        return sha256_file(path)
    fs, inner = filesystem(path)
    digest = hashlib.sha256()
    with remote_errors(path), fs.open(inner, "rb", block_size=COPY_BLOCK, cache_type="none") as f:
        for block in iter(lambda: f.read(COPY_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def list_names(folder):
    """Names of the objects directly in a URL folder (none when it does not exist)."""
    fs, inner = filesystem(folder)
    with remote_errors(folder, "list"):
        try:
            entries = fs.ls(inner.rstrip("/"), detail=True, refresh=True)
        except FileNotFoundError:
            return []
    return sorted(os.path.basename(e["name"].rstrip("/")) for e in entries if e.get("type") == "file")


def forget_listings(url):
    """Drop fsspec's cached listings of `url`'s file system: another process may have changed it."""
    fs, _ = filesystem(url)
    with contextlib.suppress(Exception):
        fs.invalidate_cache()


# -- how a command reads its data ----------------------------------------------------------------


@dataclass(frozen=True)
class Access:
    """How shards at a URL are read (local folders are always read in place)."""

    # Root of the local shard cache; None: $KIBBLE_CACHE, else ~/.cache/kibble.
    cache: str = None
    # Read shards from storage as they are needed instead of caching them.
    stream: bool = False

    @classmethod
    def from_option(cls, cache=None, stream=False):
        """`--cache DIR|none` and `--stream` as one Access; `--cache none` means streaming."""
        if cache is not None and cache.strip().lower() == "none":
            return cls(cache=None, stream=True)
        return cls(cache=cache, stream=bool(stream))


def cache_root(cache=None):
    return os.path.expanduser(cache or os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "kibble"))


def cache_folder(url, cache=None):
    """The cache folder of one shard URL: <root>/<16 hex digits of the URL's sha256>."""
    key = hashlib.sha256(public(url).rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(cache_root(cache), key)


def is_cached(data, access=None):
    """Whether `data` is read through the cache (whose copies open_shards checks itself)."""
    return is_url(local_path(data)) and not (access or Access()).stream


def open_shards(data, access=None, splits=None, verify=True, progress=False):
    """The manifest of the shards at `data` (a folder or a URL), ready for the readers.

    A URL is cached unless `access.stream`: the shards of `splits` (default
    all) are downloaded into the cache first and the manifest returned is
    the cached copy's (byte for byte the bucket's, so its checksum is the
    same). With `verify` a cached copy is trusted only if its sha256 matches;
    without, its size. Raises UserError when a shard cannot be fetched whole.
    """
    manifest, problems = open_shards_checked(data, access, splits, verify, progress)
    if problems:
        raise UserError(f"{problems[0]} ({len(problems)} shard(s) failed; run `verify --data "
                        f"{public(data)}` for all, or `ingest` again to rebuild them)")
    return manifest


def open_shards_checked(data, access=None, splits=None, verify=True, progress=False):
    """(manifest, [ShardError of each shard that could not be cached whole])."""
    from shards.manifest import load_manifest

    access = access or Access()
    data = local_path(data)
    if not is_url(data):
        return load_manifest(data), []
    forget_listings(data)
    remote = load_manifest(data)
    if access.stream:
        return remote, []
    return _cache(remote, cache_folder(data, access.cache), splits, verify, progress)


def _cache(remote, folder, splits, verify, progress):
    from shards.manifest import MANIFEST_NAME, load_manifest
    from shards.progress import Progress

    os.makedirs(folder, exist_ok=True)
    raw = read_bytes(remote.path)
    target = os.path.join(folder, MANIFEST_NAME)
    if not (os.path.isfile(target) and open(target, "rb").read() == raw):
        with atomic_path(target) as tmp, open(tmp, "wb") as f:
            f.write(raw)
    manifest = load_manifest(folder)
    entries = [e for e in remote.shards() if splits is None or e["split"] in splits]
    bar = Progress(len(entries), "cache", unit="shards", enabled=progress and bool(entries))

    def fetch(entry):
        try:
            _fetch(remote.shard_path(entry), manifest.shard_path(entry), entry, verify)
            return None
        except ShardError as exc:
            return exc
        finally:
            bar.update()

    with ThreadPoolExecutor(DOWNLOADS) as pool:
        problems = [p for p in pool.map(fetch, entries) if p is not None]
    bar.close()
    return manifest, problems


def _fetch(url, path, entry, verify):
    """Make `path` a whole copy of `url`; False when the cached copy was good already."""
    if os.path.isfile(path) and os.path.getsize(path) == entry["bytes"] and \
            (not verify or sha256_file(path) == entry["sha256"]):
        return False
    fs, inner = filesystem(url)
    digest, copied = hashlib.sha256(), 0
    with remote_errors(url, "download"):
        with atomic_path(path) as tmp, open(tmp, "wb") as out, \
                fs.open(inner, "rb", block_size=COPY_BLOCK, cache_type="none") as src:
            for block in iter(lambda: src.read(COPY_BLOCK), b""):
                digest.update(block)
                out.write(block)
                copied += len(block)
            out.flush()
            if copied != entry["bytes"] or digest.hexdigest() != entry["sha256"]:
                raise ShardError(public(url), f"holds {copied} bytes with another sha256 than the manifest "
                                              f"lists ({entry['bytes']} bytes): damaged or replaced in storage")
    return True


# -- streaming -----------------------------------------------------------------------------------


def open_stream(url):
    """A seekable read-only file object over the object at `url`, for h5py.File."""
    fs, inner = filesystem(url)
    with remote_errors(url):
        length = fs.size(inner)
    return _StreamFile(fs, inner, length, url)


_live = collections.OrderedDict()  # _StreamFile -> None, least recently read first
_live_lock = threading.Lock()


class _StreamFile(io.RawIOBase):
    """One object read through an fsspec file with read-ahead.

    The fsspec file (and its buffer) is held only while this is among the
    LIVE_STREAMS most recently read; an evicted one is reopened at its next
    read. Eviction only drops the reference, so a read in progress in
    another thread finishes on the handle it holds.
    """

    def __init__(self, fs, path, length, url):
        super().__init__()
        self._fs, self._path, self._length, self.url = fs, path, length, url
        self._pos = 0
        self._handle = None

    def readable(self):
        return True

    def seekable(self):
        return True

    def tell(self):
        return self._pos

    def seek(self, offset, whence=io.SEEK_SET):
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer):
        want = min(len(buffer), max(0, self._length - self._pos))
        if want == 0:
            return 0
        handle = self._handle_for_read()
        with remote_errors(self.url):
            handle.seek(self._pos)
            data = handle.read(want)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def _handle_for_read(self):
        with _live_lock:
            handle = self._handle
            if handle is None:
                handle = self._handle = self._fs.open(self._path, "rb", block_size=READ_AHEAD,
                                                      cache_type="readahead")
            _live[self] = None
            _live.move_to_end(self)
            while len(_live) > LIVE_STREAMS:
                evicted, _ = _live.popitem(last=False)
                evicted._handle = None
            return handle

    def close(self):
        with _live_lock:
            _live.pop(self, None)
            self._handle = None
        super().close()

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other
