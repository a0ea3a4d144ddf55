"""`ingest --out s3://...`: build the shards in a local staging folder, then upload them.

h5py cannot write to object storage, so the shards are made exactly as for
a local --out, in a staging folder (`--staging DIR`, else one per URL under
the system's temporary folder), and then copied up. The bucket follows the
same commit rule as a folder: manifest.json goes up last, so a bucket with a
manifest is complete; one without is an upload in progress or interrupted.

A re-run uploads only what is missing or wrong. What is in the bucket is
checked, cheapest proof first:

1. the object's size must be the manifest's;
2. the object is the very one this staging folder uploaded (its version
   token, fsspec's `checksum`, recorded in STAGING/upload.json), or, for an
   object the staging folder has no record of, the bucket's manifest is
   this same ingest byte for byte (the commit point vouches for the size
   and sha256 of what it lists);
3. otherwise it is downloaded and its sha256 compared.

`verify --data URL --stream` re-reads every object when in doubt.
"""
import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile

from shards import storage
from shards.errors import UserError
from shards.fsio import FolderLock, crash_point, write_json_atomic
from shards.manifest import MANIFEST_NAME, load_manifest
from shards.progress import Progress

RECORD_NAME = "upload.json"
_SHARD_FILE = re.compile(r"^(train|val|test|unlabeled)-\d{5}\.h5$")


def default_staging(url):
    """The staging folder of `url` when --staging is not given: under the system temp, one per URL."""
    key = hashlib.sha256(storage.public(url).rstrip("/").encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), "kibble-staging", key)


def ingest_to_url(build, input_path, url, settings, *, staging=None, force=False, progress=True, **options):
    """Run `build` (ingest.run.ingest) into a staging folder, then upload it to `url`.

    Returns build's result with "upload" (what was copied) and "staging"
    added. The default staging folder is removed once the bucket holds the
    whole ingest; a --staging folder is kept (a re-run then checks the
    bucket without rebuilding).
    """
    storage.check_url(url)
    storage.filesystem(url)  # a missing backend is named before any work
    chosen = staging is not None
    staging = staging or default_staging(url)
    result = build(input_path, staging, settings, force=force, progress=progress, **options)
    with FolderLock(staging, "staging folder"):
        report = upload_folder(staging, url, force=force, progress=progress)
    if not chosen:
        shutil.rmtree(staging, ignore_errors=True)
    return {**result, "upload": report, "staging": staging if chosen else None}


def upload_folder(folder, url, force=False, progress=True):
    """Make `url` hold the shards and manifest of the local shard folder `folder`.

    Returns {"uploaded", "uploaded_bytes", "downloaded_to_check", "kept", "manifest"}.
    Raises UserError when the bucket holds another ingest (unless `force`)
    or refuses a request.
    """
    local = load_manifest(folder)
    with open(local.path, "rb") as f:
        raw = f.read()
    fs, root = storage.filesystem(url)
    storage.forget_listings(url)
    remote_raw = remote_manifest(fs, root, url, local.data["plan"], force)
    committed = remote_raw == raw
    record = Record(folder, url)
    report = new_report(committed)
    if remote_raw is not None and not committed:
        with storage.remote_errors(url, "replace the manifest in"):
            fs.rm_file(object_key(root, MANIFEST_NAME))  # the bucket is incomplete until ours goes up
    entries = local.shards()
    bar = Progress(len(entries), "upload", unit="shards", enabled=progress and bool(entries))
    for entry in entries:
        _upload_shard(fs, root, url, local, entry, record, committed, report)
        bar.update()
    bar.close()
    if force:
        remove_stale(fs, root, url, {entry["file"] for entry in local.shards()})
    if not committed:
        with storage.remote_errors(url, "upload to"):
            fs.pipe_file(object_key(root, MANIFEST_NAME), raw)  # the commit point, last
    return report


def object_key(root, name):
    return f"{root.rstrip('/')}/{name}"


def remote_manifest(fs, root, url, plan, force):
    """The bytes of the bucket's manifest (None if absent); UserError if it is not of ingest `plan` and not `force`."""
    with storage.remote_errors(url):
        try:
            raw = fs.cat_file(object_key(root, MANIFEST_NAME))
        except FileNotFoundError:
            return None
    try:
        found = json.loads(raw).get("plan")
    except (ValueError, AttributeError):
        found = None  # unreadable: replaced like any other manifest that is not ours
    if found != plan and not force:
        raise UserError(f"{storage.public(url)} already holds shards from a different ingest (other files or "
                        "settings); pass --force to replace them or choose another --out")
    return raw


def bucket_holds(fs, root, url, entry, record, committed, report):
    """Whether the object url/entry["file"] is the shard `entry` describes, cheapest proof first (see above).

    `committed`: the bucket's manifest is this very ingest. A proved object
    is recorded and counted in report["kept"].
    """
    key = object_key(root, entry["file"])
    with storage.remote_errors(url, "check"):
        try:
            info = fs.info(key)
        except FileNotFoundError:
            info = None
        token = str(fs.checksum(key)) if info is not None else None
    if info is None or info.get("size") != entry["bytes"]:
        return False
    # The bucket's manifest vouches only for objects this staging folder has no
    # other knowledge of: one it uploaded and that changed since is re-checked.
    if not (record.vouches(entry, token) or (committed and not record.knows(entry))):
        report["downloaded_to_check"] += 1
        if storage.sha256(storage.join(url, entry["file"])) != entry["sha256"]:
            return False
    record.keep(entry, token)
    report["kept"] += 1
    return True


def new_report(committed):
    """The upload report of upload_folder and of a cluster ingest (ingest.cluster)."""
    return {"uploaded": 0, "uploaded_bytes": 0, "downloaded_to_check": 0, "kept": 0,
            "manifest": "unchanged" if committed else "uploaded"}


def _upload_shard(fs, root, url, local, entry, record, committed, report):
    key = object_key(root, entry["file"])
    if bucket_holds(fs, root, url, entry, record, committed, report):
        return
    with storage.remote_errors(url, "upload to"):
        fs.put_file(local.shard_path(entry), key)
        token = str(fs.checksum(key))
    record.keep(entry, token)
    crash_point("upload")  # test hook: a kill between two shard uploads
    report["uploaded"] += 1
    report["uploaded_bytes"] += entry["bytes"]


def remove_stale(fs, root, url, listed):
    """With --force: shard files of an earlier ingest not in `listed` (as a local --force does)."""
    for name in storage.list_names(url):
        if _SHARD_FILE.match(name) and name not in listed:
            with storage.remote_errors(url, "remove a stale shard from"):
                fs.rm_file(object_key(root, name))


class Record:
    """STAGING/upload.json: the version token of each object this folder uploaded or checked."""

    def __init__(self, folder, url):
        self.path = os.path.join(folder, RECORD_NAME)
        self.url = storage.public(url).rstrip("/")
        self.objects = {}
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("url") == self.url and isinstance(data.get("objects"), dict):
                self.objects = data["objects"]

    def knows(self, entry):
        return entry["file"] in self.objects

    def vouches(self, entry, token):
        known = self.objects.get(entry["file"])
        return isinstance(known, dict) and token is not None and known.get("token") == token \
            and known.get("sha256") == entry["sha256"]

    def entry(self, name):
        """What was recorded of object `name` (a dict), or None."""
        known = self.objects.get(name)
        return known if isinstance(known, dict) else None

    def keep(self, entry, token, **extra):
        # `extra`: what a cluster ingest needs to reuse the object without a manifest (ingest.cluster).
        self.objects[entry["file"]] = {"sha256": entry["sha256"], "token": token, **extra}
        # Saved at once: an interrupted upload keeps what it has proved.
        write_json_atomic(self.path, {"url": self.url, "objects": self.objects})


def format_upload(result, url):
    """The lines `ingest` prints after building into staging and uploading to `url`."""
    report, shown = result["upload"], storage.public(url)
    if not report["uploaded"] and report["manifest"] == "unchanged":
        line = f"{shown} already holds this ingest ({result['totals']['images']} images); nothing uploaded"
    else:
        line = (f"uploaded {report['uploaded']} shards ({report['uploaded_bytes'] / 1e6:,.1f} MB) and "
                f"{'the' if report['manifest'] == 'uploaded' else 'kept the'} manifest to {shown}")
    line += (f"; {report['kept']} shards already there" if report["kept"] else "") + \
        (f" ({report['downloaded_to_check']} checked by download)" if report["downloaded_to_check"] else "")
    if result.get("staging"):
        line += f"; staging folder {result['staging']} kept"
    return line
